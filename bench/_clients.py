"""The clients of the service benchmarks; they run in a child process (see ``_service.py``).

Each function takes plain arguments and returns plain data (lists, dicts, numbers), so it can
cross the process boundary. Receipt times are ``time.monotonic_ns()`` taken as ``recv`` returns,
before anything else is done with the frame.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import msgpack  # type: ignore[import-untyped]
import websockets

from stepwatch.protocol import SUBPROTOCOL, Hello, Start, Stop, Subscribe, Unsubscribe, encode
from stepwatch.protocol import limits as wire

Record = tuple[int, str, int]  # seq, type, receipt time in ns


async def _connect(url: str, **options: Any) -> Any:
    ws = await websockets.connect(
        url,
        subprotocols=[SUBPROTOCOL],
        max_size=wire.MAX_SERVER_FRAME_BYTES,
        compression=None,
        **options,
    )
    await ws.send(encode(Hello(client="bench/1")))
    welcome = msgpack.unpackb(await ws.recv())
    assert welcome["type"] == "welcome", welcome
    return ws


async def _until(ws: Any, wanted: str) -> dict[str, Any]:
    while True:
        message: dict[str, Any] = msgpack.unpackb(await ws.recv())
        if message["type"] == wanted:
            return message
        if message["type"] == "error":
            raise RuntimeError(message)


async def _watch(ws: Any, run_id: str) -> tuple[int, list[Record]]:
    await ws.send(encode(Subscribe(run_id)))
    records: list[Record] = []
    live_after = -1
    while True:
        frame = await ws.recv()
        at = time.monotonic_ns()
        message = msgpack.unpackb(frame)
        kind = message["type"]
        if kind == "subscribed":
            live_after = message["last_seq"]
        elif "seq" in message:
            records.append((message["seq"], kind, at))
            if kind == "finished":
                return live_after, records


async def _stalled(url: str) -> Any:
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
    await owner.send(encode(Start(request_id="bench", **fields)))
    accepted = await _until(owner, "accepted")
    run_id = accepted["run_id"]
    await owner.send(encode(Unsubscribe(run_id)))  # the owner does not count as a watcher
    for ws in slow:
        await ws.send(encode(Subscribe(run_id)))
    results = await asyncio.gather(*(_watch(ws, run_id) for ws in clients))
    slow_state = []
    for ws in slow:
        slow_state.append(ws.close_code)  # None: still open when the others had finished
        ws.transport.abort()
    for ws in [owner, *clients]:
        await ws.close()
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
    ws = await _connect(url)
    outcomes = []
    for index in range(repeats):
        await ws.send(encode(Start(request_id=f"run{index}", **fields)))
        accepted = await _until(ws, "accepted")
        run_id, token = accepted["run_id"], accepted["control_token"]
        last_step = 0
        while last_step < stop_at[index]:
            message = await _until(ws, "progress")
            last_step = message["step"]
        sent = time.monotonic_ns()
        await ws.send(encode(Stop(f"stop{index}", run_id, token, mode)))  # type: ignore[arg-type]
        outcome: dict[str, Any] = {"seen_step": last_step}
        while True:
            message = msgpack.unpackb(await ws.recv())
            at = time.monotonic_ns()
            if message["type"] == "applied" and message["request_id"] == f"stop{index}":
                outcome.update(applied_ms=(at - sent) / 1e6, applied_step=message["step"])
            elif message["type"] == "finished" and message["run_id"] == run_id:
                outcome.update(
                    finished_ms=(at - sent) / 1e6,
                    steps_run=message["steps_run"],
                    reason=message["reason"],
                    image=message["image"] is not None,
                    run_id=run_id,
                )
                break
        outcomes.append(outcome)
    await ws.close()
    return outcomes


def stop_runs(
    url: str, repeats: int, fields: dict[str, Any], stop_at: list[int], mode: str
) -> list[dict[str, Any]]:
    """Start ``repeats`` runs one after another; stop each once progress reached its step in
    ``stop_at``; return the time and steps from sending ``stop`` to ``applied`` and
    ``finished``."""
    return asyncio.run(_stop_runs(url, repeats, fields, stop_at, mode))
