"""Pipeline families beyond SD/SDXL/SD3, served and watched through the real server on tiny
random-weight pipelines: a latent consistency model (LCM), whose pipeline has no ``interrupt``
property, runs with checks and previews, refuses a CFG change it could not apply (its guidance
is an embedding computed once), and stops cleanly at a step boundary."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from diffusers import LCMScheduler
from PIL import Image
from servertools import connect, running_server
from tiny_models import make_lcm_pipeline

from stepwatch.protocol import (
    Applied,
    Check,
    Error,
    ErrorCode,
    Finished,
    Progress,
    Set,
    Start,
    Started,
    Stop,
)
from stepwatch.server.config import ServerConfig
from stepwatch.server.engine.finish import tail_length
from stepwatch.server.engine.model import LoadedModel, describe_pipeline

pytestmark = pytest.mark.anyio
LONG = 900  # steps of a run that a test stops long before its end


@pytest.fixture(scope="module")
def lcm_model() -> LoadedModel:
    return describe_pipeline("lcm", make_lcm_pipeline(seed=5))


def png_size(finished: Finished) -> tuple[int, int]:
    assert finished.image is not None
    return Image.open(io.BytesIO(finished.image.data)).size


async def test_an_lcm_run_is_watched_with_checks_and_previews(
    tmp_path: Path, lcm_model: LoadedModel
) -> None:
    async with running_server(ServerConfig(data_dir=tmp_path), lambda c: [lcm_model]) as server:
        async with connect(server.url) as client:
            assert client.welcome is not None
            (info,) = client.welcome.models
            accepted = await client.start(
                "q", prompt="red circle", steps=6, check_interval=2, early_stop=False
            )
            events = await client.run_events(accepted.run_id)
    assert info.samplers == ("lcm",) and info.default_sampler == "lcm"
    started = events[0]
    assert isinstance(started, Started) and started.parameters.sampler == "lcm"
    checks = [e for e in events if isinstance(e, Check)]
    assert [c.step for c in checks] == [2, 4, 6] and all(c.preview for c in checks)
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.reason == "completed"
    assert finished.steps_run == 6 and png_size(finished) == (32, 32)


async def test_an_lcm_run_stops_cleanly_at_a_step_boundary_and_refuses_a_cfg_change(
    tmp_path: Path, lcm_model: LoadedModel
) -> None:
    async with running_server(ServerConfig(data_dir=tmp_path), lambda c: [lcm_model]) as server:
        async with connect(server.url) as client:
            accepted = await client.start("q", prompt="red circle", steps=LONG, early_stop=False)
            run_id, token = accepted.run_id, accepted.control_token
            await client.event(run_id, Progress)
            await client.send(Set("c", run_id, token, cfg=4.0))
            refused = await client.reply_to("c")
            await client.send(Stop("s", run_id, token))
            stopped = await client.reply_to("s")
            events = await client.run_events(run_id)
            # The service goes on: the next run on the same model completes.
            after = await client.start("n", prompt="blue square", steps=3, early_stop=False)
            next_events = await client.run_events(after.run_id)
    assert isinstance(refused, Error) and refused.code is ErrorCode.INVALID_VALUE
    assert "reads its guidance only once per run" in refused.message
    assert isinstance(stopped, Applied) and stopped.stop == "finish" and stopped.step < LONG
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.error is None
    # A finish stop re-plans the rest into a short tail to zero noise, then ends the loop.
    tail = tail_length(LONG - stopped.step)
    assert finished.reason == "stopped" and finished.steps_run == stopped.step + tail
    assert [e.step for e in events if isinstance(e, Progress)][-1] == stopped.step + tail
    assert png_size(finished) == (32, 32)
    last = next_events[-1]
    assert isinstance(last, Finished) and last.reason == "completed" and last.steps_run == 3


async def test_an_lcm_run_stops_early_once_quality_holds(
    tmp_path: Path, lcm_model: LoadedModel
) -> None:
    async with running_server(ServerConfig(data_dir=tmp_path), lambda c: [lcm_model]) as server:
        async with connect(server.url) as client:
            accepted = await client.start(
                "q", prompt="red circle", steps=40, check_interval=4, quality_threshold=0.0,
                min_steps=8, patience=2, verifier="variance_edges",
            )  # fmt: skip
            events = await client.run_events(accepted.run_id)
    checks = [e for e in events if isinstance(e, Check)]
    assert checks[-1].decision == "early_stop"
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.reason == "early_stop"
    stop_step = checks[-1].step
    assert finished.steps_run == stop_step + tail_length(40 - stop_step) < 40
    assert png_size(finished) == (32, 32)


async def test_an_lcm_run_of_more_steps_than_it_was_distilled_from_is_refused(
    tmp_path: Path,
) -> None:
    pipeline = make_lcm_pipeline()
    pipeline.scheduler = LCMScheduler.from_config(
        pipeline.scheduler.config, original_inference_steps=50
    )
    model = describe_pipeline("lcm50", pipeline)
    async with running_server(ServerConfig(data_dir=tmp_path), lambda c: [model]) as server:
        async with connect(server.url) as client:
            await client.send(Start("q", "red circle", steps=51))
            refused = await client.reply_to("q")
    assert isinstance(refused, Error) and refused.code is ErrorCode.INVALID_VALUE
    assert refused.field == "steps" and "at most 50 steps" in refused.message
