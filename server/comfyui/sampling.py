"""Monitored sampling on ComfyUI's own sampler: :func:`sample_monitored`.

It runs ``comfy.sample.sample`` (``KSAMPLER``, so every ComfyUI sampler and scheduler name) on a
clone of the model patcher, and on ComfyUI's step callback takes the step's x0 estimate
(``denoised``), decodes it (the node's VAE, or the engine's linear preview with the model
family's latent-to-RGB table when no VAE is given) and hands it to the
:class:`~stepwatch.server.comfyui.adapter.QualityWatch` every ``check_interval`` steps.

- **CFG from the next step**: the clone's ``sampler_cfg_function`` (:class:`LiveGuidance`) reads
  the watch's current CFG at every model call, so a raise decided at step k is what the model's
  guidance uses from step k + 1 on. A ``sampler_cfg_function`` the incoming model already had is
  kept and called with the live scale. The caller's model patcher is never changed.
- **Early stop** ends the sampler at the check (an exception out of the callback) and finishes
  with a short clean tail: the remaining schedule is re-planned as ``finish_steps`` Karras
  sigmas from the stop step's sigma down to zero, and ``comfy.sample.sample_custom`` runs the
  same sampler over them from the stop step's latent with no new noise. ``finish_steps`` 0
  returns the stop step's x0 itself. Either way the latent goes back through the model's
  ``process_latent_out``, as every ComfyUI sampler's output does.
- **Progress and previews** go to ComfyUI's own progress bar (``comfy.utils.ProgressBar``, whose
  hook sends ``progress`` and preview images), the score and decision as progress text.
- **Interrupt**: the callback calls ``throw_exception_if_processing_interrupted`` at every step,
  so the interrupt button stops the node at the next step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import torch
from comfy.k_diffusion.sampling import get_sigmas_karras
from PIL import Image

from .adapter import QualityWatch, linear_preview, to_uint8

__all__ = ["LiveGuidance", "SamplingRequest", "SamplingResult", "sample_monitored"]

#: The longest side of a preview sent to ComfyUI's UI.
PREVIEW_SIZE = 512

Decode = Callable[[torch.Tensor], torch.Tensor]
Report = Callable[[str], None]


class LiveGuidance:
    """A ``sampler_cfg_function`` whose scale is the watch's CFG at the time of the call."""

    def __init__(self, watch: QualityWatch, inner: Callable[[dict[str, Any]], Any] | None) -> None:
        self.watch = watch
        self.inner = inner

    def __call__(self, args: dict[str, Any]) -> torch.Tensor:
        scale = self.watch.cfg
        if self.inner is not None:
            result: torch.Tensor = self.inner({**args, "cond_scale": scale})
            return result
        cond, uncond = args["cond"], args["uncond"]
        return uncond + (cond - uncond) * scale


@dataclass(frozen=True)
class SamplingRequest:
    """What the node asks of one sampling run."""

    model: Any
    positive: Any
    negative: Any
    latent: dict[str, Any]
    seed: int
    sampler_name: str
    scheduler: str
    denoise: float = 1.0
    finish_steps: int = 2


@dataclass(frozen=True)
class SamplingResult:
    """The denoised latent (``process_latent_out`` applied), how it ended, steps run."""

    latent: dict[str, Any]
    finish: str
    steps_run: int


class _EarlyStop(Exception):
    def __init__(self, index: int, x: torch.Tensor, x0: torch.Tensor) -> None:
        super().__init__(f"early stop at step {index + 1}")
        self.index = index
        self.x = x
        self.x0 = x0


def make_decoder(model: Any, vae: Any | None) -> Decode:
    """x0 in the model's latent space to RGB in [0, 1], N×3×H×W."""
    inner = model.model
    if vae is not None:

        def decode_with_vae(x0: torch.Tensor) -> torch.Tensor:
            pixels = vae.decode(inner.process_latent_out(x0.to(torch.float32)))
            pixels = pixels.reshape(-1, *pixels.shape[-3:])  # video VAEs add a frame axis
            return pixels[..., :3].movedim(-1, 1).clamp(0, 1).float()

        return decode_with_vae
    latent_format = inner.latent_format
    if latent_format.latent_rgb_factors is None:
        raise ValueError("this model has no latent preview table; connect a vae")
    preview = linear_preview(
        latent_format.latent_rgb_factors, latent_format.latent_rgb_factors_bias
    )

    def decode_linear(x0: torch.Tensor) -> torch.Tensor:
        return preview.decode(x0.to(torch.float32).reshape(-1, *x0.shape[-3:]))

    return decode_linear


