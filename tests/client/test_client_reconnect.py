"""Dropped connections: the client reconnects, resumes every run, and shows each event once.

The real server is reached through a TCP proxy the tests cut. A scripted peer (a WebSocket
server speaking the protocol, the declared interface) plays what the real server does not do
on demand: losing a ``stop`` with the connection, replaying an event twice, sending garbage.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from clientserver import CuttableProxy
from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Subprotocol

from stepwatch.client import (
    Backoff,
    Check,
    ConnectionLost,
    Finished,
    Progress,
    ProtocolViolation,
    RunEvent,
    RunHandle,
    SessionState,
    connect,
)
from stepwatch.protocol import (
    SUBPROTOCOL,
    Accepted,
    Applied,
    ClientMessage,
    Hello,
    ModelInfo,
    ResumePoint,
    RunParameters,
    ServerMessage,
    Start,
    Started,
    Stop,
    Subscribed,
    Welcome,
    decode_client,
    encode,
)
from stepwatch.server.harness import ServerThread

pytestmark = pytest.mark.anyio

FAST = Backoff(initial=0.02, factor=2.0, cap=0.2)


async def events_of(handle: RunHandle) -> list[RunEvent]:
    return [event async for event in handle]


@asynccontextmanager
async def proxy_to(server: ServerThread) -> AsyncIterator[CuttableProxy]:
    proxy = CuttableProxy(server.port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


def lasting(events: list[RunEvent]) -> list[tuple[int, str]]:
    """The events a replay never leaves out (all but progress), by seq and type."""
    return [
        (event.seq, type(event).__name__) for event in events if not isinstance(event, Progress)
    ]


async def test_a_cut_mid_run_is_resumed_and_every_event_arrives_once(
    server: ServerThread,
) -> None:
    async with proxy_to(server) as proxy:
        async with connect(proxy.url, backoff=FAST) as sw, connect(server.url) as direct:
            run = await sw.generate(
                "red circle", steps=400, check_interval=3, early_stop=False, seed=3
            )
            seen: list[RunEvent] = []
            applied = stopped = None
            async for event in run:
                seen.append(event)
                if not isinstance(event, Check):
                    continue
                if applied is None:
                    await proxy.cut()
                    await asyncio.sleep(0.3)  # the run goes on while nobody can hear it
                    await proxy.restart()
                    # The owner steers on through the new connection with its stored token.
                    applied = await run.set(quality_threshold=0.3)
                elif event.step > applied.step and stopped is None:
                    stopped = await run.stop()
            everything = await events_of(await direct.watch(run.run_id))
            reconnects = sw.reconnects
    seqs = [event.seq for event in seen]
    assert seqs == sorted(set(seqs)), "an event arrived twice or out of order"
    assert lasting(seen) == lasting(everything)
    assert applied is not None and applied in seen and stopped in seen
    assert isinstance(seen[-1], Finished) and seen[-1].reason == "stopped"
    assert any(isinstance(e, Check) and e.threshold == 0.3 for e in seen)
    assert reconnects == 1 and proxy.connections == 2


async def test_the_client_gives_up_after_reconnect_timeout(server: ServerThread) -> None:
    async with proxy_to(server) as proxy:
        async with connect(proxy.url, backoff=FAST, reconnect_timeout=0.5) as sw:
            run = await sw.generate("red circle", steps=400, early_stop=False)
            await anext(run)
            await proxy.cut()
            with pytest.raises(ConnectionLost, match="lost the connection"):
                async for _event in run:
                    pass
            with pytest.raises(ConnectionLost):
                await run.result()
            with pytest.raises(ConnectionLost):
                await sw.generate("red circle")
            assert sw.state is SessionState.CLOSED
        # Anyone holding the control token may steer, from any connection.
        async with connect(server.url) as other:
            stop = Stop(other.next_request_id(), run.run_id, run.control_token, "abort")
            assert (await other.steer(stop)).stop == "abort"


# A scripted peer.

Script = Callable[["Peer"], Awaitable[None]]

MODEL = ModelInfo(
    id="fake",
    description="a scripted peer",
    default_steps=4,
    default_cfg=3.0,
    default_cfg_max=9.0,
    default_width=32,
    default_height=32,
    default_sampler="euler",
    default_scheduler="normal",
    default_verifier="simple",
    size_multiple=8,
    samplers=("euler",),
    schedulers=("normal",),
)
WELCOME = Welcome(
    server="fake/1", capabilities=("resume", "steer"), limits={}, models=(MODEL,), verifiers=()
)
PARAMETERS = RunParameters(
    model="fake", prompt="red circle", negative_prompt="", seed=1, steps=4, cfg=3.0,
    sampler="euler", scheduler="normal", width=32, height=32, verifier="simple",
    check_interval=2, quality_threshold=0.5, scale_factor=1.25, cfg_max=9.0, early_stop=True,
    patience=2, min_steps=0, preview_size=0, preview_format="webp",
)  # fmt: skip
TOKEN = "control-token-0123456789"


class Peer:
    """One connection of the scripted server."""

    def __init__(self, connection: ServerConnection) -> None:
        self.connection = connection

    async def receive(self) -> ClientMessage:
        return decode_client(await self.connection.recv())

    async def send(self, *messages: ServerMessage) -> None:
        for message in messages:
            await self.connection.send(encode(message))

    async def greet(self) -> Hello:
        hello = await self.receive()
        assert isinstance(hello, Hello)
        await self.send(WELCOME)
        return hello


@asynccontextmanager
async def scripted(*scripts: Script) -> AsyncIterator[str]:
    """A WebSocket server whose n-th connection runs the n-th script, then closes; connections
    beyond the scripts are closed at once."""
    remaining = list(scripts)
    failures: list[BaseException] = []

    async def handle(connection: ServerConnection) -> None:
        if not remaining:
            return
        try:
            await remaining.pop(0)(Peer(connection))
        except BaseException as exc:  # reported by the test, not lost in the server's log
            failures.append(exc)

    async with serve(
        handle, "127.0.0.1", 0, subprotocols=[Subprotocol(SUBPROTOCOL)], compression=None
    ) as listener:
        port = next(iter(listener.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws"
    if failures:
        raise failures[0]
    assert not remaining, "the client made fewer connections than scripted"


def progress(seq: int) -> Progress:
    return Progress(run_id="r-1", seq=seq, step=seq - 1, total=4, elapsed=0.1, eta=None)


def finished(seq: int) -> Finished:
    return Finished(
        run_id="r-1", seq=seq, reason="stopped", steps_run=2, elapsed=0.2, final_score=None,
        history=(), image=None, error=None,
    )  # fmt: skip


async def test_a_stop_lost_with_the_connection_is_sent_again_after_the_replay() -> None:
    async def first(peer: Peer) -> None:
        await peer.greet()
        start = await peer.receive()
        assert isinstance(start, Start)
        await peer.send(
            Accepted(start.request_id, "r-1", TOKEN, 0),
            Started(PARAMETERS, run_id="r-1", seq=1),
            progress(2),
        )
        stop = await peer.receive()
        assert isinstance(stop, Stop)
        # The connection drops before the stop took effect.

    async def second(peer: Peer) -> None:
        hello = await peer.greet()
        assert hello.resume == (ResumePoint("r-1", 2),)
        # A replay that repeats seq 2 (a server may; the client must not show it twice).
        await peer.send(Subscribed("r-1", "running", 3), progress(2), progress(3))
        stop = await peer.receive()
        assert isinstance(stop, Stop) and stop.token == TOKEN
        await peer.send(Applied(stop.request_id, 2, (), "finish", run_id="r-1", seq=4), finished(5))
        await peer.connection.wait_closed()

    async with scripted(first, second) as url:
        async with connect(url, backoff=FAST) as sw:
            run = await sw.generate("red circle")
            assert isinstance(await anext(run), Started)
            await anext(run)
            applied = await run.stop()
            rest = await events_of(run)
            result = await run.result()
    assert applied.seq == 4 and applied.request_id.startswith("q")
    assert [event.seq for event in rest] == [3, 4, 5]
    assert run.duplicates == 1
    assert result.reason == "stopped"


async def test_a_frame_the_protocol_refuses_ends_the_session() -> None:
    async def garbage(peer: Peer) -> None:
        await peer.greet()
        await peer.receive()
        await peer.connection.send(b"\xc1 not msgpack")
        await peer.connection.wait_closed()

    async with scripted(garbage) as url:
        async with connect(url, backoff=FAST) as sw:
            with pytest.raises(ProtocolViolation, match="malformed_frame"):
                await sw.generate("red circle")
            assert sw.state is SessionState.CLOSED


async def test_a_start_unanswered_when_the_connection_drops_is_reported_lost() -> None:
    async def silent(peer: Peer) -> None:
        await peer.greet()
        await peer.receive()

    async with scripted(silent) as url:
        async with connect(url, backoff=FAST) as sw:
            with pytest.raises(ConnectionLost, match="before the server answered start"):
                await sw.generate("red circle")
