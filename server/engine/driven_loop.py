"""Pixel-space pipelines without a step callback, watched under a loop the engine drives.

Diffusers' ``DDPMPipeline`` and ``DDIMPipeline`` (unconditional image models denoising in pixel
space) take no ``callback_on_step_end``, so the engine could not see their steps. Their loop is
short: draw the starting noise, set the timesteps, then per timestep call the UNet and
``scheduler.step``, and finally map ``[-1, 1]`` samples to ``[0, 1]`` images. :class:`DrivenLoop`
runs that same loop over the pipeline's own UNet and scheduler and adds what a watched pipeline
offers: a ``callback_on_step_end`` after every step (with ``latents``, the current sample) and an
``interrupt`` property. The monitored run (:mod:`.monitor`) and the x0 capture (:mod:`.x0`) then
work on it unchanged: the run swaps ``scheduler`` for its own and wraps its ``step``.

The loop is the pipeline's own, operation for operation: the starting noise is drawn with
``randn_tensor`` from the caller's generator, in the UNet's dtype, on the execution device; the
scheduler's ``step`` gets the generator (DDPM's variance noise, DDIM's when ``eta`` > 0) and DDIM's
``eta`` where it takes them. A call without a callback therefore returns exactly the image the
pipeline itself returns for the same generator (the tests check this bit for bit). For the other
samplers a run may choose, the loop also scales the starting noise by the scheduler's
``init_noise_sigma`` and the UNet's input with ``scale_model_input``, as the latent pipelines do;
for DDPM and DDIM both are the identity.

These models are unconditional: they have no prompt and no classifier-free guidance. A run's
prompt goes to the verifier only (a CLIP verifier scores the image against it); the loop takes
no ``guidance_scale``, so the engine refuses a CFG other than 1 (see :mod:`.model`).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from diffusers import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from .errors import ModelError

__all__ = ["DRIVEN_PIPELINES", "DrivenLoop", "drive", "step_options"]

#: The pipeline classes whose own loop :class:`DrivenLoop` reproduces, by class name.
DRIVEN_PIPELINES = ("DDPMPipeline", "DDIMPipeline")

#: The denoising steps a run takes when it names none (``DDPMPipeline``'s own default is 1000).
DEFAULT_STEPS = 50


def drive(pipeline: Any) -> Any:
    """``pipeline`` under the loop the engine drives for it: a :class:`DrivenLoop` for one of
    :data:`DRIVEN_PIPELINES`, a :class:`~.kandinsky.PriorDecoderLoop` for Kandinsky 2.2's
    combined pipeline; any other pipeline unchanged. Raises :class:`~.errors.ModelError` for
    the Kandinsky 2.2 decoder alone, which takes image embeddings rather than a prompt."""
    kind = type(pipeline).__name__
    if kind in DRIVEN_PIPELINES:
        return DrivenLoop(pipeline)
    if kind == "KandinskyV22CombinedPipeline":
        from .kandinsky import PriorDecoderLoop

        return PriorDecoderLoop(pipeline)
    if kind == "KandinskyV22Pipeline":
        raise ModelError(
            "KandinskyV22Pipeline (the Kandinsky 2.2 decoder alone) takes image embeddings from "
            "a prior, not a prompt; serve the combined pipeline (prior and decoder): the folder "
            "AutoPipelineForText2Image.from_pretrained(SOURCE).save_pretrained(FOLDER) writes"
        )
    if kind == "Kandinsky3Pipeline":
        raise ModelError(
            "Kandinsky3Pipeline is not supported yet: its output_type='pt' images stay in "
            "[-1, 1] and the engine reads images in [0, 1] (no test model for it yet)"
        )
    return pipeline


class DrivenLoop:
    """A ``DDPMPipeline`` or ``DDIMPipeline`` presented as a pipeline with a step callback.

    ``unet``, ``scheduler`` (settable: a run swaps it), ``device`` and ``dtype`` are the wrapped
    pipeline's; ``pipeline`` is the wrapped pipeline itself.
    """

    _callback_tensor_inputs = ["latents"]

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self._interrupt = False

    def __repr__(self) -> str:
        return f"DrivenLoop({type(self.pipeline).__name__})"

    @property
    def unet(self) -> Any:
        return self.pipeline.unet

    @property
    def scheduler(self) -> Any:
        return self.pipeline.scheduler

    @scheduler.setter
    def scheduler(self, scheduler: Any) -> None:
        self.pipeline.scheduler = scheduler

    @property
    def device(self) -> torch.device:
        device: torch.device = self.pipeline.device
        return device

    @property
    def dtype(self) -> torch.dtype:
        dtype: torch.dtype = self.pipeline.dtype
        return dtype

    @property
    def interrupt(self) -> bool:
        """Set by a step callback to end the loop after that step."""
        return self._interrupt

    def set_progress_bar_config(self, **options: Any) -> None:
        self.pipeline.set_progress_bar_config(**options)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int = DEFAULT_STEPS,
        eta: float = 0.0,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Any = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> Any:
        """Generate ``num_images_per_prompt`` images, calling ``callback_on_step_end(self, i, t,
        {"latents": sample})`` after every step; a ``latents`` it returns replaces the sample.

        The model is unconditional: ``prompt`` only sizes the batch, ``num_images_per_prompt``
        images per prompt of a list (as the text-to-image pipelines count them, so that runs
        batched together, one prompt each, get one image each). ``eta`` applies to schedulers
        that take it (DDIM). ``latents`` replaces the drawn
        starting noise. Returns the wrapped pipeline's ``ImagePipelineOutput`` (or a tuple).
        """
        inputs = list(callback_on_step_end_tensor_inputs or ["latents"])
        unknown = [name for name in inputs if name not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs must be ['latents'], not {unknown}"
            )
        self._interrupt = False
        unet, scheduler = self.pipeline.unet, self.pipeline.scheduler
        device = self.pipeline._execution_device
        size = unet.config.sample_size
        prompts = len(prompt) if isinstance(prompt, list) else 1
        shape = (prompts * num_images_per_prompt, unet.config.in_channels, *_pair(size))
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=unet.dtype)
        else:
            latents = latents.to(device, unet.dtype)
        latents = latents * scheduler.init_noise_sigma
        scheduler.set_timesteps(num_inference_steps, device=device)
        options = step_options(scheduler, generator, eta)
        for i, t in enumerate(scheduler.timesteps):
            model_output = unet(scheduler.scale_model_input(latents, t), t).sample
            latents = scheduler.step(model_output, t, latents, **options).prev_sample
            if callback_on_step_end is not None:
                outputs = callback_on_step_end(self, i, t, {"latents": latents})
                latents = outputs.pop("latents", latents)
            if self._interrupt:
                break
        image = (latents / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            image = image.cpu().permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                image = self.pipeline.numpy_to_pil(image)
        self.pipeline.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)  # type: ignore[no-untyped-call]


def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, ...]:
    return (size, size) if isinstance(size, int) else tuple(size)


def step_options(
    scheduler: Any, generator: torch.Generator | list[torch.Generator] | None, eta: float
) -> dict[str, Any]:
    """The keyword arguments of ``scheduler.step`` the pipelines pass where the scheduler
    takes them: DDIM's ``eta``, and the generator for the noise a stochastic step adds."""
    accepted = inspect.signature(scheduler.step).parameters
    options: dict[str, Any] = {}
    if "eta" in accepted:
        options["eta"] = eta
    if "generator" in accepted:
        options["generator"] = generator
    return options
