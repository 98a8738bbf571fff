"""AuraFlow and Lumina 2, pipelines without an ``interrupt`` property on T5 / Gemma text encoders,
served and watched through the real server on tiny random-weight models: checks with previews,
a CFG change (applied where the pipeline reads its guidance at every step, Lumina 2; refused with
a coded error where it reads it once, AuraFlow), and a clean ``stop``."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image
from servertools import connect, running_server
from tiny_transformers import make_auraflow_pipeline, make_lumina2_pipeline

from stepwatch.protocol import (
    Applied,
    Check,
    Error,
    ErrorCode,
    Finished,
    Progress,
    ServerMessage,
    Set,
    Stop,
)
from stepwatch.server.config import ServerConfig
from stepwatch.server.engine.finish import tail_length
from stepwatch.server.engine.model import LoadedModel, describe_pipeline

pytestmark = pytest.mark.anyio
LONG = 400  # steps of a run that a test stops long before its end


@pytest.fixture(scope="module")
def auraflow() -> LoadedModel:
    return describe_pipeline("auraflow", make_auraflow_pipeline(seed=1))


@pytest.fixture(scope="module")
def lumina2() -> LoadedModel:
    return describe_pipeline("lumina2", make_lumina2_pipeline(seed=1))


def png_size(finished: Finished) -> tuple[int, int]:
    assert finished.image is not None
    return Image.open(io.BytesIO(finished.image.data)).size


async def watched_run(model: LoadedModel, tmp_path: Path) -> list[object]:
    async with running_server(ServerConfig(data_dir=tmp_path), lambda c: [model]) as server:
        async with connect(server.url) as client:
            accepted = await client.start(
                "q", prompt="red circle", width=32, height=32, steps=6, check_interval=2,
                early_stop=False,
            )  # fmt: skip
            return list(await client.run_events(accepted.run_id))


async def stopped_run(
    model: LoadedModel, tmp_path: Path, cfg: float
) -> tuple[ServerMessage, Applied, list[object]]:
    async with running_server(ServerConfig(data_dir=tmp_path), lambda c: [model]) as server:
        async with connect(server.url) as client:
            accepted = await client.start(
                "q", prompt="red circle", width=32, height=32, steps=LONG, check_interval=3,
                early_stop=False,
            )  # fmt: skip
            run_id, token = accepted.run_id, accepted.control_token
            await client.event(run_id, Progress)
            await client.send(Set("c", run_id, token, cfg=cfg))
            changed = await client.reply_to("c")
            await client.event(run_id, Check)
            await client.send(Stop("s", run_id, token))
            stopped = await client.reply_to("s")
            assert isinstance(stopped, Applied)
            return changed, stopped, list(await client.run_events(run_id))


def assert_stopped_cleanly(stopped: Applied, events: list[object]) -> None:
    assert stopped.stop == "finish" and stopped.step < LONG
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.error is None
    tail = tail_length(LONG - stopped.step)
    assert finished.reason == "stopped" and finished.steps_run == stopped.step + tail
    assert png_size(finished) == (32, 32)


@pytest.mark.parametrize("family", ["auraflow", "lumina2"])
async def test_a_run_is_watched_with_checks_and_previews(
    tmp_path: Path, family: str, request: pytest.FixtureRequest
) -> None:
    events = await watched_run(request.getfixturevalue(family), tmp_path)
    checks = [e for e in events if isinstance(e, Check)]
    assert [c.step for c in checks] == [2, 4, 6] and all(c.preview for c in checks)
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.reason == "completed"
    assert finished.steps_run == 6 and png_size(finished) == (32, 32)


async def test_an_auraflow_run_refuses_a_cfg_change_and_stops_cleanly(
    tmp_path: Path, auraflow: LoadedModel
) -> None:
    assert not auraflow.guidance_live  # its pipeline computes the guidance once, before the loop
    refused, stopped, events = await stopped_run(auraflow, tmp_path, cfg=5.0)
    assert isinstance(refused, Error) and refused.code is ErrorCode.INVALID_VALUE
    assert "reads its guidance only once per run" in refused.message
    assert_stopped_cleanly(stopped, events)


async def test_a_lumina2_run_takes_a_cfg_change_and_stops_cleanly(
    tmp_path: Path, lumina2: LoadedModel
) -> None:
    changed, stopped, events = await stopped_run(lumina2, tmp_path, cfg=6.5)
    assert isinstance(changed, Applied) and changed.changes[0].new == 6.5
    later = [e for e in events if isinstance(e, Check) and e.step > changed.step]
    assert later and all(c.cfg == 6.5 for c in later)
    assert_stopped_cleanly(stopped, events)
