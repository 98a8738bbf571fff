"""The loop the engine drives over a DDPM or DDIM pipeline's own UNet and scheduler: the same
image as the pipeline's own loop, bit for bit, and a step callback with ``interrupt``."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from tiny_models import Recorder, make_ddim_pipeline, make_ddpm_pipeline

from stepwatch.protocol import ErrorCode, Finished, RunParameters, SearchSettings
from stepwatch.server.engine.control import RunControl
from stepwatch.server.engine.driven_loop import DrivenLoop, drive
from stepwatch.server.engine.errors import ModelError, ParamError
from stepwatch.server.engine.model import Family, describe_pipeline
from stepwatch.server.engine.monitor import run_monitored
from stepwatch.server.engine.params import RequestedParams
from stepwatch.server.engine.verifiers import VerifierRegistry


def images(pipeline: Any, seed: int, **options: Any) -> torch.Tensor:
    generator = torch.Generator("cpu").manual_seed(seed)
    output = pipeline(generator=generator, num_inference_steps=6, output_type="pt", **options)
    result: torch.Tensor = output.images
    return result


@pytest.mark.parametrize(
    ("make", "options"),
    [(make_ddpm_pipeline, {}), (make_ddim_pipeline, {}), (make_ddim_pipeline, {"eta": 0.7})],
    ids=["ddpm", "ddim", "ddim-eta"],
)
def test_a_lone_driven_run_is_the_pipelines_own_image_bit_for_bit(
    make: Any, options: dict[str, Any]
) -> None:
    pipeline = make(seed=1)
    own = images(pipeline, 11, **options)
    driven = images(DrivenLoop(pipeline), 11, **options)
    watched = images(DrivenLoop(pipeline), 11, callback_on_step_end=lambda *a: {}, **options)
    assert torch.equal(driven, own) and torch.equal(watched, own)
    # The generator matters: another seed is another image (stochastic steps included).
    assert not torch.equal(images(DrivenLoop(pipeline), 12, **options), own)


def test_the_callback_sees_every_step_and_its_latents_and_interrupt_end_the_loop() -> None:
    loop = DrivenLoop(make_ddpm_pipeline())
    seen: list[tuple[int, tuple[int, ...]]] = []

    def on_step(pipe: Any, index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        seen.append((index, tuple(tensors["latents"].shape)))
        if index == 2:
            pipe._interrupt = True
            return {"latents": torch.ones_like(tensors["latents"])}
        return {}

    out = loop(num_inference_steps=6, output_type="pt", callback_on_step_end=on_step)
    assert seen == [(0, (1, 3, 8, 8)), (1, (1, 3, 8, 8)), (2, (1, 3, 8, 8))]
    # The latents the callback handed back are what the loop decoded: (1 / 2 + 0.5) = 1.
    assert torch.equal(out.images, torch.ones(1, 3, 8, 8)) and loop.interrupt
    loop(num_inference_steps=2, output_type="pt")  # a new call starts uninterrupted
    assert not loop.interrupt


def test_the_loop_takes_only_latents_as_callback_tensors() -> None:
    with pytest.raises(ValueError, match="must be \\['latents'\\]"):
        DrivenLoop(make_ddpm_pipeline())(callback_on_step_end_tensor_inputs=["prompt_embeds"])


def test_ddpm_and_ddim_pipelines_load_as_fixed_size_unguided_pixel_models() -> None:
    model = describe_pipeline("ddim", make_ddim_pipeline())
    assert isinstance(model.pipeline, DrivenLoop) and drive(model.pipeline) is model.pipeline
    assert model.family is Family.PIXEL and tuple(model.decoders) == ("identity",)
    assert model.defaults.sampler == "ddim" and model.defaults.steps == 50
    assert model.fixed_size and not model.guided and not model.guidance_live
    parameters: RunParameters = model.resolve(RequestedParams(prompt="anything")).parameters
    assert parameters.cfg == 1.0 and (parameters.width, parameters.height) == (8, 8)
    with pytest.raises(ParamError, match="no classifier-free guidance") as refused:
        model.resolve(RequestedParams(prompt="a cat", cfg=4.0))
    assert refused.value.field == "cfg" and refused.value.code is ErrorCode.INVALID_VALUE


def test_another_pipeline_without_a_step_callback_is_still_refused_saying_why() -> None:
    class OwnLoopPipeline:
        def __call__(self, num_inference_steps: int = 10) -> None: ...

    with pytest.raises(ModelError, match="OwnLoopPipeline takes no callback_on_step_end.*"
                       "only for DDPMPipeline, DDIMPipeline"):  # fmt: skip
        describe_pipeline("own", OwnLoopPipeline())


def test_a_prune_search_reindexes_the_driven_loops_batch() -> None:
    # The loop's only batch tensor is the sample the callback sees, so a search may shrink it.
    model = describe_pipeline("ddpm", make_ddpm_pipeline())
    request = RequestedParams(
        "a cat", seed=1, steps=8, check_interval=2, early_stop=False, candidates=4,
        search=SearchSettings(strategy="prune"),
    )  # fmt: skip
    result = run_monitored(
        model, model.resolve(request), VerifierRegistry(), RunControl(), Recorder()
    )
    assert isinstance(result, Finished) and result.reason == "completed", result.error
    fates = sorted(c.fate for c in result.candidates)
    assert fates == ["chosen", "pruned", "pruned", "pruned"] and result.image is not None


def test_a_list_of_prompts_sizes_the_batch_one_image_each() -> None:
    # Runs batched together pass one prompt each; the unconditional model makes one image each.
    loop = DrivenLoop(make_ddpm_pipeline())
    out = loop(prompt=["a", "b", "c"], num_inference_steps=2, output_type="pt")
    assert out.images.shape == (3, 3, 8, 8)
    assert loop(prompt="a", num_inference_steps=2, output_type="pt").images.shape[0] == 1
