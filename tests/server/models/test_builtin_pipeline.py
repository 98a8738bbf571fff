"""The shipped model as a diffusers pipeline: the conventions the engine relies on."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler
from PIL import Image

from stepwatch.server.models.builtin import Judge, PromptError, ShapesPipeline

STEPS = 8


def _seed(value: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(value)


class UnetCalls:
    """Records the batch size of every UNet evaluation (a forward hook on the real UNet)."""

    def __init__(self, pipe: ShapesPipeline) -> None:
        self.batches: list[int] = []
        self._handle = pipe.unet.register_forward_hook(self._record)

    def _record(self, module: Any, args: tuple[Any, ...], output: Any) -> None:
        self.batches.append(int(args[0].shape[0]))

    def __enter__(self) -> UnetCalls:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()


def test_judge_agrees_with_the_prompt_at_default_settings(
    pipe: ShapesPipeline, judge: Judge
) -> None:
    prompts = [
        "small red triangle on a dark background",
        "large blue circle on a light background",
        "large green square on a dark background",
        "small yellow cross on a light background",
    ]
    images = pipe(prompts, num_images_per_prompt=2, generator=_seed(1), output_type="pt").images
    agreed = [
        judge.agreement(images[2 * i : 2 * i + 2], prompt).joint for i, prompt in enumerate(prompts)
    ]
    assert sum(agreed) / len(agreed) >= 0.75


def test_output_types(pipe: ShapesPipeline) -> None:
    def run(kind: str) -> Any:
        return pipe("red circle", num_inference_steps=STEPS, generator=_seed(), output_type=kind)

    pil, array, tensor, latent = (run(k).images for k in ("pil", "np", "pt", "latent"))
    assert isinstance(pil[0], Image.Image) and pil[0].size == (32, 32)
    assert array.shape == (1, 32, 32, 3) and 0 <= array.min() and array.max() <= 1
    assert tensor.shape == (1, 3, 32, 32) and 0 <= tensor.min() and tensor.max() <= 1
    assert latent.shape == (1, 3, 32, 32)
    # "latent" is the raw [-1, 1] sample; the others are its post-processed [0, 1] form.
    torch.testing.assert_close(tensor, (latent / 2 + 0.5).clamp(0, 1))
    np.testing.assert_allclose(array[0], tensor[0].permute(1, 2, 0).numpy(), atol=1e-6)
    assert np.asarray(pil[0]).tolist() == (array[0] * 255).round().astype(np.uint8).tolist()
    with pytest.raises(ValueError, match="output_type"):
        run("jpeg")


def test_return_dict_false_returns_a_tuple(pipe: ShapesPipeline) -> None:
    result = pipe("circle", num_inference_steps=2, output_type="np", return_dict=False)
    assert isinstance(result, tuple) and result[0].shape == (1, 32, 32, 3)


def test_num_images_per_prompt(pipe: ShapesPipeline) -> None:
    images = pipe(
        ["red circle", "blue square"],
        num_images_per_prompt=3,
        num_inference_steps=STEPS,
        generator=_seed(),
        output_type="pt",
    ).images
    assert images.shape == (6, 3, 32, 32)
    assert not torch.equal(images[0], images[1])


def test_given_latents_replace_the_generator_noise(pipe: ShapesPipeline) -> None:
    noise = torch.randn((2, 3, 32, 32), generator=_seed(7))
    drawn = pipe(
        "red circle",
        num_images_per_prompt=2,
        num_inference_steps=STEPS,
        generator=_seed(7),
        output_type="latent",
    ).images
    given = pipe(
        "red circle",
        num_images_per_prompt=2,
        num_inference_steps=STEPS,
        latents=noise.clone(),
        output_type="latent",
    ).images
    torch.testing.assert_close(given, drawn)
    with pytest.raises(ValueError, match="latents have shape"):
        pipe("red circle", num_inference_steps=STEPS, latents=noise)


def test_callback_sees_and_may_replace_step_tensors(pipe: ShapesPipeline) -> None:
    seen: list[tuple[int, tuple[str, ...]]] = []

    def callback(p: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        seen.append((i, tuple(sorted(kwargs))))
        return {"latents": torch.zeros_like(kwargs["latents"])} if i == STEPS - 1 else {}

    inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]
    result = pipe(
        "red circle",
        num_inference_steps=STEPS,
        output_type="latent",
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=inputs,
    )
    assert [i for i, _ in seen] == list(range(STEPS))
    assert seen[0][1] == tuple(sorted(inputs))
    assert torch.count_nonzero(result.images) == 0
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        pipe("circle", callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["noise"])


def test_interrupt_stops_calling_the_unet(pipe: ShapesPipeline) -> None:
    def stop_after_third(p: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if i == 2:
            p._interrupt = True
        return {}

    with UnetCalls(pipe) as calls:
        pipe("red circle", num_inference_steps=STEPS, callback_on_step_end=stop_after_third)
    assert len(calls.batches) == 3
    assert pipe.interrupt
    assert pipe.num_timesteps == STEPS
    pipe("red circle", num_inference_steps=2)
    assert not pipe.interrupt  # every call starts uninterrupted


def test_guidance_changed_mid_run_applies_to_the_following_steps(pipe: ShapesPipeline) -> None:
    def trajectory(change_at: int | None) -> tuple[list[torch.Tensor], list[int]]:
        latents: list[torch.Tensor] = []

        def callback(p: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            latents.append(kwargs["latents"].clone())
            if i == change_at:
                p._guidance_scale = 4.0
            return {}

        with UnetCalls(pipe) as calls:
            pipe(
                "blue triangle",
                num_inference_steps=STEPS,
                guidance_scale=1.0,
                generator=_seed(3),
                callback_on_step_end=callback,
            )
        return latents, calls.batches

    steady, steady_batches = trajectory(None)
    raised, raised_batches = trajectory(3)
    # Guidance 1 evaluates only the conditional side; from step 4 on both sides are evaluated.
    assert steady_batches == [1] * STEPS
    assert raised_batches == [1] * 4 + [2] * (STEPS - 4)
    for before, after in zip(steady[:4], raised[:4], strict=True):
        torch.testing.assert_close(before, after)
    assert not torch.allclose(steady[4], raised[4])
    assert pipe.guidance_scale == 4.0 and pipe.do_classifier_free_guidance


@pytest.mark.parametrize(
    "scheduler_class", [DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler]
)
def test_swapped_schedulers_give_their_own_valid_images(
    pipe: ShapesPipeline, judge: Judge, scheduler_class: type
) -> None:
    original = pipe.scheduler
    default = pipe(
        "large red square on a dark background",
        num_inference_steps=16,
        generator=_seed(2),
        output_type="pt",
    ).images
    try:
        pipe.scheduler = scheduler_class.from_config(original.config)
        images = pipe(
            "large red square on a dark background",
            num_inference_steps=16,
            generator=_seed(2),
            output_type="pt",
        ).images
    finally:
        pipe.scheduler = original
    assert isinstance(original, DPMSolverMultistepScheduler)
    if scheduler_class is not DPMSolverMultistepScheduler:
        assert not torch.allclose(images, default, atol=1e-3)
    assert judge.agreement(images, "large red square on a dark background").joint == 1.0


def test_negative_prompt_steers_away(pipe: ShapesPipeline, judge: Judge) -> None:
    images = pipe(
        "red circle",
        negative_prompt="dark",
        num_images_per_prompt=4,
        generator=_seed(4),
        output_type="pt",
    ).images
    readings = [reading.background for reading in judge.predict(images)]
    assert readings.count("light") >= 3
    with pytest.raises(ValueError, match="negative_prompt has 2 entries"):
        pipe("red circle", negative_prompt=["dark", "light"])


def test_prompt_embeds_replace_the_prompt(pipe: ShapesPipeline) -> None:
    embeds, negative = pipe.encode_prompt("red circle", torch.device("cpu"))
    by_text = pipe("red circle", num_inference_steps=STEPS, generator=_seed(), output_type="latent")
    by_embeds = pipe(
        prompt_embeds=embeds, num_inference_steps=STEPS, generator=_seed(), output_type="latent"
    )
    torch.testing.assert_close(by_text.images, by_embeds.images)
    torch.testing.assert_close(negative, pipe.encode_prompt("", torch.device("cpu"))[0])


def test_malformed_prompts_get_the_vocabulary_error(pipe: ShapesPipeline) -> None:
    with pytest.raises(PromptError, match="unknown word 'dog'.*shape: circle"):
        pipe("a red dog")
    with pytest.raises(PromptError, match="two values of shape"):
        pipe("circle square", negative_prompt="red")
    with pytest.raises(PromptError):
        pipe("red circle", negative_prompt="very dark")


def test_bad_sizes_and_step_counts_are_rejected(pipe: ShapesPipeline) -> None:
    with pytest.raises(ValueError, match="multiples of 4"):
        pipe("red circle", height=30)
    with pytest.raises(ValueError, match="at least 1"):
        pipe("red circle", num_inference_steps=0)
