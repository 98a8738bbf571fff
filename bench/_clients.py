"""The clients of the service benchmarks; they run in a child process (see ``_service.py``).

Each function takes plain arguments and returns plain data (lists, dicts, numbers), so it can
cross the process boundary. Each connection is driven by the protocol's sans-I/O
``ClientSession`` (hello, reply matching), as the real client's is. Receipt times are
``time.monotonic_ns()`` taken as ``recv`` returns, before anything else is done with the frame.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any, TypeVar

import websockets

from stepwatch.protocol import (
    SUBPROTOCOL,
    Accepted,
    Answered,
    Applied,
    ClientMessage,
    ClientSession,
    Duplicate,
    Error,
    Finished,
    Progress,
    RunEvent,
    SessionEvent,
    Start,
    Stop,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Welcome,
)
from stepwatch.protocol import limits as wire

Record = tuple[int, str, int]  # seq, type, receipt time in ns
M = TypeVar("M")


class _Peer:
    """One bench connection: a ``websockets`` connection driven by the protocol's session."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.session = ClientSession()

    async def send(self, message: ClientMessage) -> None:
        self.session.send(message)
        await self.flush()

    async def flush(self) -> None:
        for frame in self.session.data_to_send():
            await self.ws.send(frame)

    async def receive(self) -> tuple[list[SessionEvent], int]:
        """What the next frame says happened, and when it arrived (ns)."""
        frame = await self.ws.recv()
        at = time.monotonic_ns()
        self.session.receive_data(frame)
        return self.session.events_received(), at

    async def until(self, kind: type[M]) -> M:
        """The next run event or reply of type ``kind``; an ``error`` raises."""
        while True:
            events, _ = await self.receive()
            for event in events:
                found = event.reply if isinstance(event, Answered) else event
                if isinstance(found, Error):
                    raise RuntimeError(found)
                if isinstance(found, kind):
                    return found


async def _connect(url: str, **options: Any) -> _Peer:
    ws = await websockets.connect(
        url,
        subprotocols=[SUBPROTOCOL],
        max_size=wire.MAX_SERVER_FRAME_BYTES,
        compression=None,
        **options,
    )
    peer = _Peer(ws)
    peer.session.hello("bench/1")
    await peer.flush()
    events, _ = await peer.receive()
    assert isinstance(events[0], Welcome), events
    return peer


async def _watch(peer: _Peer, run_id: str) -> tuple[int, list[Record]]:
    await peer.send(Subscribe(run_id))
    records: list[Record] = []
    live_after = -1
    while True:
        events, at = await peer.receive()
        for event in events:
            if isinstance(event, Answered) and isinstance(event.reply, Subscribed):
                live_after = event.reply.last_seq
            # Every event as it came, repeats too: the benchmark reports what the server sent.
            seen = event.event if isinstance(event, Duplicate) else event
            if isinstance(seen, RunEvent):
                records.append((seen.seq, seen.TYPE, at))
                if isinstance(seen, Finished):
                    return live_after, records


async def _stalled(url: str) -> _Peer:
    """A watcher whose socket takes almost nothing and whose library stops reading at once."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(
        (url.split("//")[1].split("/")[0].split(":")[0], int(url.rsplit(":", 1)[1].split("/")[0]))
    )
    return await _connect(url, sock=sock, max_queue=1)


async def _watch_run(
    url: str, watchers: int, fields: dict[str, Any], stalled: int
) -> dict[str, Any]:
    owner = await _connect(url)
    clients = await asyncio.gather(*(_connect(url) for _ in range(watchers)))
    slow = [await _stalled(url) for _ in range(stalled)]
    await owner.send(Start(request_id="bench", **fields))
    run_id = (await owner.until(Accepted)).run_id
    await owner.send(Unsubscribe(run_id))  # the owner does not count as a watcher
    for peer in slow:
        await peer.send(Subscribe(run_id))
    results = await asyncio.gather(*(_watch(peer, run_id) for peer in clients))
    slow_state = []
    for peer in slow:
        slow_state.append(peer.ws.close_code)  # None: still open when the others had finished
        peer.ws.transport.abort()
    for peer in [owner, *clients]:
        await peer.ws.close()
    return {
        "run_id": run_id,
        "live_after": [live_after for live_after, _ in results],
        "records": [records for _, records in results],
        "stalled_close_codes": slow_state,
    }


def watch_run(url: str, watchers: int, fields: dict[str, Any], stalled: int = 0) -> dict[str, Any]:
    """Start a run, watch it with ``watchers`` clients (plus ``stalled`` that never read), and
    return every watcher's receipt records."""
    return asyncio.run(_watch_run(url, watchers, fields, stalled))


async def _stop_runs(
    url: str, repeats: int, fields: dict[str, Any], stop_at: list[int], mode: str
) -> list[dict[str, Any]]:
    peer = await _connect(url)
    outcomes = []
    for index in range(repeats):
        await peer.send(Start(request_id=f"run{index}", **fields))
        accepted = await peer.until(Accepted)
        run_id, token = accepted.run_id, accepted.control_token
        last_step = 0
        while last_step < stop_at[index]:
            last_step = (await peer.until(Progress)).step
        sent = time.monotonic_ns()
        await peer.send(Stop(f"stop{index}", run_id, token, mode))  # type: ignore[arg-type]
        outcome: dict[str, Any] = {"seen_step": last_step}
        finished: Finished | None = None
        while finished is None:
            events, at = await peer.receive()
            for event in events:
                if isinstance(event, Answered) and isinstance(event.reply, Applied):
                    outcome.update(applied_ms=(at - sent) / 1e6, applied_step=event.reply.step)
                elif isinstance(event, Finished) and event.run_id == run_id:
                    finished = event
                    outcome.update(
                        finished_ms=(at - sent) / 1e6,
                        steps_run=event.steps_run,
                        reason=event.reason,
                        image=event.image is not None,
                        run_id=run_id,
                    )
        outcomes.append(outcome)
    await peer.ws.close()
    return outcomes


def stop_runs(
    url: str, repeats: int, fields: dict[str, Any], stop_at: list[int], mode: str
) -> list[dict[str, Any]]:
    """Start ``repeats`` runs one after another; stop each once progress reached its step in
    ``stop_at``; return the time and steps from sending ``stop`` to ``applied`` and
    ``finished``."""
    return asyncio.run(_stop_runs(url, repeats, fields, stop_at, mode))
