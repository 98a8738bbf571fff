"""Describing a pipeline for the engine: defaults, capabilities, and resolving run parameters."""

from __future__ import annotations

import dataclasses

import pytest

from stepwatch.server.engine.errors import ParamError
from stepwatch.server.engine.model import LoadedModel, PromptVocabulary, describe_pipeline
from stepwatch.server.engine.params import RequestedParams


def test_defaults_come_from_the_pipeline(sd_model: LoadedModel, sdxl_model: LoadedModel) -> None:
    assert (sd_model.defaults.steps, sd_model.defaults.cfg) == (50, 7.5)
    assert (sdxl_model.defaults.steps, sdxl_model.defaults.cfg) == (50, 5.0)
    assert (sdxl_model.defaults.sampler, sdxl_model.defaults.scheduler) == ("euler", "normal")
    assert sd_model.guidance_live and sdxl_model.guidance_live
    assert not sd_model.fixed_size and not sd_model.flow
    assert "flow_euler" not in sd_model.samplers and "karras" in sd_model.schedulers


def test_overrides_replace_derived_defaults(sd_model: LoadedModel) -> None:
    model = describe_pipeline("tuned", sd_model.pipeline, overrides={"steps": 12, "cfg": 4.0})
    resolved = model.resolve(RequestedParams("red circle")).parameters
    assert (resolved.steps, resolved.cfg, resolved.cfg_max, resolved.min_steps) == (12, 4.0, 8.0, 6)


def test_sizes_are_free_unless_the_model_is_fixed(sd_model: LoadedModel) -> None:
    assert sd_model.resolve(RequestedParams("x", width=64, height=48)).parameters.width == 64
    fixed = describe_pipeline("fixed", sd_model.pipeline, fixed_size=True)
    with pytest.raises(ParamError, match="32x32 images only") as caught:
        fixed.resolve(RequestedParams("x", height=64))
    assert caught.value.field == "height"


def test_a_prompt_check_guards_both_prompts(sd_model: LoadedModel) -> None:
    def only_shapes(prompt: str) -> None:
        if "dog" in prompt:
            raise ValueError("unknown word 'dog'; vocabulary: circle, square")

    vocabulary = PromptVocabulary({"shape": ("circle", "square")}, "shape: circle, square")
    model = describe_pipeline(
        "shapes-ish", sd_model.pipeline, prompt_check=only_shapes, vocabulary=vocabulary
    )
    resolved = model.resolve(RequestedParams("circle", negative_prompt="square"))
    assert resolved.parameters.prompt == "circle"
    for params, field in [
        (RequestedParams("a dog"), "prompt"),
        (RequestedParams("circle", negative_prompt="dog"), "negative_prompt"),
    ]:
        with pytest.raises(ParamError, match="unknown word 'dog'") as caught:
            model.resolve(params)
        assert caught.value.field == field


def test_resolving_what_was_resolved_changes_nothing(sd_model: LoadedModel) -> None:
    once = sd_model.resolve(RequestedParams("red circle", seed=None))
    again = RequestedParams(**dataclasses.asdict(once.parameters))
    assert sd_model.resolve(again) == once


def test_cfg_max_below_the_model_default_cfg_is_refused(sd_model: LoadedModel) -> None:
    with pytest.raises(ParamError) as caught:
        sd_model.resolve(RequestedParams("x", cfg_max=5.0))
    assert caught.value.field == "cfg_max"
