"""A process of lean watchers for ``bench/latency.py``: ``python bench/_watchers.py URL COUNT``.

Each watcher is an asyncio protocol over websockets' sans-I/O ``ClientProtocol``: as bytes
arrive it takes ``time.monotonic_ns()`` first, lets websockets cut the frames out and keeps each
payload with that time; it decodes nothing until the run has finished (it looks for the
``finished`` type's bytes, and then decodes to be sure). So what a watcher costs per frame is the
kernel's wakeup and websockets' frame parser, and the latency measured is the server's, not
that of a client busy decoding the frames of its ninety-nine neighbours. The frames are read
back afterwards by the protocol's own ``ClientSession``, as the real client reads them.

The process imports neither torch nor the server. It talks JSON lines on stdin/stdout:
after connecting its watchers it writes ``{"ready": n}``; then, per line it reads,

- ``{"start": fields}``: start a run from an owner connection that then unsubscribes (the owner
  is no watcher); writes ``{"run_id": ...}``;
- ``{"watch": run_id}``: every watcher subscribes, and once each has seen ``finished`` the
  process writes ``{"live_after": [...], "records": [[[seq, type, ns], ...], ...]}``;
- ``{"quit": true}``: closes its connections and exits.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from stepwatch.protocol import (
    SUBPROTOCOL,
    Accepted,
    Answered,
    ClientSession,
    Duplicate,
    Finished,
    RunEvent,
    Start,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Welcome,
    decode_server,
)
from stepwatch.protocol import limits as wire

#: ``"finished"`` as msgpack writes the string (a fixstr of 8 bytes).
FINISHED_MARK = b"\xa8finished"


class LeanWatcher(asyncio.Protocol):
    """One watcher connection; see the module docstring."""

    def __init__(self, url: str) -> None:
        self.conn = ClientProtocol(
            parse_uri(url), subprotocols=[SUBPROTOCOL], max_size=wire.MAX_SERVER_FRAME_BYTES
        )
        self.session = ClientSession()
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.replied: asyncio.Future[None] = loop.create_future()
        self.finished: asyncio.Future[None] = loop.create_future()
        self.received: list[tuple[int, bytes]] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.conn.send_request(self.conn.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        at = time.monotonic_ns()
        self.conn.receive_data(data)
        for event in self.conn.events_received():
            if isinstance(event, Response) and not self.opened.done():
                self.opened.set_result(None)
            elif isinstance(event, Frame) and event.opcode is Opcode.BINARY:
                payload = bytes(event.data)
                self.received.append((at, payload))
                if not self.replied.done():
                    self.replied.set_result(None)
                if FINISHED_MARK in payload and isinstance(decode_server(payload), Finished):
                    if not self.finished.done():
                        self.finished.set_result(None)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        for future in (self.opened, self.replied, self.finished):
            if not future.done():
                future.set_exception(ConnectionError("the connection closed"))

    def send(self) -> None:
        """Send what the protocol session has queued."""
        for frame in self.session.data_to_send():
            assert isinstance(frame, bytes)
            self.conn.send_binary(frame)
        self._flush()

    def _flush(self) -> None:
        if self.transport is not None:
            for chunk in self.conn.data_to_send():
                if chunk:
                    self.transport.write(chunk)

    def records(self) -> tuple[int, list[list[Any]]]:
        """What arrived, read by the protocol session: the ``last_seq`` of ``subscribed`` and
        each run event as ``[seq, type, receipt ns]`` (repeats too)."""
        live_after, records = -1, []
        for at, payload in self.received:
            self.session.receive_data(payload)
            for event in self.session.events_received():
                if isinstance(event, Answered) and isinstance(event.reply, Subscribed):
                    live_after = event.reply.last_seq
                seen = event.event if isinstance(event, Duplicate) else event
                if isinstance(seen, RunEvent):
                    records.append([seen.seq, seen.TYPE, at])
        self.received.clear()
        return live_after, records


async def connect(url: str) -> LeanWatcher:
    loop = asyncio.get_running_loop()
    address = parse_uri(url)
    _, watcher = await loop.create_connection(lambda: LeanWatcher(url), address.host, address.port)
    await watcher.opened
    watcher.session.hello("bench-lean/1")
    watcher.send()
    await watcher.replied
    return watcher


async def start(url: str, fields: dict[str, Any]) -> str:
    owner = await connect(url)
    owner.session.receive_data(owner.received.pop(0)[1])
    assert isinstance(owner.session.events_received()[0], Welcome)
    owner.replied = asyncio.get_running_loop().create_future()
    owner.session.send(Start(request_id="bench", **fields))
    owner.send()
    while True:
        await owner.replied
        owner.replied = asyncio.get_running_loop().create_future()
        while owner.received:
            owner.session.receive_data(owner.received.pop(0)[1])
            for event in owner.session.events_received():
                if isinstance(event, Answered) and isinstance(event.reply, Accepted):
                    run_id = event.reply.run_id
                    owner.session.send(Unsubscribe(run_id))
                    owner.send()
                    return run_id


async def main(url: str, count: int) -> None:
    watchers = [await connect(url) for _ in range(count)]
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    say({"ready": count})
    while line := await reader.readline():
        command = json.loads(line)
        if "start" in command:
            say({"run_id": await start(url, command["start"])})
        elif "watch" in command:
            for watcher in watchers:
                watcher.finished = loop.create_future()
                watcher.session.send(Subscribe(command["watch"]))
                watcher.send()
            await asyncio.gather(*(watcher.finished for watcher in watchers))
            results = [watcher.records() for watcher in watchers]
            say({"live_after": [r[0] for r in results], "records": [r[1] for r in results]})
        else:
            break
    for watcher in watchers:
        if watcher.transport is not None:
            watcher.transport.close()


def say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
