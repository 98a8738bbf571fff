"""Pixel-space pipelines without a step callback (``DDPMPipeline``, ``DDIMPipeline``), served and
watched through the real server under the loop the engine drives (:mod:`.driven_loop`): checks
with previews, the pipeline's own image for the seed, a clean ``stop``, and the coded refusals of
a CFG these unconditional models do not have."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from servertools import connect, running_server
from tiny_models import make_ddim_pipeline, make_ddpm_pipeline

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
from stepwatch.server.engine.lanes import DenoiserCounter
from stepwatch.server.engine.model import LoadedModel, describe_pipeline
from stepwatch.server.engine.previews import to_uint8

pytestmark = pytest.mark.anyio
LONG = 900  # steps of a run that a test stops long before its end


@pytest.fixture(scope="module")
def ddpm_model() -> LoadedModel:
    return describe_pipeline("ddpm", make_ddpm_pipeline(seed=3))


@pytest.fixture(scope="module")
def ddim_model() -> LoadedModel:
    return describe_pipeline("ddim", make_ddim_pipeline(seed=4))


def pixels(finished: Finished) -> np.ndarray:
    assert finished.image is not None
    return np.asarray(Image.open(io.BytesIO(finished.image.data)).convert("RGB"))


async def test_a_ddpm_run_is_watched_with_previews_and_makes_the_pipelines_own_image(
    tmp_path: Path, ddpm_model: LoadedModel
) -> None:
    async with running_server(ServerConfig(data_dir=tmp_path), lambda c: [ddpm_model]) as server:
        async with connect(server.url) as client:
            assert client.welcome is not None
            (info,) = client.welcome.models
            accepted = await client.start(
                "q", prompt="a cat", seed=7, steps=8, check_interval=2, early_stop=False
            )
            events = await client.run_events(accepted.run_id)
    assert info.default_sampler == "ddpm" and info.preview_decoders == ("identity",)
    started = events[0]
    assert isinstance(started, Started) and started.parameters.sampler == "ddpm"
    checks = [e for e in events if isinstance(e, Check)]
    assert [c.step for c in checks] == [2, 4, 6, 8] and all(c.preview for c in checks)
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.reason == "completed"
    assert finished.steps_run == 8
    # Watching changed nothing: the pipeline's own loop, same seed, gives the same pixels.
    own = ddpm_model.pipeline.pipeline(
        generator=torch.Generator("cpu").manual_seed(7), num_inference_steps=8, output_type="pt"
    ).images
    assert np.array_equal(pixels(finished), to_uint8(own)[0])


async def test_a_ddim_run_stops_cleanly_and_refuses_cfg_in_start_and_mid_run(
    tmp_path: Path, ddim_model: LoadedModel
) -> None:
    async with running_server(ServerConfig(data_dir=tmp_path), lambda c: [ddim_model]) as server:
        async with connect(server.url) as client:
            await client.send(Start("g", "a cat", cfg=4.0))
            refused_start = await client.reply_to("g")
            accepted = await client.start(
                "q", prompt="a cat", steps=LONG, check_interval=5, early_stop=False
            )
            run_id, token = accepted.run_id, accepted.control_token
            await client.event(run_id, Check)
            await client.send(Set("c", run_id, token, cfg=0.5))
            refused_set = await client.reply_to("c")
            await client.send(Stop("s", run_id, token))
            stopped = await client.reply_to("s")
            events = await client.run_events(run_id)
            # The service goes on: the next run on the same model completes.
            after = await client.start("n", prompt="a dog", steps=3, early_stop=False)
            next_events = await client.run_events(after.run_id)
    assert isinstance(refused_start, Error) and refused_start.code is ErrorCode.INVALID_VALUE
    assert refused_start.field == "cfg" and "no classifier-free guidance" in refused_start.message
    assert isinstance(refused_set, Error) and refused_set.code is ErrorCode.INVALID_VALUE
    assert "no classifier-free guidance" in refused_set.message
    assert isinstance(stopped, Applied) and stopped.stop == "finish" and stopped.step < LONG
    checks = [e for e in events if isinstance(e, Check)]
    assert checks and all(c.preview for c in checks)
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.error is None
    tail = tail_length(LONG - stopped.step)
    assert finished.reason == "stopped" and finished.steps_run == stopped.step + tail
    assert [e.step for e in events if isinstance(e, Progress)][-1] == stopped.step + tail
    assert pixels(finished).shape == (8, 8, 3)
    last = next_events[-1]
    assert isinstance(last, Finished) and last.reason == "completed" and last.steps_run == 3


async def test_a_pixel_run_on_another_sampler_completes_with_checks(
    tmp_path: Path, ddim_model: LoadedModel
) -> None:
    # Euler scales its starting noise and the UNet's input; the driven loop does as it says.
    async with running_server(ServerConfig(data_dir=tmp_path), lambda c: [ddim_model]) as server:
        async with connect(server.url) as client:
            accepted = await client.start(
                "q", prompt="a cat", sampler="euler", steps=6, check_interval=3, early_stop=False
            )
            events = await client.run_events(accepted.run_id)
    assert [e.step for e in events if isinstance(e, Check)] == [3, 6]
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.reason == "completed"
    assert finished.error is None and pixels(finished).shape == (8, 8, 3)


async def test_ddpm_runs_queued_together_share_one_batch_each_its_own_image(
    tmp_path: Path, ddpm_model: LoadedModel
) -> None:
    runs = [{"prompt": p, "seed": 20 + i, "steps": 6, "early_stop": False} for i, p in
            enumerate(("a cat", "a dog", "a fox"))]  # fmt: skip
    counter = DenoiserCounter()
    counter.attach(ddpm_model.pipeline)
    try:
        config = ServerConfig(data_dir=tmp_path, sampler_threads=1)
        async with running_server(config, lambda c: [ddpm_model]) as server:
            async with connect(server.url) as client:
                blocker = await client.start("b", prompt="x", steps=LONG, early_stop=False)
                await client.event(blocker.run_id, Started)
                ids = [(await client.start(f"q{i}", **run)).run_id for i, run in enumerate(runs)]
                await client.send(Stop("s", blocker.run_id, blocker.control_token, "abort"))
                await client.run_events(blocker.run_id)
                results = [(await client.run_events(run_id))[-1] for run_id in ids]
    finally:
        counter.detach()
    assert 3 in counter.batch_sizes  # the three runs were denoised together
    for run, finished in zip(runs, results, strict=True):
        assert isinstance(finished, Finished) and finished.reason == "completed", finished
        own = ddpm_model.pipeline.pipeline(
            generator=torch.Generator("cpu").manual_seed(run["seed"]),
            num_inference_steps=6,
            output_type="pt",
        ).images
        # Batched convolutions round differently from batch 1: within 2 of 255 per pixel.
        difference = np.abs(pixels(finished).astype(int) - to_uint8(own)[0].astype(int))
        assert difference.max() <= 2
