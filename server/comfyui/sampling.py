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

:func:`sample_candidates` is the node's best-of-N (``candidates`` > 1, see :mod:`.candidates`):
one ``comfy.sample.sample_custom`` call over a batch of N copies of the latent, on the sigmas
``comfy.sample.sample`` would use, so the model sees batches of N (one sampler run, not N).
Candidate *i* equals a lone run of ``seed + i`` because every random draw is made per lane:

- **Starting noise**: ``comfy.sample.prepare_noise`` draws a batch's noise from one generator of
  the run's seed (image *b* of a batch gets that generator's *b*-th draw, ``batch_index`` picks
  draws), so the N lanes' noise is drawn with one ``prepare_noise`` call per candidate seed on
  the one-image latent, as the lone run of that seed draws it.
- **Noise during sampling**: ancestral and SDE samplers draw it for the whole batch from one
  generator of the run's seed, so the sampler function is called with a ``noise_sampler`` of
  one generator per lane (:class:`LaneNoise`), each made as the sampler would make its own for
  a lone run of the lane's seed: ``default_noise_sampler``'s Gaussian draws, or a
  ``BrownianTreeNoiseSampler`` over the same sigma range for the Brownian-tree samplers.
- ``dpm_adaptive`` is refused: its step sizes follow an error norm over the whole batch, so no
  candidate would be the lone run of its seed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import torch
from comfy.k_diffusion.sampling import (
    BrownianTreeNoiseSampler,
    default_noise_sampler,
    get_sigmas_karras,
)
from PIL import Image

from .adapter import NodeError, QualityWatch, linear_preview, to_uint8
from .candidates import CandidateWatch

__all__ = [
    "LaneNoise",
    "LiveGuidance",
    "SamplingRequest",
    "SamplingResult",
    "sample_candidates",
    "sample_monitored",
]

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


#: ComfyUI's samplers (at the pinned a125cd8) that make a ``BrownianTreeNoiseSampler`` when they
#: are given no ``noise_sampler``; the others that take one make a ``default_noise_sampler``.
BROWNIAN_SAMPLERS = frozenset(
    {
        "dpmpp_sde",
        "dpmpp_sde_gpu",
        "dpmpp_2m_sde",
        "dpmpp_2m_sde_gpu",
        "dpmpp_2m_sde_heun",
        "dpmpp_2m_sde_heun_gpu",
        "dpmpp_3m_sde",
        "dpmpp_3m_sde_gpu",
    }
)
#: Samplers whose steps depend on the whole batch, so a lane is never its lone run.
BATCH_COUPLED_SAMPLERS = frozenset({"dpm_adaptive"})


class LaneNoise:
    """A ``noise_sampler`` for a batch of lanes: lane *i*'s noise drawn by the noise sampler the
    sampler would make for a lone run of ``seeds[i]`` on ``x[i]`` and ``sigmas``."""

    def __init__(
        self, x: torch.Tensor, sigmas: torch.Tensor, seeds: list[int], sampler_name: str
    ) -> None:
        self.lanes: list[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]
        if sampler_name in BROWNIAN_SAMPLERS:
            sigma_min, sigma_max = sigmas[sigmas > 0].min(), sigmas.max()
            cpu = not sampler_name.endswith("_gpu")
            self.lanes = [
                BrownianTreeNoiseSampler(x[i : i + 1], sigma_min, sigma_max, seed=seed, cpu=cpu)
                for i, seed in enumerate(seeds)
            ]
        else:
            self.lanes = [
                default_noise_sampler(x[i : i + 1], seed=seed) for i, seed in enumerate(seeds)
            ]

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        return torch.cat([lane(sigma, sigma_next) for lane in self.lanes])


def lane_sampler(sampler_name: str, seeds: list[int]) -> Any:
    """ComfyUI's sampler object for ``sampler_name``, drawing its noise per lane: a sampler
    function that takes a ``noise_sampler`` is handed a :class:`LaneNoise`; the others draw
    none after the start."""
    if sampler_name in BATCH_COUPLED_SAMPLERS:
        raise NodeError(
            f"stepwatch: {sampler_name} sizes its steps by the whole batch, so candidates "
            "would not be lone runs of their seeds; choose another sampler or candidates 1"
        )
    sampler = comfy.samplers.sampler_object(sampler_name)
    function = sampler.sampler_function
    if "noise_sampler" not in inspect.signature(function).parameters:
        return sampler

    def with_lane_noise(
        model: Any, x: torch.Tensor, sigmas: torch.Tensor, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        kwargs["noise_sampler"] = LaneNoise(x, sigmas, seeds, sampler_name)
        result: torch.Tensor = function(model, x, sigmas, *args, **kwargs)
        return result

    return comfy.samplers.KSAMPLER(with_lane_noise, sampler.extra_options, sampler.inpaint_options)


def sample_candidates(
    request: SamplingRequest, watch: CandidateWatch, decode: Decode, report: Report
) -> tuple[SamplingResult, dict[str, Any]]:
    """Best-of-N as one sampler run (see the module docstring): the chosen candidate's latent
    and the batch of every candidate's, in candidate order. Runs in ComfyUI's execution thread."""
    patched = request.model.clone()
    latent_image = comfy.sample.fix_empty_latent_channels(patched, request.latent["samples"])
    if latent_image.shape[0] != 1:
        raise NodeError(
            f"stepwatch: candidates > 1 takes a latent of one image, got a batch of "
            f"{latent_image.shape[0]}; the candidates are the batch"
        )
    batch_index = request.latent.get("batch_index")
    noise = torch.cat(
        [comfy.sample.prepare_noise(latent_image, seed, batch_index) for seed in watch.seeds]
    )
    latents = latent_image.repeat(watch.candidates, *[1] * (latent_image.ndim - 1))
    sigmas = comfy.samplers.KSampler(
        patched,
        steps=watch.steps,
        device=patched.load_device,
        sampler=request.sampler_name,
        scheduler=request.scheduler,
        denoise=request.denoise,
        model_options=patched.model_options,
    ).sigmas
    sampler = lane_sampler(request.sampler_name, watch.seeds)
    progress = comfy.utils.ProgressBar(watch.steps)

    def on_step(index: int, x0: torch.Tensor, x: torch.Tensor, total: int) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        step = index + 1
        preview = None
        if watch.due(step):
            images = decode(x0)
            scores = watch.check(step, images)
            report(watch.summary(step, total))
            best = watch.leader(scores)
            preview = ("JPEG", _preview_image(images[best : best + 1]), PREVIEW_SIZE)
        progress.update_absolute(step, total, preview)

    samples: torch.Tensor = comfy.sample.sample_custom(
        patched,
        noise,
        watch.cfg,
        sampler,
        sigmas,
        request.positive,
        request.negative,
        latents,
        noise_mask=request.latent.get("noise_mask"),
        callback=on_step,
        disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
        seed=request.seed,
    )
    chosen = watch.leader()
    steps_run = len(sigmas) - 1
    result = SamplingResult(
        _latent(request.latent, samples[chosen : chosen + 1]), "completed", steps_run
    )
    everyone = _latent(request.latent, samples)
    everyone.pop("batch_index", None)
    return result, everyone
