"""What the engine needs to know about a loaded diffusers pipeline: :class:`LoadedModel`.

:func:`describe_pipeline` looks at any ``DiffusionPipeline`` that supports
``callback_on_step_end`` and works out, from its components and ``__call__`` signature, what a
run may ask of it: the default steps, CFG and size, the samplers that fit it, the preview decoders
that apply, and whether it reads its guidance scale at every step. The model loader
(:mod:`stepwatch.server.models.loading`) builds pipelines and hands them to it; tests hand it tiny
random-weight pipelines.

A model runs one run at a time: :attr:`LoadedModel.lock` is held for the whole run, because a
run swaps the pipeline's scheduler and steers its guidance scale.
"""

from __future__ import annotations

import dataclasses
import inspect
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import torch

from stepwatch.protocol import DEFAULT_SEARCH, ErrorCode, RunParameters, all_images_fit
from stepwatch.protocol import limits as wire

from . import samplers
from .curves import ExpectedCurve
from .driven_loop import DRIVEN_PIPELINES, drive
from .errors import ModelError, ParamError
from .inputs import ROLES, InputImages, InputSlots, image_size, input_slots, resolve_inputs
from .params import (
    DEFAULT_CHECKS,
    DEFAULT_THRESHOLD,
    RequestedParams,
    ResolvedParams,
    default_cfg_max,
)
from .previews import (
    FLUX_FACTORS,
    SD3_FACTORS,
    SD_FACTORS,
    SDXL_FACTORS,
    AutoencoderPreview,
    LatentFactors,
    LinearPreview,
    PixelPreview,
    PreviewDecoder,
)
from .verifiers import STRUCTURE, ModelVerifier


class Family(StrEnum):
    """The latent space a model denoises in, as far as previews care."""

    PIXEL = "pixel"
    SD = "sd"
    SDXL = "sdxl"
    SD3 = "sd3"
    FLUX = "flux"
    OTHER = "other"


# A family's VAE is recognised by its latent channels and scaling (and shift) factors, which are
# what the linear preview factors were fitted against.
_VAE_SIGNATURES: tuple[tuple[Family, int, float, float, LatentFactors], ...] = (
    (Family.SD, 4, 0.18215, 0.0, SD_FACTORS),
    (Family.SDXL, 4, 0.13025, 0.0, SDXL_FACTORS),
    (Family.SD3, 16, 1.5305, 0.0609, SD3_FACTORS),
    (Family.FLUX, 16, 0.3611, 0.1159, FLUX_FACTORS),
)

ModelDefaultsOverride = Mapping[str, Any]


@dataclass(frozen=True)
class ModelDefaults:
    """The values a run gets for the parameters it leaves out."""

    steps: int
    cfg: float
    width: int
    height: int
    sampler: str
    scheduler: str
    verifier: str
    preview_decoder: str


@dataclass(frozen=True)
class PromptVocabulary:
    """The words a model's prompts may use, for models with a closed vocabulary."""

    attributes: Mapping[str, tuple[str, ...]]
    description: str


