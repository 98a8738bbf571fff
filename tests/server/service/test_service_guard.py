"""What the service refuses, and that refusing never hurts anything else: handshakes from
foreign origins, missing tokens, bad frames, floods."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
from scripted_engine import ScriptedEngine
from servertools import Client, collect, connect, running_server
from websockets.exceptions import ConnectionClosed, InvalidStatus

from stepwatch.protocol import (
    ClientMessage,
    Error,
    ErrorCode,
    Finished,
    Hello,
    Ping,
    Pong,
    Progress,
    Start,
    Welcome,
)
from stepwatch.protocol import limits as wire
from stepwatch.server.config import ServerConfig, ServiceLimits
from stepwatch.server.engine.model import LoadedModel

pytestmark = pytest.mark.anyio

TOKEN = "correct-horse-battery-staple"


def frame(**fields: Any) -> bytes:
    packed: bytes = msgpack.packb(fields)
    return packed


async def error_for(client: Client, data: bytes | str) -> Error:
    await client.ws.send(data)
    return await client.expect(Error)


async def closed_with(client: Client) -> tuple[int, str]:
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await client.recv()
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def test_bad_frames_get_coded_errors_and_the_connections_runs_go_on(
    tmp_path: Path,
    served_model: LoadedModel,
    scripted: ScriptedEngine,
) -> None:
    config = ServerConfig(data_dir=tmp_path, limits=ServiceLimits(max_steps=100))
    async with running_server(config, lambda c: [served_model], sampler=scripted) as server:
        async with connect(server.url) as client, connect(server.url) as bystander:
            mine = await client.start("a", prompt="red circle", steps=30, early_stop=False)
            theirs = await bystander.start("b", prompt="red circle", steps=10)
            await client.event(mine.run_id, Progress)
            oversized = frame(type="ping", v=1, nonce=1, padding="x" * wire.MAX_CLIENT_FRAME_BYTES)
            cases = [
                (oversized, ErrorCode.FRAME_TOO_LARGE, None),
                (b"\xc1", ErrorCode.MALFORMED_FRAME, None),
                ("a text frame", ErrorCode.MALFORMED_FRAME, None),
                (msgpack.packb([1, 2]), ErrorCode.INVALID_MESSAGE, None),
                (frame(type="launch", v=1), ErrorCode.UNKNOWN_TYPE, "type"),
                (frame(type="ping", v=1, nonce=1, extra=2), ErrorCode.UNKNOWN_FIELD, "extra"),
                (frame(type="start", v=1, prompt="x"), ErrorCode.MISSING_FIELD, "request_id"),
                (frame(type="ping", v=1, nonce=-1), ErrorCode.INVALID_VALUE, "nonce"),
            ]
            for data, code, field in cases:
                error = await error_for(client, data)
                assert (error.code, error.field) == (code, field)
            requests: list[tuple[ClientMessage, ErrorCode, str | None]] = [
                (Start("c", "red circle", steps=200), ErrorCode.INVALID_VALUE, "steps"),
                (Start("d", "red circle", model="big"), ErrorCode.UNKNOWN_MODEL, "model"),
                (Start("e", "red", verifier="oracle"), ErrorCode.UNKNOWN_VERIFIER, "verifier"),
                (Start("f", "red circle", sampler="magic"), ErrorCode.UNKNOWN_SAMPLER, "sampler"),
                (Start("g", "red", scheduler="lunar"), ErrorCode.UNKNOWN_SCHEDULER, "scheduler"),
                (Start("h", "red circle", width=36), ErrorCode.INVALID_VALUE, "width"),
                (Start("i", "   "), ErrorCode.INVALID_PROMPT, "prompt"),
                (Start("j", "red", steps=10, min_steps=20), ErrorCode.INVALID_VALUE, "min_steps"),
                (Hello(client="again"), ErrorCode.UNEXPECTED_MESSAGE, None),
            ]
            for request, code, field in requests:
                await client.send(request)
                error = await client.expect(Error)
                assert (error.code, error.field) == (code, field)
                assert error.request_id == getattr(request, "request_id", None)
            await client.send(Ping(7))
            assert await client.expect(Pong) == Pong(7)
            mine_events, theirs_events = await collect(
                (client, mine.run_id), (bystander, theirs.run_id)
            )
    for events, steps in ((mine_events, 30), (theirs_events, 10)):
        assert [event.seq for event in events] == list(range(1, len(events) + 1))
        finished = events[-1]
        assert isinstance(finished, Finished) and finished.error is None
        assert finished.steps_run <= steps


async def test_the_first_frame_must_be_hello(
    tmp_path: Path, served_model: LoadedModel, scripted: ScriptedEngine
) -> None:
    async with running_server(
        ServerConfig(data_dir=tmp_path), lambda c: [served_model], sampler=scripted
    ) as server:
        async with connect(server.url, hello=False) as client:
            await client.send(Ping(1))
            error = await client.expect(Error)
            assert error.code is ErrorCode.HELLO_REQUIRED
            assert await closed_with(client) == (1008, "hello_required")
        async with connect(server.url, hello=False) as client:
            await client.ws.send(frame(type="hello", v=2, client="future/9"))
            error = await client.expect(Error)
            assert (error.code, error.field) == (ErrorCode.UNSUPPORTED_VERSION, "v")
            assert await closed_with(client) == (1008, "unsupported_version")


async def test_browsers_must_come_from_an_allowed_origin(
    tmp_path: Path,
    served_model: LoadedModel,
    scripted: ScriptedEngine,
) -> None:
    config = ServerConfig(data_dir=tmp_path, allowed_origins=("https://studio.example",))
    async with running_server(config, lambda c: [served_model], sampler=scripted) as server:
        own = f"http://127.0.0.1:{server.port}"
        for origin in (own, "https://studio.example"):
            async with connect(server.url, origin=origin) as client:
                assert client.welcome is not None
        for origin in (
            "https://evil.example",
            "null",
            "http://studio.example",
            "http://localhost:5173",
        ):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(server.url, origin=origin):
                    pass
            assert refused.value.response.status_code == 403
        with pytest.raises(InvalidStatus) as refused:
            async with connect(server.url, subprotocols=["chat"]):
                pass
        assert refused.value.response.status_code == 400


async def test_an_api_token_is_required_when_set(
    tmp_path: Path, served_model: LoadedModel, scripted: ScriptedEngine
) -> None:
    config = ServerConfig(data_dir=tmp_path, token=TOKEN)
    async with running_server(config, lambda c: [served_model], sampler=scripted) as server:
        async with connect(server.url, hello=False) as client:
            await client.send(Hello(client="tests/1"))
            error = await client.expect(Error)
            assert error.code is ErrorCode.UNAUTHORIZED
            assert await closed_with(client) == (1008, "unauthorized")
        async with connect(server.url, hello=False) as client:
            await client.send(Hello(client="tests/1", token="guess"))
            assert (await client.expect(Error)).code is ErrorCode.UNAUTHORIZED
        async with connect(server.url, token=TOKEN) as client:
            assert isinstance(client.welcome, Welcome)
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        async with connect(server.url, additional_headers=bearer) as client:
            assert isinstance(client.welcome, Welcome)
        with pytest.raises(InvalidStatus) as refused:
            async with connect(server.url, additional_headers={"Authorization": "Bearer guess"}):
                pass
        assert refused.value.response.status_code == 403


async def test_a_flood_is_rate_limited_and_the_connection_stays(
    tmp_path: Path,
    served_model: LoadedModel,
    scripted: ScriptedEngine,
) -> None:
    limits = ServiceLimits(messages_per_second=0.01, message_burst=5)
    async with running_server(
        ServerConfig(data_dir=tmp_path, limits=limits), lambda c: [served_model], sampler=scripted
    ) as server:
        async with connect(server.url) as client:  # hello spent one token
            for nonce in range(8):
                await client.send(Ping(nonce))
            replies = [await client.recv() for _ in range(8)]
    assert replies[:4] == [Pong(nonce) for nonce in range(4)]
    assert all(isinstance(r, Error) and r.code is ErrorCode.RATE_LIMITED for r in replies[4:])
