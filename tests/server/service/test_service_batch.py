"""Runs that share a batch, through the real service and the built-in model: queued runs that
can share a denoiser call run as lanes of one batch, each with its own events and the image of
its lone run; one that stops leaves the others unchanged; a run alone takes the lone path;
``max_batch`` is honoured; runs that cannot share a call run separately.

A long "blocker" run holds the device while the runs under test are queued, so that they are
all waiting when the device frees (the admission rule gathers exactly those).
"""

from __future__ import annotations

import argparse
import io
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from servertools import Client, connect, running_server

from stepwatch.protocol import (
    Error,
    ErrorCode,
    Finished,
    Progress,
    RunEvent,
    Set,
    Started,
    Stop,
)
from stepwatch.server.cli import config_from, serve
from stepwatch.server.config import ConfigError, ServerConfig
from stepwatch.server.engine.lanes import DenoiserCounter
from stepwatch.server.engine.model import LoadedModel

pytestmark = pytest.mark.anyio

#: Runs that can share a batch: CFG off (so it cannot move), no early stop, the same steps.
SHARED: dict[str, Any] = {"steps": 8, "cfg": 1.0, "early_stop": False, "check_interval": 3}
PROMPTS = ("red circle", "blue square", "green triangle")
#: The most a lane's pixel may differ from its lone run's (in 0..255): the denoiser's batched
#: convolutions round differently from batch 1 (bench/throughput.py measures it).
TOLERANCE = 2


def pixels(finished: Finished) -> np.ndarray[Any, Any]:
    assert finished.image is not None, finished
    return np.asarray(Image.open(io.BytesIO(finished.image.data)), dtype=np.int16)


@contextmanager
def counting(model: LoadedModel) -> Iterator[DenoiserCounter]:
    """The batch size of every denoiser call made meanwhile."""
    counter = DenoiserCounter()
    counter.attach(model.pipeline)
    try:
        yield counter
    finally:
        counter.detach()


@asynccontextmanager
async def serving(model: LoadedModel, tmp_path: Path, **config: Any) -> AsyncIterator[Client]:
    settings = ServerConfig(data_dir=tmp_path, sampler_threads=1, **config)
    async with running_server(settings, lambda c: [model]) as server:
        async with connect(server.url) as client:
            yield client


async def queued_behind_blocker(client: Client, runs: list[dict[str, Any]]) -> list[str]:
    """Start a long run, queue ``runs`` behind it, abort it; the queued runs' ids."""
    blocker = await client.start("blocker", prompt="red circle", steps=400, cfg=1.0)
    await client.event(blocker.run_id, Started)
    ids = [(await client.start(f"q{i}", **run)).run_id for i, run in enumerate(runs)]
    await client.send(Stop("stop-blocker", blocker.run_id, blocker.control_token, "abort"))
    await client.run_events(blocker.run_id)
    return ids


async def all_events(client: Client, ids: list[str]) -> list[list[RunEvent]]:
    """Each run's events, once all have finished (the client keeps what it reads meanwhile)."""
    return [await client.run_events(run_id) for run_id in ids]


async def lone_results(client: Client, runs: list[dict[str, Any]]) -> list[Finished]:
    """Each run started alone, after the previous one finished."""
    results = []
    for i, run in enumerate(runs):
        accepted = await client.start(f"lone{i}", **run)
        finished = (await client.run_events(accepted.run_id))[-1]
        assert isinstance(finished, Finished)
        results.append(finished)
    return results


async def test_runs_queued_together_share_one_batch_with_their_own_events_and_images(
    shapes_model: LoadedModel, tmp_path: Path
) -> None:
    runs = [dict(SHARED, prompt=p, seed=10 + i) for i, p in enumerate(PROMPTS)]
    async with serving(shapes_model, tmp_path) as client:
        with counting(shapes_model) as batched:
            ids = await queued_behind_blocker(client, runs)
            events = await all_events(client, ids)
        with counting(shapes_model) as alone:
            lone = await lone_results(client, runs)
    assert 3 in batched.batch_sizes  # the three runs were denoised together
    assert set(alone.batch_sizes) == {1}  # a run alone takes the lone path
    for run, run_events, lone_result in zip(runs, events, lone, strict=True):
        started, finished = run_events[0], run_events[-1]
        assert isinstance(started, Started) and isinstance(finished, Finished)
        assert started.parameters.prompt == run["prompt"]
        assert started.parameters.seed == run["seed"]
        assert [e.step for e in run_events if isinstance(e, Progress)] == list(range(1, 9))
        assert [entry.step for entry in finished.history] == [3, 6]
        assert finished.reason == "completed" and finished.steps_run == 8
        assert np.abs(pixels(finished) - pixels(lone_result)).max() <= TOLERANCE
        assert finished.final_score == pytest.approx(lone_result.final_score, abs=1e-3)
    # three different prompts and seeds: three different images
    assert len({pixels(e[-1]).tobytes() for e in events if isinstance(e[-1], Finished)}) == 3


