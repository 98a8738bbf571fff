"""What a run's input images make of it, without torch: the size of an image-to-image run, the
steps ``strength`` leaves, and the refusals of settings a model does not take."""

from __future__ import annotations

import pytest
from PIL import Image

from stepwatch.protocol import ErrorCode
from stepwatch.server.engine.errors import ParamError
from stepwatch.server.engine.inputs import (
    InputImages,
    InputSlots,
    image_size,
    input_arguments,
    resolve_inputs,
)

IMG2IMG = InputSlots(arguments={"image": "image"}, strength=0.8)
CONTROLNET = InputSlots(arguments={"control_image": "image"}, control_scale=1.0)
ID = "ab" * 32


def test_an_init_image_sets_the_run_size_rounded_down_to_a_multiple_of_8() -> None:
    assert image_size((45, 33), None, None, fixed=True) == (40, 32)
    # A pipeline that resizes its inputs makes the size asked for.
    assert image_size((45, 33), 64, None, fixed=False) == (64, 32)
    with pytest.raises(ParamError) as refused:
        image_size((45, 33), 64, None, fixed=True)
    assert refused.value.field == "width"


def test_strength_sets_the_steps_a_run_takes_and_must_leave_one() -> None:
    image = InputImages(image=Image.new("RGB", (32, 32)))
    settings = resolve_inputs(
        IMG2IMG, {"image": ID}, image, strength=None, control_scale=None, steps=10, candidates=1
    )
    assert (settings.strength, settings.steps_run) == (0.8, 8)
    with pytest.raises(ParamError) as refused:
        resolve_inputs(
            IMG2IMG, {"image": ID}, image, strength=0.05, control_scale=None, steps=10,
            candidates=1,
        )  # fmt: skip
    assert refused.value.field == "strength"


def test_a_control_image_goes_to_the_argument_the_pipeline_names() -> None:
    control = Image.new("RGB", (32, 32))
    images = InputImages(control_image=control)
    settings = resolve_inputs(
        CONTROLNET, {"control_image": ID}, images, strength=None, control_scale=0.5, steps=4,
        candidates=1,
    )  # fmt: skip
    assert (settings.strength, settings.control_scale, settings.steps_run) == (None, 0.5, 4)
    arguments = input_arguments(CONTROLNET, images, None, 0.5)
    assert arguments == {"image": control, "controlnet_conditioning_scale": 0.5}
    with pytest.raises(ParamError) as refused:
        resolve_inputs(
            CONTROLNET, {"control_image": ID}, images, strength=0.5, control_scale=None, steps=4,
            candidates=1,
        )  # fmt: skip
    assert (refused.value.field, refused.value.code) == ("strength", ErrorCode.INVALID_VALUE)
