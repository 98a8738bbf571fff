"""Test helpers for the service: a small protocol client, and custom verifiers to register.

The server the tests talk to is :func:`~stepwatch.server.harness.running_server` (a real uvicorn
on a loopback port, in the test's loop), re-exported here for the service tests. The client is
the least a test needs: a ``websockets`` connection that speaks the protocol codec, keeps
messages it was not waiting for, and collects a run's events.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import websockets
from websockets.asyncio.client import ClientConnection

from stepwatch.protocol import (
    ADDED_SERVER_FIELDS,
    SUBPROTOCOL,
    Accepted,
    Answered,
    ClientMessage,
    ClientSession,
    Finished,
    Hello,
    ResumePoint,
    RunEvent,
    ServerMessage,
    Set,
    Start,
    Stop,
    Welcome,
    decode_server,
)
from stepwatch.protocol import limits as wire
from stepwatch.server.harness import running_server as running_server

M = TypeVar("M")
WAIT = 60.0


@dataclass
class Client:
    """One protocol connection, driven by the protocol's sans-I/O ``ClientSession``.

    The session says ``hello``, matches each reply to its request and tracks every run's
    ``seq``; the client keeps what the server sent as it came, duplicates included, so a test
    sees the server's behaviour and not the session's. Messages nobody waited for yet stay in
    :attr:`inbox`; every run event received is also kept in :attr:`seen`, by run, in the
    order it arrived.
    """

    ws: ClientConnection
    session: ClientSession = field(default_factory=ClientSession)
    inbox: list[ServerMessage] = field(default_factory=list)
    seen: dict[str, list[RunEvent]] = field(default_factory=dict)
    welcome: Welcome | None = None
    #: The reply to each request sent, by ``request_id``, as the session matched it.
    answers: dict[str, ServerMessage] = field(default_factory=dict)

    async def send(self, message: ClientMessage) -> None:
        self.session.send(message)
        await self._flush()

    async def hello(self, hello: Hello) -> None:
        self.session.hello(hello.client, hello.token, hello.resume, hello.features)
        await self._flush()

    async def _flush(self) -> None:
        for frame in self.session.data_to_send():
            await self.ws.send(frame)

    async def _read(self) -> ServerMessage:
        message = decode_server(await self.ws.recv())
        self.session.receive_message(message)
        for event in self.session.events_received():
            if isinstance(event, Answered) and isinstance(event.request, Start | Stop | Set):
                self.answers[event.request.request_id] = event.reply
        if isinstance(message, RunEvent):
            self.seen.setdefault(message.run_id, []).append(message)
        return message

    async def recv(self) -> ServerMessage:
        """The next message, from the inbox first."""
        if self.inbox:
            return self.inbox.pop(0)
        with anyio.fail_after(WAIT):
            return await self._read()

    async def next(self, wanted: Callable[[ServerMessage], bool]) -> ServerMessage:
        """The first message (inbox first) for which ``wanted`` is true; others are kept."""
        for index, message in enumerate(self.inbox):
            if wanted(message):
                return self.inbox.pop(index)
        with anyio.fail_after(WAIT):
            while True:
                message = await self._read()
                if wanted(message):
                    return message
                self.inbox.append(message)

    async def expect(self, kind: type[M]) -> M:
        message = await self.next(lambda m: isinstance(m, kind))
        assert isinstance(message, kind)
        return message

    async def reply_to(self, request_id: str) -> ServerMessage:
        """The ``accepted``, ``applied`` or ``error`` that answers ``request_id``."""
        return await self.next(lambda m: m is self.answers.get(request_id))

    async def start(self, request_id: str = "q1", **parameters: Any) -> Accepted:
        """Send ``start`` and return its ``accepted`` (an ``error`` fails the test)."""
        await self.send(Start(request_id=request_id, **parameters))
        reply = await self.reply_to(request_id)
        assert isinstance(reply, Accepted), reply
        return reply

    async def event(self, run_id: str, kind: type[M]) -> M:
        """The next event of ``run_id`` of type ``kind`` (it stays in :attr:`seen`)."""
        message = await self.next(lambda m: isinstance(m, kind) and m.run_id == run_id)
        assert isinstance(message, kind)
        return message

    async def run_events(self, run_id: str) -> list[RunEvent]:
        """Every event of ``run_id`` received, once its ``finished`` has arrived."""
        if not any(isinstance(e, Finished) for e in self.seen.get(run_id, [])):
            await self.event(run_id, Finished)
        self.inbox = [m for m in self.inbox if not (isinstance(m, RunEvent) and m.run_id == run_id)]
        return list(self.seen[run_id])


async def collect(*watches: tuple[Client, str]) -> list[list[RunEvent]]:
    """For each (client, run id): the run's events as the client received them, read by all
    clients at once (a client read after another would fall behind meanwhile)."""
    results: dict[int, list[RunEvent]] = {}

    async def read(index: int, client: Client, run_id: str) -> None:
        results[index] = await client.run_events(run_id)

    async with anyio.create_task_group() as readers:
        for index, (client, run_id) in enumerate(watches):
            readers.start_soon(read, index, client, run_id)
    return [results[index] for index in range(len(watches))]


@asynccontextmanager
async def connect(
    url: str,
    *,
    hello: bool = True,
    token: str | None = None,
    resume: Sequence[ResumePoint] = (),
    features: Sequence[str] = tuple(sorted(ADDED_SERVER_FIELDS)),
    **options: Any,
) -> AsyncIterator[Client]:
    """Open a protocol connection (and say ``hello`` unless told not to); ``features`` are the
    added fields it reads (every one by default; none for a client of the first release)."""
    options.setdefault("subprotocols", [SUBPROTOCOL])
    options.setdefault("max_size", wire.MAX_SERVER_FRAME_BYTES)
    options.setdefault("compression", None)
    async with websockets.connect(url, **options) as ws:
        client = Client(ws)
        if hello:
            hello_message = Hello(
                client="tests/1", token=token, resume=tuple(resume), features=tuple(features)
            )
            await client.hello(hello_message)
            client.welcome = await client.expect(Welcome)
        yield client


class BrokenVerifier:
    """A custom verifier (registered as ``module:callable``) that fails at its first check."""

    def score(self, images: Any, prompt: str) -> list[float]:
        raise RuntimeError("the verifier's model is missing")


class WordyVerifier:
    """A custom verifier that answers with a word where a number belongs."""

    def score(self, images: Any, prompt: str) -> list[object]:
        return ["good"] * images.shape[0]


class NoneVerifier:
    """A custom verifier that answers ``None`` for every image."""

    def score(self, images: Any, prompt: str) -> list[object]:
        return [None] * images.shape[0]


class NumberedComponentsVerifier:
    """A custom verifier whose components are named by numbers, not strings."""

    def score(self, images: Any, prompt: str) -> list[object]:
        from stepwatch.server.engine.verifiers import VerifierScore

        return [VerifierScore(0.5, {1: 0.5})] * images.shape[0]  # type: ignore[dict-item]


class ThreadCountVerifier:
    """A custom verifier that notes torch's thread count in the thread that samples."""

    seen: list[int] = []

    def score(self, images: Any, prompt: str) -> list[float]:
        import torch

        ThreadCountVerifier.seen.append(torch.get_num_threads())
        return [0.5] * images.shape[0]
