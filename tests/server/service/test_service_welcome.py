"""What a client learns on connecting, custom verifiers, failures, and runs a killed server left."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from scripted_engine import ScriptedEngine
from servertools import connect, running_server

from stepwatch.protocol import (
    Error,
    ErrorCode,
    Finished,
    RunParameters,
    Set,
    Subscribe,
    Subscribed,
)
from stepwatch.server.config import ServerConfig, ServiceLimits
from stepwatch.server.engine.model import LoadedModel
from stepwatch.server.store import Store

pytestmark = pytest.mark.anyio


async def test_welcome_lists_models_verifiers_limits_and_capabilities(
    tmp_path: Path, served_model: LoadedModel
) -> None:
    config = ServerConfig(
        data_dir=tmp_path,
        verifiers=("broken=servertools:BrokenVerifier",),
        limits=ServiceLimits(max_steps=250, max_queue=4),
    )
    async with running_server(config, lambda c: [served_model]) as server:
        async with connect(server.url) as client:
            welcome = client.welcome
    assert welcome is not None and welcome.server.startswith("stepwatch/")
    assert set(welcome.capabilities) == {
        "previews",
        "resume",
        "steer",
        "early_stop",
        "search",
        "search_controls",
    }
    assert welcome.limits["max_steps"] == 250 and welcome.limits["max_queue"] == 4
    (model,) = welcome.models
    assert (model.id, model.default_width, model.default_sampler) == ("tiny", 32, "dpmpp_2m")
    assert model.default_cfg_max == 2 * model.default_cfg and "euler" in model.samplers
    verifiers = {verifier.id: verifier for verifier in welcome.verifiers}
    assert set(verifiers) == {"structure", "variance_edges", "simple", "broken"}
    assert verifiers["structure"].components == ("structure", "clean")
    assert verifiers["simple"].components == verifiers["variance_edges"].components
    assert "variance_edges" in verifiers["simple"].description


async def test_a_failing_verifier_fails_the_run_with_a_code_and_the_service_goes_on(
    tmp_path: Path, served_model: LoadedModel
) -> None:
    config = ServerConfig(data_dir=tmp_path, verifiers=("broken=servertools:BrokenVerifier",))
    async with running_server(config, lambda c: [served_model]) as server:
        async with connect(server.url) as client:
            failing = await client.start("a", prompt="red circle", steps=6, verifier="broken")
            failed = (await client.run_events(failing.run_id))[-1]
            fine = await client.start("b", prompt="red circle", steps=6, cfg=3.0)
            await client.send(Set("c", fine.run_id, fine.control_token, cfg=0.5))
            refused = await client.reply_to("c")
            finished = (await client.run_events(fine.run_id))[-1]
    assert isinstance(failed, Finished) and failed.reason == "failed"
    assert failed.error is not None and failed.error.code is ErrorCode.VERIFIER_FAILED
    assert "missing" in failed.error.message and failed.image is None
    assert isinstance(refused, Error) and (refused.code, refused.field) == (
        ErrorCode.INVALID_VALUE,
        "cfg",
    )
    assert isinstance(finished, Finished) and finished.error is None


async def test_runs_a_killed_server_left_unfinished_are_failed_on_the_next_start(
    tmp_path: Path,
    served_model: LoadedModel,
    scripted: ScriptedEngine,
) -> None:
    store = await Store.open(tmp_path)
    await store.add_run("0123456789abcdef", _parameters())
    await store.close()  # as if the process died here
    async with running_server(
        ServerConfig(data_dir=tmp_path), lambda c: [served_model], sampler=scripted
    ) as server:
        async with connect(server.url) as client:
            await client.send(Subscribe("0123456789abcdef"))
            subscribed = await client.expect(Subscribed)
            (finished,) = await client.run_events("0123456789abcdef")
    assert subscribed.state == "finished"
    assert isinstance(finished, Finished) and finished.reason == "failed"
    assert finished.error is not None and finished.error.code is ErrorCode.INTERNAL


def _parameters() -> RunParameters:
    return RunParameters(
        model="tiny",
        prompt="red circle",
        negative_prompt="",
        seed=1,
        steps=10,
        cfg=3.0,
        sampler="euler",
        scheduler="normal",
        width=32,
        height=32,
        verifier="simple",
        check_interval=5,
        quality_threshold=0.7,
        scale_factor=1.25,
        cfg_max=6.0,
        early_stop=True,
        patience=2,
        min_steps=5,
        preview_size=128,
        preview_format="webp",
    )


def test_serve_refuses_a_bad_configuration_before_loading_anything() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stepwatch.client.cli", "serve", "--device", "tpu"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2 and "device must be one of" in result.stderr