async def test_a_lane_that_stops_leaves_the_others_results_unchanged(
    shapes_model: LoadedModel, tmp_path: Path
) -> None:
    runs = [dict(SHARED, steps=40, prompt=p, seed=20 + i) for i, p in enumerate(PROMPTS)]
    async with serving(shapes_model, tmp_path) as client:
        with counting(shapes_model) as batched:
            blocker = await client.start("blocker", prompt="red circle", steps=400, cfg=1.0)
            await client.event(blocker.run_id, Started)
            accepted = [await client.start(f"q{i}", **run) for i, run in enumerate(runs)]
            await client.send(Stop("stop-blocker", blocker.run_id, blocker.control_token, "abort"))
            stopped, kept = accepted[0], accepted[1]
            await client.event(stopped.run_id, Progress)
            await client.send(Stop("stop", stopped.run_id, stopped.control_token, "estimate"))
            await client.send(Set("cfg", kept.run_id, kept.control_token, cfg=0.8))
            refused = await client.reply_to("cfg")
            events = await all_events(client, [a.run_id for a in accepted])
        lone = await lone_results(client, runs[1:])
    assert isinstance(refused, Error) and refused.code is ErrorCode.INVALID_VALUE
    assert "shares a batch" in refused.message
    first = events[0][-1]
    assert isinstance(first, Finished) and first.reason == "stopped" and first.image is not None
    assert first.steps_run < 40
    assert 3 in batched.batch_sizes and 2 in batched.batch_sizes  # the batch shrank
    for run_events, lone_result in zip(events[1:], lone, strict=True):
        finished = run_events[-1]
        assert isinstance(finished, Finished) and finished.reason == "completed"
        assert finished.steps_run == 40
        assert np.abs(pixels(finished) - pixels(lone_result)).max() <= TOLERANCE


async def test_runs_at_the_models_defaults_share_a_batch(
    shapes_model: LoadedModel, tmp_path: Path
) -> None:
    # CFG 3 with DPM-Solver++: the shipped curve says raising CFG hurts, so it never moves
    runs = [
        {"prompt": p, "seed": 40 + i, "steps": 6, "early_stop": False}
        for i, p in enumerate(PROMPTS)
    ]
    async with serving(shapes_model, tmp_path) as client:
        with counting(shapes_model) as batched:
            ids = await queued_behind_blocker(client, runs)
            events = await all_events(client, ids)
    assert 6 in batched.batch_sizes  # three lanes, both halves of classifier-free guidance
    for run_events in events:
        started, finished = run_events[0], run_events[-1]
        assert isinstance(started, Started) and started.parameters.cfg == 3.0
        assert isinstance(finished, Finished) and finished.reason == "completed"


async def test_max_batch_is_honoured(shapes_model: LoadedModel, tmp_path: Path) -> None:
    runs = [dict(SHARED, prompt=p, seed=30 + i) for i, p in enumerate(PROMPTS)]
    async with serving(shapes_model, tmp_path, max_batch=2) as client:
        with counting(shapes_model) as batched:
            ids = await queued_behind_blocker(client, runs)
            events = await all_events(client, ids)
    assert max(batched.batch_sizes) == 2 and 1 in batched.batch_sizes[-8:]
    assert all(isinstance(e[-1], Finished) and e[-1].reason == "completed" for e in events)


async def test_runs_that_cannot_share_a_call_run_separately(
    shapes_model: LoadedModel, tmp_path: Path
) -> None:
    runs = [
        dict(SHARED, prompt="red circle", seed=1),
        dict(SHARED, prompt="red circle", seed=2, steps=9),  # another step count
        dict(SHARED, prompt="red circle", seed=3, sampler="euler"),  # another sampler
        # CFG the policy may raise (Euler: the shipped curve says raising can help): alone
        dict(SHARED, prompt="red circle", seed=4, cfg=3.0, cfg_max=6.0, sampler="euler"),
        dict(SHARED, prompt="red circle", seed=5, cfg=3.0, cfg_max=6.0, sampler="euler"),
    ]
    async with serving(shapes_model, tmp_path) as client:
        with counting(shapes_model) as batched:
            ids = await queued_behind_blocker(client, runs)
            events = await all_events(client, ids)
        off = await lone_results(client, runs[:1])
    cfg_run = 2  # its calls carry both halves of classifier-free guidance
    assert set(batched.batch_sizes) == {1, cfg_run}
    assert all(isinstance(e[-1], Finished) and e[-1].reason == "completed" for e in events)
    first = events[0][-1]
    assert isinstance(first, Finished)
    assert pixels(first).tobytes() == pixels(off[0]).tobytes()  # alone: exactly today's path


def test_the_batch_settings_come_from_the_command_line_and_are_checked() -> None:
    parser = argparse.ArgumentParser()
    serve(parser)
    config = config_from(parser.parse_args(["--max-batch", "3", "--batch-window", "0"]))
    assert (config.max_batch, config.batch_window) == (3, 0.0)
    assert config_from(parser.parse_args([])).max_batch == 8
    with pytest.raises(ConfigError, match="max_batch"):
        ServerConfig(max_batch=0)
    with pytest.raises(ConfigError, match="batch_window"):
        ServerConfig(batch_window=-1.0)
