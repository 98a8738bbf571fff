"""Kandinsky 2.2 (``KandinskyV22CombinedPipeline``: prior, then decoder) served and watched
through the real server on a tiny random-weight model, under the decoder loop the engine drives
(:mod:`.kandinsky`): checks with MoVQ previews, a CFG change that applies from the next step,
and a clean ``stop``."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image
from servertools import connect, running_server
from tiny_models import make_kandinsky22_pipeline

from stepwatch.protocol import Applied, Check, Finished, Progress, Set, Started, Stop
from stepwatch.server.config import ServerConfig
from stepwatch.server.engine.finish import tail_length
from stepwatch.server.engine.model import LoadedModel, describe_pipeline

pytestmark = pytest.mark.anyio
LONG = 400  # steps of a run that a test stops long before its end


@pytest.fixture(scope="module")
def kandinsky() -> LoadedModel:
    return describe_pipeline("kandinsky", make_kandinsky22_pipeline(seed=1))


def png_size(finished: Finished) -> tuple[int, int]:
    assert finished.image is not None
    return Image.open(io.BytesIO(finished.image.data)).size


async def test_a_kandinsky_run_is_watched_with_movq_previews(
    tmp_path: Path, kandinsky: LoadedModel
) -> None:
    async with running_server(ServerConfig(data_dir=tmp_path), lambda c: [kandinsky]) as server:
        async with connect(server.url) as client:
            assert client.welcome is not None
            (info,) = client.welcome.models
            accepted = await client.start(
                "q", prompt="red circle", steps=6, check_interval=2, early_stop=False
            )
            events = await client.run_events(accepted.run_id)
    assert info.preview_decoders == ("vae",) and info.default_sampler == "ddpm"
    started = events[0]
    assert isinstance(started, Started) and started.parameters.cfg == 4.0
    checks = [e for e in events if isinstance(e, Check)]
    assert [c.step for c in checks] == [2, 4, 6] and all(c.preview for c in checks)
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.reason == "completed"
    assert finished.steps_run == 6 and png_size(finished) == (32, 32)


async def test_a_kandinsky_run_takes_a_cfg_change_and_stops_cleanly(
    tmp_path: Path, kandinsky: LoadedModel
) -> None:
    async with running_server(ServerConfig(data_dir=tmp_path), lambda c: [kandinsky]) as server:
        async with connect(server.url) as client:
            accepted = await client.start(
                "q", prompt="red circle", steps=LONG, check_interval=3, early_stop=False,
                sampler="euler",
            )  # fmt: skip
            run_id, token = accepted.run_id, accepted.control_token
            await client.event(run_id, Progress)
            await client.send(Set("c", run_id, token, cfg=6.5))
            changed = await client.reply_to("c")
            await client.event(run_id, Check)
            await client.send(Stop("s", run_id, token))
            stopped = await client.reply_to("s")
            events = await client.run_events(run_id)
    assert isinstance(changed, Applied) and changed.changes[0].new == 6.5
    later = [e for e in events if isinstance(e, Check) and e.step > changed.step]
    assert later and all(c.cfg == 6.5 for c in later)
    assert isinstance(stopped, Applied) and stopped.stop == "finish" and stopped.step < LONG
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.error is None
    tail = tail_length(LONG - stopped.step)
    assert finished.reason == "stopped" and finished.steps_run == stopped.step + tail
    assert png_size(finished) == (32, 32)
