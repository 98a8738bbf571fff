"""The engine on the built-in shapes model with its own verifier and the held-out judge."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import Recorder

from stepwatch.protocol import ErrorCode, Progress
from stepwatch.server.engine.control import RunControl
from stepwatch.server.engine.errors import ParamError
from stepwatch.server.engine.model import Family, LoadedModel
from stepwatch.server.engine.monitor import run_monitored
from stepwatch.server.engine.params import RequestedParams
from stepwatch.server.engine.verifiers import VerifierRegistry
from stepwatch.server.models.builtin import Judge
from stepwatch.server.models.loading import DEFAULT_MODEL, ModelSpec, load_model


def registry_for(model: LoadedModel) -> VerifierRegistry:
    registry = VerifierRegistry()
    registry.register_model_verifiers(model.verifiers)
    return registry


def as_tensor(png: bytes) -> torch.Tensor:
    pixels = np.array(Image.open(io.BytesIO(png)).convert("RGB"))
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255


def test_the_builtin_model_is_described_as_a_pixel_model(shapes_model: LoadedModel) -> None:
    assert shapes_model.family is Family.PIXEL and list(shapes_model.decoders) == ["identity"]
    assert shapes_model.defaults.verifier == "adherence"
    assert shapes_model.fixed_size and shapes_model.guidance_live
    assert shapes_model.vocabulary is not None
    assert "triangle" in shapes_model.vocabulary.attributes["shape"]


def test_adherence_scores_each_attribute_the_prompt_names(
    shapes_model: LoadedModel, recorder: Recorder
) -> None:
    requested = RequestedParams("large blue square", seed=0, check_interval=5, early_stop=False)
    params = shapes_model.resolve(requested)
    result = run_monitored(shapes_model, params, registry_for(shapes_model), RunControl(), recorder)
    assert result.reason == "completed" and params.parameters.verifier == "adherence"
    for check in recorder.checks:
        assert set(check.components) == {"shape", "colour", "size", "clean"}
        attributes = [v for k, v in check.components.items() if k != "clean"]
        product = float(np.prod(attributes))
        assert abs(check.score - product) < 1e-6


def test_early_stopping_ends_early_and_the_judge_still_agrees(
    shapes_model: LoadedModel,
) -> None:
    judge = Judge.load("cpu")
    stopped, agreed = 0, 0
    prompts = ["red circle", "green square", "blue triangle", "yellow cross"]
    for prompt in prompts:
        requested = RequestedParams(prompt, seed=1, check_interval=2, patience=2, scale_factor=1.0)
        events = Recorder()
        result = run_monitored(
            shapes_model, shapes_model.resolve(requested), registry_for(shapes_model),
            RunControl(), events,
        )  # fmt: skip
        assert result.image is not None and result.error is None
        if result.reason == "early_stop":
            stopped += 1
            assert result.steps_run < events.of(Progress)[0].total
            assert result.history[-1].decision == "early_stop"
        [matches] = judge.matches(as_tensor(result.image.data), prompt)
        agreed += all(matches.values())
    assert stopped >= 3, "the built-in model should satisfy its verifier early on easy prompts"
    assert agreed >= 3, "an early-stopped image should still show what was asked"


def test_a_prompt_outside_the_vocabulary_is_an_invalid_parameter(
    shapes_model: LoadedModel, recorder: Recorder
) -> None:
    with pytest.raises(ParamError) as refused:
        shapes_model.resolve(RequestedParams("a purple dragon"))
    assert refused.value.code is ErrorCode.INVALID_PROMPT and refused.value.field == "prompt"
    assert "dragon" in refused.value.message
    assert "circle" in refused.value.message  # the message lists the vocabulary


def test_nan_in_the_builtin_model_fails_with_nan_detected(recorder: Recorder) -> None:
    model = load_model(ModelSpec.parse(f"{DEFAULT_MODEL},device=cpu"))
    with torch.no_grad():
        model.pipeline.unet.conv_out.bias.fill_(float("nan"))
    params = model.resolve(RequestedParams("red circle", seed=0))
    result = run_monitored(model, params, registry_for(model), RunControl(), recorder)
    assert result.error is not None and result.error.code is ErrorCode.NAN_DETECTED
    assert result.image is None and result.steps_run == 5
