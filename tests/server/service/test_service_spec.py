"""The server does what protocol/README.md says where a client written from the spec alone
found it did not: errors name their request, defaults come before the rules, queued runs answer
steering at once, welcome announces what checks report, a malformed hello keeps its code."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import msgpack  # type: ignore[import-untyped]
import pytest
from scripted_engine import ScriptedEngine
from servertools import Client, connect, running_server
from websockets.exceptions import ConnectionClosed

from stepwatch.protocol import (
    Applied,
    Check,
    Error,
    ErrorCode,
    Finished,
    Set,
    Start,
    Started,
    Stop,
)
from stepwatch.protocol import limits as wire
from stepwatch.server.config import ServerConfig
from stepwatch.server.engine.model import LoadedModel

pytestmark = pytest.mark.anyio


def frame(**fields: Any) -> bytes:
    packed: bytes = msgpack.packb(fields)
    return packed


async def closed_with(client: Client) -> tuple[int, str]:
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await client.recv()
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def test_a_start_the_decoder_refuses_is_answered_with_its_request_id(
    tmp_path: Path,
    served_model: LoadedModel,
    scripted: ScriptedEngine,
) -> None:
    start = {"type": "start", "v": 1, "request_id": "q-7", "prompt": "red circle"}
    cases = [
        ({**start, "prompt": 5}, ErrorCode.INVALID_VALUE, "prompt"),
        ({**start, "steps": 0}, ErrorCode.INVALID_VALUE, "steps"),
        ({**start, "cfg": "high"}, ErrorCode.INVALID_VALUE, "cfg"),
        ({**start, "promt": "x"}, ErrorCode.UNKNOWN_FIELD, "promt"),
        (
            {key: value for key, value in start.items() if key != "prompt"},
            ErrorCode.MISSING_FIELD,
            "prompt",
        ),
        ({**start, "preview_format": "gif"}, ErrorCode.INVALID_VALUE, "preview_format"),
    ]
    async with running_server(
        ServerConfig(data_dir=tmp_path), lambda c: [served_model], sampler=scripted
    ) as server:
        async with connect(server.url) as client:
            for fields, code, field in cases:
                await client.ws.send(frame(**fields))
                error = await client.expect(Error)
                assert (error.code, error.field, error.request_id) == (code, field, "q-7")
            # A request_id that is itself invalid cannot be echoed.
            await client.ws.send(frame(**{**start, "request_id": "x" * 65}))
            error = await client.expect(Error)
            assert (error.code, error.field, error.request_id) == (
                ErrorCode.INVALID_VALUE,
                "request_id",
                None,
            )
            stop = frame(type="stop", v=1, request_id="s-1", run_id="r", token="short")
            await client.ws.send(stop)
            error = await client.expect(Error)
            assert (error.field, error.request_id) == ("token", "s-1")


async def test_defaults_are_filled_in_before_the_rules_across_fields(
    tmp_path: Path, served_model: LoadedModel
) -> None:
    async with running_server(ServerConfig(data_dir=tmp_path), lambda c: [served_model]) as server:
        async with connect(server.url) as client:
            assert client.welcome is not None
            assert not client.welcome.models[0].fixed_size  # any multiple of size_multiple
            cap = client.welcome.models[0].default_cfg_max
            assert cap < wire.MAX_CFG
            await client.send(Start("over", "red circle", steps=2, cfg=cap + 1))
            refused = await client.reply_to("over")
            assert isinstance(refused, Error)
            assert (refused.code, refused.field) == (ErrorCode.INVALID_VALUE, "cfg")
            accepted = await client.start(
                "named", prompt="red circle", steps=2, cfg=cap + 1, cfg_max=cap + 1
            )
            started = await client.event(accepted.run_id, Started)
            assert started.parameters.cfg_max == cap + 1
            await client.run_events(accepted.run_id)


async def test_an_empty_prompt_gets_invalid_prompt(
    tmp_path: Path,
    served_model: LoadedModel,
    scripted: ScriptedEngine,
) -> None:
    async with running_server(
        ServerConfig(data_dir=tmp_path), lambda c: [served_model], sampler=scripted
    ) as server:
        async with connect(server.url) as client:
            for request_id, prompt in (("empty", ""), ("blank", "   ")):
                await client.send(Start(request_id, prompt, steps=2))
                refused = await client.reply_to(request_id)
                assert isinstance(refused, Error)
                assert (refused.code, refused.field) == (ErrorCode.INVALID_PROMPT, "prompt")


def read_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


async def test_a_queued_run_answers_set_and_stop_at_once(
    tmp_path: Path,
    served_model: LoadedModel,
    scripted: ScriptedEngine,
) -> None:
    async with running_server(
        ServerConfig(data_dir=tmp_path), lambda c: [served_model], sampler=scripted
    ) as server:
        async with connect(server.url) as client:
            running = await client.start("a", prompt="red circle", steps=400, early_stop=False)
            changed = await client.start("b", prompt="red circle", steps=3, check_interval=1)
            stopped = await client.start("c", prompt="red circle", steps=3)
            assert (changed.queue_position, stopped.queue_position) == (1, 2)
            await client.send(
                Set("set-b", changed.run_id, changed.control_token, quality_threshold=0.25)
            )
            await client.send(Stop("stop-c", stopped.run_id, stopped.control_token))
            applied = await client.reply_to("set-b")
            stop_applied = await client.reply_to("stop-c")
            # Both arrive while the first run still runs (its 400 steps take far longer).
            assert not any(isinstance(e, Finished) for e in client.seen.get(running.run_id, []))
            await client.send(Stop("stop-a", running.run_id, running.control_token, "abort"))
            changed_events = await client.run_events(changed.run_id)
            stopped_events = await client.run_events(stopped.run_id)
            stored = await anyio.to_thread.run_sync(
                read_json, f"{server.http}/api/runs/{changed.run_id}"
            )
    # The store keeps the parameters the run ran with, the change included.
    assert stored["parameters"]["quality_threshold"] == 0.25
    assert isinstance(applied, Applied) and (applied.seq, applied.step) == (1, 0)
    (change,) = applied.changes
    assert (change.setting, change.new) == ("quality_threshold", 0.25)
    assert changed_events[0] == applied
    started = changed_events[1]
    assert isinstance(started, Started) and started.seq == 2
    assert started.parameters.quality_threshold == 0.25
    checks = [e for e in changed_events if isinstance(e, Check)]
    assert checks and all(check.threshold == 0.25 for check in checks)
    assert isinstance(stop_applied, Applied) and stop_applied.stop == "finish"
    assert stopped_events[0] == stop_applied
    assert isinstance(stopped_events[1], Finished) and stopped_events[1].reason == "stopped"


async def test_welcome_announces_the_sizes_and_the_components_checks_report(
    tmp_path: Path, shapes_model: LoadedModel
) -> None:
    async with running_server(ServerConfig(data_dir=tmp_path), lambda c: [shapes_model]) as server:
        async with connect(server.url) as client:
            assert client.welcome is not None
            infos = {info.id: info for info in client.welcome.verifiers}
            announced = set(infos["adherence"].components)
            assert {"shape", "colour", "clean"} <= announced
            # The built-in model makes one size only, and says so.
            (model,) = client.welcome.models
            assert model.fixed_size and (model.default_width, model.default_height) == (32, 32)
            await client.send(Start("wide", "red circle", width=64, height=32))
            refused = await client.reply_to("wide")
            assert isinstance(refused, Error) and refused.code is ErrorCode.INVALID_VALUE
            accepted = await client.start(
                "a", prompt="red circle", steps=4, check_interval=2, verifier="adherence"
            )
            events = await client.run_events(accepted.run_id)
    checks = [event for event in events if isinstance(event, Check)]
    assert checks and all(set(check.components) <= announced for check in checks)
    # The attributes the prompt names, and how finished the image looks.
    assert set(checks[0].components) == {"shape", "colour", "clean"}


@pytest.mark.parametrize(
    ("fields", "code", "field"),
    [
        ({}, ErrorCode.MISSING_FIELD, "client"),
        ({"client": "t/1", "colour": "red"}, ErrorCode.UNKNOWN_FIELD, "colour"),
        (
            {"client": "t/1", "resume": [{"run_id": "r", "after_seq": 0}] * 33},
            ErrorCode.INVALID_VALUE,
            "resume",
        ),
    ],
)
async def test_a_malformed_hello_gets_the_decoders_code_and_the_close(
    tmp_path: Path,
    served_model: LoadedModel,
    fields: dict[str, Any],
    code: ErrorCode,
    field: str,
    scripted: ScriptedEngine,
) -> None:
    async with running_server(
        ServerConfig(data_dir=tmp_path), lambda c: [served_model], sampler=scripted
    ) as server:
        async with connect(server.url, hello=False) as client:
            await client.ws.send(frame(type="hello", v=1, **fields))
            error = await client.expect(Error)
            assert (error.code, error.field) == (code, field)
            assert await closed_with(client) == (1008, code.value)


async def test_the_documented_maximum_of_steps_runs_to_its_end(
    tmp_path: Path, served_model: LoadedModel
) -> None:
    async with running_server(ServerConfig(data_dir=tmp_path), lambda c: [served_model]) as server:
        async with connect(server.url) as client:
            accepted = await client.start(
                "max",
                prompt="red circle",
                steps=wire.MAX_STEPS,
                sampler="dpmpp_2m",
                scheduler="normal",
                check_interval=wire.MAX_STEPS,
                preview_size=0,
                early_stop=False,
            )
            finished = (await client.run_events(accepted.run_id))[-1]
    assert isinstance(finished, Finished)
    assert (finished.reason, finished.error, finished.steps_run) == ("completed", None, 1000)