def sample_monitored(
    request: SamplingRequest, watch: QualityWatch, decode: Decode, report: Report
) -> SamplingResult:
    """Sample with checks; see the module docstring. Runs in ComfyUI's execution thread."""
    steps = watch.settings.steps
    patched = request.model.clone()
    guidance = LiveGuidance(watch, patched.model_options.get("sampler_cfg_function"))
    patched.set_model_sampler_cfg_function(guidance)
    latent_image = comfy.sample.fix_empty_latent_channels(patched, request.latent["samples"])
    noise = comfy.sample.prepare_noise(
        latent_image, request.seed, request.latent.get("batch_index")
    )
    noise_mask = request.latent.get("noise_mask")
    progress = comfy.utils.ProgressBar(steps)

    def on_step(index: int, x0: torch.Tensor, x: torch.Tensor, total: int) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        step = index + 1
        preview = None
        if watch.due(step):
            images = decode(x0)
            decision = watch.check(step, images)
            record = watch.history[-1]
            report(f"step {step}/{total}: {record.decision}; {record.reason}")
            preview = ("JPEG", _preview_image(images), PREVIEW_SIZE)
            if decision.decision == "early_stop" and step < total:
                progress.update_absolute(step, total, preview)
                raise _EarlyStop(index, x, x0)
        progress.update_absolute(step, total, preview)

    try:
        samples = comfy.sample.sample(
            patched,
            noise,
            steps,
            watch.settings.cfg,
            request.sampler_name,
            request.scheduler,
            request.positive,
            request.negative,
            latent_image,
            denoise=request.denoise,
            noise_mask=noise_mask,
            callback=on_step,
            disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
            seed=request.seed,
        )
    except _EarlyStop as stop:
        samples = _finish(request, patched, watch, stop, noise_mask)
        return SamplingResult(_latent(request.latent, samples), "early_stop", stop.index + 1)
    return SamplingResult(_latent(request.latent, samples), "completed", steps)


def _finish(
    request: SamplingRequest,
    patched: Any,
    watch: QualityWatch,
    stop: _EarlyStop,
    noise_mask: torch.Tensor | None,
) -> torch.Tensor:
    """The clean finish after an early stop: a short tail from the stop step's sigma to zero."""
    inner = patched.model
    if request.finish_steps == 0:
        clean: torch.Tensor = inner.process_latent_out(stop.x0.to(torch.float32))
        return clean.to(comfy.model_management.intermediate_device())
    schedule = comfy.samplers.KSampler(
        patched,
        steps=watch.settings.steps,
        device=patched.load_device,
        sampler=request.sampler_name,
        scheduler=request.scheduler,
        denoise=request.denoise,
        model_options=patched.model_options,
    ).sigmas
    sigma = float(schedule[stop.index])
    sigma_min = float(patched.get_model_object("model_sampling").sigma_min)
    tail = get_sigmas_karras(request.finish_steps, min(sigma_min, sigma), sigma)
    total = stop.index + 1 + request.finish_steps
    progress = comfy.utils.ProgressBar(total)

    def on_tail_step(index: int, x0: torch.Tensor, x: torch.Tensor, steps: int) -> None:
        progress.update_absolute(stop.index + 2 + index, total)

    samples: torch.Tensor = comfy.sample.sample_custom(
        patched,
        torch.zeros_like(stop.x, device="cpu"),
        watch.settings.cfg,
        comfy.samplers.sampler_object(request.sampler_name),
        tail,
        request.positive,
        request.negative,
        inner.process_latent_out(stop.x.to(torch.float32)).cpu(),
        noise_mask=noise_mask,
        callback=on_tail_step,
        disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
        seed=request.seed,
    )
    return samples


def _latent(source: dict[str, Any], samples: torch.Tensor) -> dict[str, Any]:
    out = source.copy()
    out.pop("downscale_ratio_spacial", None)
    out["samples"] = samples
    return out


def _preview_image(images: torch.Tensor) -> Image.Image:
    return Image.fromarray(to_uint8(images[:1])[0])
