"""Image-to-image, inpainting and ControlNet pipelines, served and watched through the real
server and the real client on tiny random-weight SD 1.x pipelines: each takes its uploaded input
images, runs checks with previews (an img2img run only its ``strength x steps`` steps), takes a
CFG change mid-run and stops with a clean result."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from servertools import running_server
from tiny_image_models import (
    make_controlnet_pipeline,
    make_img2img_pipeline,
    make_inpaint_pipeline,
    mask,
    picture,
)

from stepwatch.client import Check, Progress, Session, connect
from stepwatch.server.config import ServerConfig
from stepwatch.server.engine.finish import tail_length
from stepwatch.server.engine.model import LoadedModel, describe_pipeline

pytestmark = pytest.mark.anyio
LONG = 600  # steps of a run that a test stops long before its end


@pytest.fixture(scope="module")
def image_models() -> list[LoadedModel]:
    return [
        describe_pipeline("img2img", make_img2img_pipeline(seed=3)),
        describe_pipeline("inpaint", make_inpaint_pipeline(seed=4)),
        describe_pipeline("controlnet", make_controlnet_pipeline(seed=5)),
    ]


async def inputs_of(session: Session, model: str) -> dict[str, Any]:
    """The input images each model takes, uploaded."""
    image = (await session.upload(picture())).id
    if model == "img2img":
        return {"image": image, "strength": 0.5}
    if model == "inpaint":
        return {"image": image, "mask": (await session.upload(mask())).id}
    return {"control_image": image, "control_scale": 0.8}


def size_of(png: bytes | None) -> tuple[int, int]:
    assert png is not None
    return Image.open(io.BytesIO(png)).size


@pytest.mark.parametrize("model", ["img2img", "inpaint", "controlnet"])
async def test_a_run_takes_its_input_images_and_is_checked_with_previews(
    tmp_path: Path, image_models: list[LoadedModel], model: str
) -> None:
    async with running_server(ServerConfig(data_dir=tmp_path), lambda c: image_models) as server:
        async with connect(server.url) as session:
            inputs = await inputs_of(session, model)
            run = await session.generate(
                "red circle", model=model, steps=8, check_interval=2, early_stop=False, **inputs
            )
            events = [event async for event in run]
            result = await run.result()
    # img2img at strength 0.5 re-noises half the image: it runs 4 of its 8 steps.
    steps = 4 if model == "img2img" else 8
    checks = [e for e in events if isinstance(e, Check)]
    assert [c.step for c in checks] == list(range(2, steps + 1, 2))
    assert all(c.preview is not None for c in checks)
    assert {e.total for e in events if isinstance(e, Progress)} == {steps}
    assert result.reason == "completed" and result.steps_run == steps and result.error is None
    assert size_of(result.png) == (32, 32)
    parameters = result.parameters
    assert parameters is not None
    assert {k: getattr(parameters, k) for k in inputs} == inputs
    expected_strength = {"img2img": 0.5, "inpaint": 1.0, "controlnet": None}[model]
    assert parameters.strength == expected_strength
    assert parameters.control_scale == (0.8 if model == "controlnet" else None)


@pytest.mark.parametrize("model", ["img2img", "inpaint", "controlnet"])
async def test_a_run_takes_a_cfg_change_and_stops_with_a_clean_result(
    tmp_path: Path, image_models: list[LoadedModel], model: str
) -> None:
    async with running_server(ServerConfig(data_dir=tmp_path), lambda c: image_models) as server:
        async with connect(server.url) as session:
            inputs = await inputs_of(session, model)
            run = await session.generate(
                "red circle", model=model, steps=LONG, check_interval=2, early_stop=False,
                **inputs,
            )  # fmt: skip
            async for event in run:
                if isinstance(event, Check):
                    break
            changed = await run.set(cfg=5.0)
            stopped = await run.stop()
            result = await run.result()
    assert [(c.setting, c.new) for c in changed.changes] == [("cfg", 5.0)]
    steps = LONG // 2 if model == "img2img" else LONG
    assert stopped.stop == "finish" and stopped.step < steps
    # A finish stop re-plans the rest into a short tail to zero noise: a clean image.
    assert result.reason == "stopped" and result.error is None
    assert result.steps_run == stopped.step + tail_length(steps - stopped.step)
    assert size_of(result.png) == (32, 32)
    assert result.history[-1].cfg == 5.0 or result.history[-1].step < changed.step