PromptCheck = Callable[[str], object]


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A pipeline ready to run, with what a run may ask of it. Made by :func:`describe_pipeline`.

    ``prompt_check`` raises :class:`ValueError` with a message for users when a prompt is outside
    the model's vocabulary. ``guidance_live`` is false for pipelines that read their guidance scale
    once per run, where a mid-run CFG change could not take effect.
    """

    name: str
    pipeline: Any
    family: Family
    defaults: ModelDefaults
    samplers: tuple[str, ...]
    schedulers: tuple[str, ...]
    decoders: Mapping[str, PreviewDecoder]
    flow: bool
    fixed_size: bool
    guidance_live: bool
    call_parameters: frozenset[str]
    base_scheduler_config: Mapping[str, Any]
    vocabulary: PromptVocabulary | None = None
    prompt_check: PromptCheck | None = None
    verifiers: tuple[ModelVerifier, ...] = ()
    #: Expected-score curves shipped with the model, by :func:`~.curves.curve_key`.
    curves: Mapping[str, ExpectedCurve] = field(default_factory=dict)
    #: The input images the pipeline takes (init image, mask, control image).
    inputs: InputSlots = field(default_factory=InputSlots)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # (sampler, schedule) pairs already built once: checking them again would build a
    # scheduler for nothing at every run (a few ms of config introspection in diffusers).
    _fitting_samplers: set[tuple[str, str]] = field(default_factory=set, repr=False, init=False)

    @property
    def device(self) -> torch.device:
        """The device the pipeline runs on."""
        device: torch.device = self.pipeline.device
        return device

    @property
    def guided(self) -> bool:
        """Whether the pipeline takes a guidance scale at all (unconditional models do not)."""
        return "guidance_scale" in self.call_parameters

    @property
    def start_cfg(self) -> float:
        """The CFG a run starts with when it names none: the model's, within the protocol's
        range."""
        return min(max(self.defaults.cfg, wire.MIN_CFG), wire.MAX_CFG)

    def resolve(self, request: RequestedParams) -> ResolvedParams:
        """Fill in the defaults of ``request`` and check it against this model: the one place a
        run's parameters are resolved.

        Raises :class:`~.errors.ParamError` naming the field a run cannot use here.
        """
        d = self.defaults
        if request.model is not None and request.model != self.name:
            raise ParamError("model", f"this is model {self.name!r}, not {request.model!r}")
        self._check_prompts(request)
        steps = request.steps if request.steps is not None else d.steps
        cfg = request.cfg if request.cfg is not None else self.start_cfg
        if not self.guided and cfg != self.start_cfg:
            raise ParamError("cfg", "this model has no classifier-free guidance; leave cfg out")
        cfg_max = request.cfg_max
        if cfg_max is None:
            # The model's cap, as ``welcome`` announces it; a higher CFG must name its own.
            cfg_max = default_cfg_max(self.start_cfg)
            if cfg > cfg_max:
                raise ParamError(
                    "cfg",
                    f"must not exceed cfg_max, which defaults to {cfg_max:g} here; "
                    "name a cfg_max to go higher",
                )
        elif cfg_max < cfg:
            raise ParamError("cfg_max", f"must be at least cfg ({cfg:g}), got {cfg_max:g}")
        sampler = request.sampler or d.sampler
        schedule = request.scheduler or d.scheduler
        self.check_sampler(sampler, schedule)
        most = samplers.max_steps(self.base_scheduler_config, sampler)
        if most is not None and steps > most:
            raise ParamError("steps", f"sampler {sampler!r} takes at most {most} steps here")
        images = request.inputs or InputImages()
        ids = {role: getattr(request, role) for role in ROLES}
        taken = resolve_inputs(
            self.inputs,
            ids,
            images,
            strength=request.strength,
            control_scale=request.control_scale,
            steps=steps,
            candidates=request.wire_default("candidates"),
        )
        width, height = self._size(request, images)
        decoder = request.preview_decoder or d.preview_decoder
        if decoder not in self.decoders:
            raise ParamError(
                "preview_decoder",
                f"unknown preview decoder {decoder!r}; one of {', '.join(self.decoders)}",
            )
        self._check_latent(request, width, height)
        min_steps = request.min_steps if request.min_steps is not None else taken.steps_run // 2
        if min_steps > steps:
            raise ParamError("min_steps", f"must not exceed steps ({steps})")
        threshold = request.quality_threshold
        candidates = request.wire_default("candidates")
        if request.search is not None and request.search.images == "all" and candidates > 1:
            if not all_images_fit(candidates, width, height):
                raise ParamError(
                    "search.images",
                    f"{candidates} final images of {width} x {height} may not fit in one "
                    "frame; ask for fewer candidates, smaller images or images 'chosen'",
                )
        checks = request.checks or DEFAULT_CHECKS
        if checks == "overlapped" and request.wire_default("candidates") > 1:
            raise ParamError(
                "checks", "a search's checks run strict: it reorders its batch from each check"
            )
        parameters = RunParameters(
            model=self.name,
            prompt=request.prompt,
            negative_prompt=request.wire_default("negative_prompt"),
            seed=request.seed if request.seed is not None else random.getrandbits(32),
            steps=steps,
            cfg=cfg,
            sampler=sampler,
            scheduler=schedule,
            width=width,
            height=height,
            verifier=request.verifier or d.verifier,
            check_interval=request.wire_default("check_interval"),
            quality_threshold=DEFAULT_THRESHOLD if threshold is None else threshold,
            scale_factor=request.wire_default("scale_factor"),
            cfg_max=cfg_max,
            early_stop=request.wire_default("early_stop"),
            patience=request.wire_default("patience"),
            min_steps=min_steps,
            preview_size=request.wire_default("preview_size"),
            preview_format=request.wire_default("preview_format"),
            # Reported only when asked for: a client that names none may predate the field.
            preview_decoder=decoder if request.preview_decoder is not None else None,
            candidates=request.wire_default("candidates"),
            search=(request.search or DEFAULT_SEARCH)
            if request.wire_default("candidates") > 1
            else None,
            image=request.image,
            mask=request.mask,
            control_image=request.control_image,
            strength=taken.strength,
            control_scale=taken.control_scale,
            checks=checks,
        )
        return ResolvedParams(parameters, decoder, request.initial_latent, request.inputs)

    @property
    def preview_decoders(self) -> tuple[str, ...]:
        """The decoders a run may name, the model's default first."""
        default = self.defaults.preview_decoder
        return (default, *(name for name in self.decoders if name != default))

    def check_sampler(self, sampler: str, schedule: str) -> None:
        """Raise :class:`~.errors.ParamError` unless this sampler/scheduler pair fits the model."""
        if sampler not in self.samplers:
            raise ParamError(
                "sampler",
                f"unknown sampler {sampler!r}; one of {', '.join(self.samplers)}",
                ErrorCode.UNKNOWN_SAMPLER,
            )
        if schedule not in self.schedulers:
            raise ParamError(
                "scheduler",
                f"unknown scheduler {schedule!r}; one of {', '.join(self.schedulers)}",
                ErrorCode.UNKNOWN_SCHEDULER,
            )
        if (sampler, schedule) not in self._fitting_samplers:
            samplers.build_scheduler(self.base_scheduler_config, sampler, schedule, flow=self.flow)
            self._fitting_samplers.add((sampler, schedule))

    def build_scheduler(self, sampler: str, schedule: str) -> Any:
        """A fresh scheduler for one run, from the model's own scheduler config."""
        return samplers.build_scheduler(
            self.base_scheduler_config, sampler, schedule, flow=self.flow
        )

    def to_spatial(self, latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
        """Bring latents from the pipeline's layout to N×C×h×w (Flux-style pipelines pack them
        into sequences of patches and say how to unpack them)."""
        unpack = getattr(self.pipeline, "_unpack_latents", None)
        if unpack is None or latents.ndim == 4:
            return latents
        spatial: torch.Tensor = unpack(latents, height, width, self.pipeline.vae_scale_factor)
        return spatial

    def _check_prompts(self, params: RequestedParams) -> None:
        if self.prompt_check is None:
            return
        for name in ("prompt", "negative_prompt"):
            text = getattr(params, name)
            if text:
                try:
                    self.prompt_check(text)
                except ValueError as exc:
                    raise ParamError(name, str(exc), ErrorCode.INVALID_PROMPT) from exc

    def _size(self, params: RequestedParams, images: InputImages) -> tuple[int, int]:
        d = self.defaults
        if images.image is not None:
            # The run is the init image's size, as the pipeline's image processor makes it.
            return image_size(images.image.size, params.width, params.height, self.fixed_size)
        width = params.width if params.width is not None else d.width
        height = params.height if params.height is not None else d.height
        if self.fixed_size and (width, height) != (d.width, d.height):
            field_name = "width" if width != d.width else "height"
            raise ParamError(field_name, f"this model makes {d.width}x{d.height} images only")
        return width, height

    def _check_latent(self, params: RequestedParams, width: int, height: int) -> None:
        if params.initial_latent is None:
            return
        expected = latent_shape(self.pipeline, width, height)
        if expected is not None and tuple(params.initial_latent.shape) != expected:
            raise ParamError(
                "initial_latent",
                f"must have shape {expected} for {width}x{height}, "
                f"got {tuple(params.initial_latent.shape)}",
            )


def latent_shape(pipeline: Any, width: int, height: int) -> tuple[int, ...] | None:
    """The shape of one starting latent for a UNet pipeline, or ``None`` when unknown."""
    unet = getattr(pipeline, "unet", None)
    if unet is None:
        return None
    factor = int(getattr(pipeline, "vae_scale_factor", 1) or 1)
    return (1, int(unet.config.in_channels), height // factor, width // factor)


def detect_family(pipeline: Any) -> tuple[Family, LatentFactors | None]:
    """Recognise the pipeline's latent space; return the linear preview factors if known."""
    vae = getattr(pipeline, "vae", None)
    if vae is None:
        denoiser = _denoiser(pipeline)
        channels = int(denoiser.config.get("in_channels", 0)) if denoiser is not None else 0
        return (Family.PIXEL, None) if channels == 3 else (Family.OTHER, None)
    config = vae.config
    channels = int(config.get("latent_channels", 0))
    scaling = float(config.get("scaling_factor", 1.0) or 1.0)
    shift = float(config.get("shift_factor", 0.0) or 0.0)
    for family, want_channels, want_scaling, want_shift, factors in _VAE_SIGNATURES:
        if (channels, round(scaling, 5), round(shift, 4)) == (
            want_channels,
            want_scaling,
            want_shift,
        ):
            return family, factors
    return Family.OTHER, None


def _denoiser(pipeline: Any) -> Any:
    return getattr(pipeline, "unet", None) or getattr(pipeline, "transformer", None)


def _preview_decoders(
    pipeline: Any, family: Family, factors: LatentFactors | None, tiny_autoencoder: Any
) -> dict[str, PreviewDecoder]:
    decoders: dict[str, PreviewDecoder] = {}
    if family is Family.PIXEL:
        decoders["identity"] = PixelPreview()
        return decoders
    if factors is not None:
        decoders["linear"] = LinearPreview(factors)
    if tiny_autoencoder is not None:
        _check_tiny_autoencoder(pipeline, tiny_autoencoder)
        decoders["tiny"] = AutoencoderPreview(tiny_autoencoder, "tiny")
    if getattr(pipeline, "vae", None) is not None:
        decoders["vae"] = AutoencoderPreview(pipeline.vae, "vae")
    own = getattr(pipeline, "own_preview_decoder", None)  # an engine-driven loop's (.kandinsky)
    if own is not None:
        decoders["vae"] = own
    if not decoders:
        raise ModelError("no preview decoder applies to this pipeline")
    return decoders


def _check_tiny_autoencoder(pipeline: Any, tiny_autoencoder: Any) -> None:
    """Refuse a tiny autoencoder made for another latent space (TAESD on SD3, say), which would
    fail at the first check."""
    vae = getattr(pipeline, "vae", None)
    if vae is None:
        raise ModelError("this pipeline has no VAE; a tiny_vae has no latent space to decode")
    want = int(vae.config.get("latent_channels", 0))
    have = int(tiny_autoencoder.config.get("latent_channels", 0))
    if have != want:
        raise ModelError(
            f"the tiny_vae decodes {have}-channel latents but this model's have {want}; "
            "configure the tiny autoencoder made for this model family"
        )


def _call_defaults(pipeline: Any) -> tuple[frozenset[str], int, float]:
    parameters = inspect.signature(pipeline.__call__).parameters
    names = frozenset(parameters)
    kind = type(pipeline).__name__
    if "num_frames" in names:
        raise ModelError(
            f"{kind} makes videos; stepwatch watches image pipelines only (no per-frame previews "
            "or verifiers yet)"
        )
    if "callback_on_step_end" not in names:
        raise ModelError(
            f"{kind} takes no callback_on_step_end, so the engine cannot watch its steps "
            f"(it drives the loop itself only for {', '.join(DRIVEN_PIPELINES)})"
        )
    steps = parameters.get("num_inference_steps")
    cfg = parameters.get("guidance_scale")
    default_steps = steps.default if steps is not None and isinstance(steps.default, int) else 30
    default_cfg = cfg.default if cfg is not None and isinstance(cfg.default, float) else 1.0
    return names, default_steps, float(default_cfg)


def _guidance_live(pipeline: Any) -> bool:
    """Whether the pipeline reads its guidance scale at every step: true classifier-free
    guidance does; a guidance embedding computed once before the loop (LCM's ``w_embedding``,
    a UNet with ``time_cond_proj_dim``) does not."""
    unet = getattr(pipeline, "unet", None)
    if unet is not None and unet.config.get("time_cond_proj_dim") is not None:
        return False
    return hasattr(type(pipeline), "do_classifier_free_guidance")


def _default_size(pipeline: Any) -> int:
    denoiser = _denoiser(pipeline)
    sample_size = getattr(pipeline, "default_sample_size", None) or (
        denoiser.config.get("sample_size") if denoiser is not None else None
    )
    if isinstance(sample_size, list | tuple):
        sample_size = sample_size[0]
    if not isinstance(sample_size, int):
        raise ModelError("cannot tell the image size this pipeline makes")
    return sample_size * int(getattr(pipeline, "vae_scale_factor", 1) or 1)


def describe_pipeline(
    name: str,
    pipeline: Any,
    *,
    tiny_autoencoder: Any = None,
    overrides: ModelDefaultsOverride | None = None,
    vocabulary: PromptVocabulary | None = None,
    prompt_check: PromptCheck | None = None,
    verifiers: tuple[ModelVerifier, ...] = (),
    fixed_size: bool | None = None,
    curves: Mapping[str, ExpectedCurve] | None = None,
) -> LoadedModel:
    """Describe ``pipeline`` as a :class:`LoadedModel` named ``name``.

    ``tiny_autoencoder`` (an ``AutoencoderTiny``) adds the ``tiny`` preview decoder;
    ``overrides`` replaces fields of the derived :class:`ModelDefaults`; ``fixed_size`` says the
    model makes images of its default size only (derived: the pipeline takes no height/width).
    ``verifiers`` are the model's own (the first is its default verifier). Raises
    :class:`~.errors.ModelError` for a pipeline the engine cannot watch: one without
    ``callback_on_step_end``, a video pipeline, a tiny autoencoder of another latent space.
    A pipeline without an ``interrupt`` property is watched; the engine ends it at a step
    boundary itself (see :mod:`.monitor`). A ``DDPMPipeline`` or ``DDIMPipeline`` runs under the
    engine's own loop (:mod:`.driven_loop`).
    """
    pipeline = drive(pipeline)
    names, steps, cfg = _call_defaults(pipeline)
    family, factors = detect_family(pipeline)
    decoders = _preview_decoders(pipeline, family, factors, tiny_autoencoder)
    flow = samplers.is_flow_scheduler(pipeline.scheduler)
    size = _default_size(pipeline)
    defaults = ModelDefaults(
        steps=steps,
        cfg=cfg,
        width=size,
        height=size,
        sampler=samplers.sampler_of(pipeline.scheduler) or samplers.sampler_names(flow)[0],
        scheduler=samplers.schedule_of(pipeline.scheduler),
        verifier=verifiers[0].info.id if verifiers else STRUCTURE,
        preview_decoder=next(iter(decoders)),
    )
    if overrides:
        defaults = dataclasses.replace(defaults, **overrides)
    if hasattr(pipeline, "set_progress_bar_config"):
        pipeline.set_progress_bar_config(disable=True)
    model = LoadedModel(
        name=name,
        pipeline=pipeline,
        family=family,
        defaults=defaults,
        samplers=samplers.offered_samplers(pipeline.scheduler),
        schedulers=samplers.schedule_names(),
        decoders=decoders,
        flow=flow,
        fixed_size=fixed_size if fixed_size is not None else not {"height", "width"} <= names,
        guidance_live=_guidance_live(pipeline),
        call_parameters=names,
        base_scheduler_config=dict(pipeline.scheduler.config),
        vocabulary=vocabulary,
        prompt_check=prompt_check,
        verifiers=verifiers,
        curves=dict(curves or {}),
        inputs=input_slots(pipeline),
    )
    model.check_sampler(defaults.sampler, defaults.scheduler)
    return model
