"""Kandinsky 2.2 text-to-image, watched: the prior, then a decoder loop the engine drives.

``KandinskyV22CombinedPipeline`` runs a prior (text to CLIP image embeddings) and then the
decoder (``KandinskyV22Pipeline``: a UNet conditioned on those embeddings, decoded by MoVQ). Its
own call cannot be watched as it is: the run's scheduler would not reach the decoder (the
combined pipeline hands the decoder its own reference at construction), ``latents`` go to the
prior rather than the decoder, the decoder's loop never calls ``scale_model_input`` (wrong for
Euler-type samplers), it has no ``interrupt``, and its ``"pt"`` output stays in ``[-1, 1]``.

:class:`PriorDecoderLoop` calls the combined pipeline's prior as the combined pipeline does, then
runs the decoder's loop itself over the decoder's own UNet, scheduler and MoVQ, operation for
operation as ``KandinskyV22Pipeline`` does (the same starting noise from the same generator, the
same guidance arithmetic on the learned-variance output), adding ``scale_model_input`` (the
identity for the DDPM and DDIM schedulers these models ship with), a ``callback_on_step_end``
after every step and an ``interrupt`` property. The guidance scale is read at every step, so a
CFG change applies from the next step; whether guidance is on is decided once per run, as the
engine requires (see :func:`~.policy.cfg_refusal`). A call without a callback returns the
combined pipeline's own image for the same generator (the tests check this bit for bit).

Every output type is in ``[0, 1]`` (``"pt"`` too, as the engine reads images); previews decode
the x0 estimate with MoVQ (:class:`MovqPreview`, offered as ``vae``). The prior's steps and
guidance are the combined pipeline's defaults (25 and 4.0), fixed for the model.

The decoder alone (``KandinskyV22Pipeline``) takes image embeddings, not a prompt, and is
refused at load (see :mod:`.driven_loop`).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import ImagePipelineOutput
from diffusers.pipelines.kandinsky2_2.pipeline_kandinsky2_2 import downscale_height_and_width

__all__ = ["MovqPreview", "PriorDecoderLoop"]

_LEARNED_VARIANCE = ("learned", "learned_range")


class MovqPreview:
    """x0 decoded by the model's own MoVQ, as the decoder decodes its result."""

    name = "vae"

    def __init__(self, movq: Any) -> None:
        self.movq = movq

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        images: torch.Tensor = self.movq.decode(x0.to(self.movq.dtype), force_not_quantize=True)[
            "sample"
        ]
        return (images.float() / 2 + 0.5).clamp(0.0, 1.0)


