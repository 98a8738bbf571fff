"""``ShapesPipeline``: the built-in model as a diffusers pipeline.

It follows the conventions of diffusers' text-to-image pipelines so that the engine drives it
exactly like any other model: ``callback_on_step_end`` with ``callback_on_step_end_tensor_inputs``,
the ``interrupt`` property checked before every step, ``guidance_scale`` read from the pipeline at
every step (a callback that sets ``pipe._guidance_scale`` changes the steps that follow, and may
even turn guidance on or off mid-run), a swappable ``scheduler``, ``num_images_per_prompt``,
``generator``, ``latents`` and ``output_type`` "pil", "np", "pt" or "latent".

The model works in pixel space: its "latents" are 3×32×32 RGB images in [-1, 1], so the preview
decoder is the identity. "pil", "np" and "pt" outputs are in [0, 1] like every pipeline's
post-processing; "latent" returns the raw [-1, 1] sample.

Prompts are parsed by :func:`~stepwatch.server.models.builtin.vocabulary.parse_prompt`. The
negative prompt names attributes to steer away from: its encoding replaces the all-omitted
condition as the other side of classifier-free guidance ("red circle", negative "dark" pushes
towards a light background). With no negative prompt the guidance contrasts against the
unconditional (all-omitted) model.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, UNet2DModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils.torch_utils import randn_tensor

from stepwatch.server.models.builtin.encoder import AttributeEncoder, prompt_indices
from stepwatch.server.models.builtin.vocabulary import parse_prompt

DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 3.0
OUTPUT_TYPES = ("pil", "np", "pt", "latent")

StepCallback = Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]]


def weights_dir() -> Path:
    """Return the folder of the shipped weights (a diffusers pipeline folder)."""
    return Path(str(files("stepwatch.server.models.builtin") / "weights"))


class ShapesPipeline(DiffusionPipeline):  # type: ignore[misc]
    """Text-to-image for the built-in shapes model ("small red triangle on a dark background")."""

    model_cpu_offload_seq = "attribute_encoder->unet"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: KarrasDiffusionSchedulers,
        attribute_encoder: AttributeEncoder,
    ) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, attribute_encoder=attribute_encoder)
        self.image_processor = VaeImageProcessor(vae_scale_factor=1, do_resize=False)
        self._guidance_scale = DEFAULT_GUIDANCE
        self._interrupt = False
        self._num_timesteps = 0

    @property
    def guidance_scale(self) -> float:
        """The classifier-free guidance scale the next step will use."""
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Whether the next step evaluates the negative side too (guidance scale above 1)."""
        return self._guidance_scale > 1

    @property
    def num_timesteps(self) -> int:
        """How many denoising steps the current (or last) call runs."""
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Set ``pipe._interrupt = True`` (e.g. in a callback) to skip every remaining step."""
        return self._interrupt

    def encode_prompt(
        self,
        prompt: str | list[str],
        device: torch.device,
        num_images_per_prompt: int = 1,
        negative_prompt: str | list[str] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (prompt_embeds, negative_prompt_embeds), one row per image to generate.

        Raises :class:`~stepwatch.server.models.builtin.vocabulary.PromptError` for a prompt
        outside the vocabulary.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = _broadcast_negative(negative_prompt, len(prompts))
        rows = []
        for texts in (prompts, negatives):
            indices = prompt_indices([parse_prompt(t) for t in texts], device=device)
            embeds = self.attribute_encoder(indices).to(dtype=self.unet.dtype)
            rows.append(embeds.repeat_interleave(num_images_per_prompt, dim=0))
        return rows[0], rows[1]

    def unconditional_embeds(self, count: int, device: torch.device) -> torch.Tensor:
        """Return ``count`` rows of the all-omitted condition (classifier-free guidance's other
        side when there is no negative prompt)."""
        null = prompt_indices([parse_prompt("")] * count, device=device)
        return self.attribute_encoder(null).to(dtype=self.unet.dtype)  # type: ignore[no-any-return]

    def prepare_latents(
        self,
        shape: tuple[int, ...],
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None,
    ) -> torch.Tensor:
        """Draw the starting noise (or take ``latents``) and scale it for the scheduler."""
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {shape}")
        else:
            latents = latents.to(device=device, dtype=dtype)
        return latents * self.scheduler.init_noise_sigma  # type: ignore[no-any-return]

    def prepare_extra_step_kwargs(
        self, generator: torch.Generator | list[torch.Generator] | None, eta: float
    ) -> dict[str, Any]:
        """Pass ``eta`` and ``generator`` only to schedulers whose ``step`` accepts them."""
        accepted = set(inspect.signature(self.scheduler.step).parameters)
        extra: dict[str, Any] = {}
        if "eta" in accepted:
            extra["eta"] = eta
        if "generator" in accepted:
            extra["generator"] = generator
        return extra

    def predict_noise(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        prompt_embeds: torch.Tensor,
        negative_prompt_embeds: torch.Tensor,
    ) -> torch.Tensor:
        """Return the guided noise prediction at ``t``, reading the guidance scale now."""
        guidance = self.guidance_scale
        if not self.do_classifier_free_guidance:
            model_input = self.scheduler.scale_model_input(latents, t)
            return self.unet(model_input, t, class_labels=prompt_embeds).sample  # type: ignore[no-any-return]
        model_input = self.scheduler.scale_model_input(torch.cat([latents, latents]), t)
        conditions = torch.cat([negative_prompt_embeds, prompt_embeds])
        noise = self.unet(model_input, t, class_labels=conditions).sample
        negative, positive = noise.chunk(2)
        return negative + guidance * (positive - negative)  # type: ignore[no-any-return]

    def check_inputs(
        self,
        height: int,
        width: int,
        num_inference_steps: int,
        callback_on_step_end_tensor_inputs: list[str],
        output_type: str = "pil",
    ) -> None:
        """Reject sizes the UNet cannot take, unknown callback tensor names and output types."""
        multiple = 2 ** (len(self.unet.config.block_out_channels) - 1)
        if height % multiple or width % multiple or height <= 0 or width <= 0:
            raise ValueError(f"height and width must be positive multiples of {multiple}")
        if num_inference_steps < 1:
            raise ValueError("num_inference_steps must be at least 1")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, not {output_type!r}")
        unknown = [
            k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs
        ]
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs has to be in {self._callback_tensor_inputs}, "
                f"but found {unknown}"
            )

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] = "",
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = DEFAULT_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepCallback
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> ImagePipelineOutput | tuple[Any]:
        """Generate images for ``prompt`` (see the module docstring for the conventions).

        ``height``/``width`` default to the trained 32×32. ``prompt_embeds`` and
        ``negative_prompt_embeds`` (N×D encoder outputs, one row per image, as
        :meth:`encode_prompt` returns them) replace the prompts when given.
        Returns an :class:`~diffusers.ImagePipelineOutput` (or ``(images,)``).
        """
        if isinstance(callback_on_step_end, PipelineCallback | MultiPipelineCallbacks):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        tensor_inputs = list(callback_on_step_end_tensor_inputs or ["latents"])
        height = height or self.unet.config.sample_size
        width = width or self.unet.config.sample_size
        self.check_inputs(height, width, num_inference_steps, tensor_inputs, output_type)
        self._guidance_scale = guidance_scale
        self._interrupt = False
        device = self._execution_device

        if prompt_embeds is None:
            prompt_embeds, encoded_negative = self.encode_prompt(
                prompt, device, num_images_per_prompt, negative_prompt
            )
            negative_prompt_embeds = _first(negative_prompt_embeds, encoded_negative)
        elif negative_prompt_embeds is None:
            negative_prompt_embeds = self.unconditional_embeds(prompt_embeds.shape[0], device)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        shape = (prompt_embeds.shape[0], self.unet.config.in_channels, height, width)
        latents = self.prepare_latents(shape, self.unet.dtype, device, generator, latents)
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)

        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                noise = self.predict_noise(latents, t, prompt_embeds, negative_prompt_embeds)
                latents = self.scheduler.step(noise, t, latents, **extra_step_kwargs).prev_sample
                if callback_on_step_end is not None:
                    current = {
                        "latents": latents,
                        "prompt_embeds": prompt_embeds,
                        "negative_prompt_embeds": negative_prompt_embeds,
                    }
                    kwargs = {k: current[k] for k in tensor_inputs}
                    outputs = callback_on_step_end(self, i, t, kwargs)
                    latents = outputs.pop("latents", latents)
                    prompt_embeds = outputs.pop("prompt_embeds", prompt_embeds)
                    negative_prompt_embeds = outputs.pop(
                        "negative_prompt_embeds", negative_prompt_embeds
                    )
                progress_bar.update()

        images = self.to_images(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    def to_images(self, latents: torch.Tensor, output_type: str = "pil") -> Any:
        """Post-process [-1, 1] samples to "pil", "np" or "pt" images in [0, 1]; "latent": as is."""
        if output_type == "latent":
            return latents
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, not {output_type!r}")
        return self.image_processor.postprocess(latents.float(), output_type=output_type)


def _first(given: torch.Tensor | None, fallback: torch.Tensor) -> torch.Tensor:
    return fallback if given is None else given


def _broadcast_negative(negative_prompt: str | list[str] | None, count: int) -> list[str]:
    if negative_prompt is None:
        return [""] * count
    if isinstance(negative_prompt, str):
        return [negative_prompt] * count
    if len(negative_prompt) != count:
        raise ValueError(
            f"negative_prompt has {len(negative_prompt)} entries for {count} prompts; "
            "give one per prompt or a single string"
        )
    return list(negative_prompt)


def load_builtin(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> ShapesPipeline:
    """Load the shipped model from the package (offline) onto ``device`` in ``dtype``."""
    # Loaded as float32 (the fp16 files upcast), then cast: from_pretrained's dtype keyword has
    # changed name across diffusers releases. No accelerate here, so say low_cpu_mem_usage=False
    # rather than have diffusers log that it falls back to it.
    pipeline = ShapesPipeline.from_pretrained(weights_dir(), low_cpu_mem_usage=False)
    if dtype != torch.float32:
        pipeline.unet.to(dtype)
        pipeline.attribute_encoder.to(dtype)
    return pipeline.to(device)  # type: ignore[no-any-return]