class PriorDecoderLoop:
    """A ``KandinskyV22CombinedPipeline`` presented as a watchable text-to-image pipeline.

    ``unet``, ``scheduler`` (settable: a run swaps the decoder's), ``movq``, ``device`` and
    ``dtype`` are the combined pipeline's; ``pipeline`` is the combined pipeline itself.
    """

    _callback_tensor_inputs = ["latents"]
    prior_steps = 25
    prior_guidance_scale = 4.0

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self._interrupt = False
        self._guidance_scale = 4.0
        self.vae_scale_factor = pipeline.decoder_pipe.movq_scale_factor
        self.own_preview_decoder = MovqPreview(pipeline.movq)

    def __repr__(self) -> str:
        return f"PriorDecoderLoop({type(self.pipeline).__name__})"

    @property
    def unet(self) -> Any:
        return self.pipeline.decoder_pipe.unet

    @property
    def movq(self) -> Any:
        return self.pipeline.decoder_pipe.movq

    @property
    def scheduler(self) -> Any:
        return self.pipeline.decoder_pipe.scheduler

    @scheduler.setter
    def scheduler(self, scheduler: Any) -> None:
        self.pipeline.decoder_pipe.scheduler = scheduler

    @property
    def device(self) -> torch.device:
        device: torch.device = self.pipeline.device
        return device

    @property
    def dtype(self) -> torch.dtype:
        dtype: torch.dtype = self.pipeline.dtype
        return dtype

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1

    @property
    def interrupt(self) -> bool:
        """Set by a step callback to end the decoder's loop after that step."""
        return self._interrupt

    def set_progress_bar_config(self, **options: Any) -> None:
        self.pipeline.set_progress_bar_config(**options)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        height: int = 512,
        width: int = 512,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Any = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> Any:
        """Generate images for ``prompt``: the prior's embeddings, then ``num_inference_steps``
        decoder steps, calling ``callback_on_step_end(self, i, t, {"latents": latents})`` after
        every one; a ``latents`` it returns replaces the decoder's. ``latents`` replaces the
        decoder's starting noise. Returns an ``ImagePipelineOutput`` (or a tuple)."""
        inputs = list(callback_on_step_end_tensor_inputs or ["latents"])
        unknown = [name for name in inputs if name not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs must be ['latents'], not {unknown}"
            )
        from .driven_loop import step_options

        self._interrupt = False
        self._guidance_scale = guidance_scale
        decoder = self.pipeline.decoder_pipe
        device = self.pipeline._execution_device
        image_embeds, negative_embeds = self.pipeline.prior_pipe(
            prompt=prompt,
            negative_prompt=negative_prompt,
            num_images_per_prompt=num_images_per_prompt,
            num_inference_steps=self.prior_steps,
            generator=generator,
            guidance_scale=self.prior_guidance_scale,
            output_type="pt",
            return_dict=False,
        )
        unet, scheduler = decoder.unet, decoder.scheduler
        batch = image_embeds.shape[0]
        guided = self.do_classifier_free_guidance  # decided once: the batch depends on it
        if guided:
            image_embeds = torch.cat([negative_embeds, image_embeds]).to(device, unet.dtype)
        scheduler.set_timesteps(num_inference_steps, device=device)
        size = downscale_height_and_width(height, width, decoder.movq_scale_factor)  # type: ignore[no-untyped-call]
        shape = (batch, unet.config.in_channels, *size)
        latents = decoder.prepare_latents(
            shape, image_embeds.dtype, device, generator, latents, scheduler
        )
        channels = latents.shape[1]
        learned = scheduler.config.get("variance_type") in _LEARNED_VARIANCE
        options = step_options(scheduler, generator, 0.0)
        for i, t in enumerate(scheduler.timesteps):
            model_input = torch.cat([latents] * 2) if guided else latents
            noise_pred = unet(
                sample=scheduler.scale_model_input(model_input, t),
                timestep=t,
                encoder_hidden_states=None,
                added_cond_kwargs={"image_embeds": image_embeds},
                return_dict=False,
            )[0]
            if guided:
                noise_pred, variance_pred = noise_pred.split(channels, dim=1)
                uncond, text = noise_pred.chunk(2)
                _, variance_text = variance_pred.chunk(2)
                noise_pred = uncond + self.guidance_scale * (text - uncond)
                noise_pred = torch.cat([noise_pred, variance_text], dim=1)
            if not learned:
                noise_pred, _ = noise_pred.split(channels, dim=1)
            latents = scheduler.step(noise_pred, t, latents, **options)[0]
            if callback_on_step_end is not None:
                outputs = callback_on_step_end(self, i, t, {"latents": latents})
                latents = outputs.pop("latents", latents)
            if self._interrupt:
                break
        image = latents if output_type == "latent" else self._decode(latents, output_type)
        self.pipeline.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)  # type: ignore[no-untyped-call]

    def _decode(self, latents: torch.Tensor, output_type: str) -> Any:
        decoder = self.pipeline.decoder_pipe
        image = decoder.movq.decode(latents, force_not_quantize=True)["sample"]
        image = (image * 0.5 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return image
        array = image.cpu().permute(0, 2, 3, 1).float().numpy()
        return decoder.numpy_to_pil(array) if output_type == "pil" else array
