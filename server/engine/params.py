"""What a run is asked to do: :class:`RunParams`, and :class:`SettingsChange` for mid-run steering.

Every input of the original sampler-node design survives as a field of :class:`RunParams`. Fields
left ``None`` take the model's defaults when the run is resolved against a model
(:meth:`~.model.LoadedModel.resolve`); the resolved parameters are what a run's
:class:`~.events.Started` event reports.

Both classes validate themselves on construction and raise :class:`~.errors.ParamError` naming the
offending field, so a server can turn a bad request into a coded error before anything runs.
This module imports neither torch nor diffusers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from .errors import ParamError

MAX_STEPS = 1000
MAX_CFG = 100.0
MAX_SCALE_FACTOR = 10.0
MAX_SIDE = 4096
MAX_PROMPT_CHARS = 2000
MIN_PREVIEW_SIZE = 8
MAX_PREVIEW_SIZE = 1024
MAX_SEED = 2**64 - 1

LatentArray = npt.NDArray[np.float32]


class PreviewFormat(StrEnum):
    """Encoding of the thumbnail sent with every check.

    JPEG is the default: at thumbnail sizes Pillow encodes it three to five times faster than
    WebP, which matters when a check runs every step. WebP is smaller; PNG is lossless.
    """

    WEBP = "webp"
    JPEG = "jpeg"
    PNG = "png"


def _check(condition: bool, name: str, message: str) -> None:
    if not condition:
        raise ParamError(name, message)


def _check_number(value: float, name: str, low: float, high: float) -> None:
    _check(isinstance(value, int | float) and not isinstance(value, bool), name, "must be a number")
    _check(math.isfinite(value), name, f"must be a finite number, got {value!r}")
    _check(low <= value <= high, name, f"must be between {low:g} and {high:g}, got {value:g}")


def _check_int(value: int, name: str, low: int, high: int) -> None:
    _check(isinstance(value, int) and not isinstance(value, bool), name, "must be an integer")
    _check(low <= value <= high, name, f"must be between {low} and {high}, got {value}")


@dataclass(frozen=True)
class RunParams:
    """The parameters of one monitored run.

    ``None`` means "the model's default" for ``model``, ``steps``, ``cfg``, ``sampler``,
    ``scheduler``, ``width``, ``height``, ``verifier`` and ``preview_decoder``; ``seed=None``
    picks a random seed when the run is resolved. ``cfg_max`` (the cap on CFG raises) defaults to
    twice the starting CFG, and ``min_steps`` (the earliest step an early stop may happen at) to
    half the steps.

    ``initial_latent``, when given, replaces the seeded starting noise: an array of the model's
    latent shape (batch 1) holding unit-variance noise; the scheduler scales it as it would scale
    its own noise.
    """

    prompt: str
    model: str | None = None
    negative_prompt: str = ""
    seed: int | None = None
    steps: int | None = None
    cfg: float | None = None
    sampler: str | None = None
    scheduler: str | None = None
    width: int | None = None
    height: int | None = None
    initial_latent: LatentArray | None = field(default=None, compare=False, repr=False)
    verifier: str | None = None
    check_interval: int = 5
    quality_threshold: float = 0.7
    scale_factor: float = 1.25
    cfg_max: float | None = None
    patience: int = 1
    min_steps: int | None = None
    early_stop: bool = True
    preview_size: int = 128
    preview_format: PreviewFormat = PreviewFormat.JPEG
    preview_decoder: str | None = None

    def __post_init__(self) -> None:
        _check(isinstance(self.prompt, str), "prompt", "must be a string")
        _check(bool(self.prompt.strip()), "prompt", "must not be empty")
        _check(len(self.prompt) <= MAX_PROMPT_CHARS, "prompt", f"longer than {MAX_PROMPT_CHARS}")
        _check(
            len(self.negative_prompt) <= MAX_PROMPT_CHARS,
            "negative_prompt",
            f"longer than {MAX_PROMPT_CHARS} characters",
        )
        if self.seed is not None:
            _check_int(self.seed, "seed", 0, MAX_SEED)
        if self.steps is not None:
            _check_int(self.steps, "steps", 1, MAX_STEPS)
        if self.cfg is not None:
            _check_number(self.cfg, "cfg", 0.0, MAX_CFG)
        for name in ("width", "height"):
            side = getattr(self, name)
            if side is not None:
                _check_int(side, name, 8, MAX_SIDE)
                _check(side % 8 == 0, name, f"must be a multiple of 8, got {side}")
        if self.initial_latent is not None:
            latent = self.initial_latent
            _check(isinstance(latent, np.ndarray), "initial_latent", "must be a numpy array")
            _check(latent.ndim >= 3, "initial_latent", f"needs a batch axis, got {latent.shape}")
            _check(latent.shape[0] == 1, "initial_latent", "must hold exactly one latent")
            _check(bool(np.isfinite(latent).all()), "initial_latent", "holds NaN or infinity")
        _check_policy_settings(self)
        _check_int(self.preview_size, "preview_size", MIN_PREVIEW_SIZE, MAX_PREVIEW_SIZE)
        _check(
            self.preview_format in tuple(PreviewFormat),
            "preview_format",
            f"must be one of {', '.join(PreviewFormat)}",
        )
        # Accept the plain string a wire message carries; keep the enum from here on.
        object.__setattr__(self, "preview_format", PreviewFormat(self.preview_format))


def _check_policy_settings(params: RunParams) -> None:
    _check_int(params.check_interval, "check_interval", 1, MAX_STEPS)
    _check_number(params.quality_threshold, "quality_threshold", 0.0, 1.0)
    _check_number(params.scale_factor, "scale_factor", 1.0, MAX_SCALE_FACTOR)
    if params.cfg_max is not None:
        _check_number(params.cfg_max, "cfg_max", 0.0, MAX_CFG)
        if params.cfg is not None:
            _check(
                params.cfg_max >= params.cfg,
                "cfg_max",
                f"must be at least cfg ({params.cfg:g}), got {params.cfg_max:g}",
            )
    _check_int(params.patience, "patience", 1, MAX_STEPS)
    if params.min_steps is not None:
        _check_int(params.min_steps, "min_steps", 0, MAX_STEPS)
    _check(isinstance(params.early_stop, bool), "early_stop", "must be true or false")


@dataclass(frozen=True)
class SettingsChange:
    """A mid-run change of some of the run's live settings; ``None`` leaves a setting as it is.

    A change is sent through :meth:`~.control.RunControl.set` and takes effect at the next step
    boundary. A ``cfg`` that would cross the CFG-on/off boundary (1.0) of the running pipeline is
    refused by the engine (see :func:`~.policy.cfg_refusal`).
    """

    quality_threshold: float | None = None
    scale_factor: float | None = None
    check_interval: int | None = None
    cfg: float | None = None

    def __post_init__(self) -> None:
        _check(
            any(getattr(self, f.name) is not None for f in fields(self)),
            "settings",
            "a change must set at least one of " + ", ".join(f.name for f in fields(self)),
        )
        if self.quality_threshold is not None:
            _check_number(self.quality_threshold, "quality_threshold", 0.0, 1.0)
        if self.scale_factor is not None:
            _check_number(self.scale_factor, "scale_factor", 1.0, MAX_SCALE_FACTOR)
        if self.check_interval is not None:
            _check_int(self.check_interval, "check_interval", 1, MAX_STEPS)
        if self.cfg is not None:
            _check_number(self.cfg, "cfg", 0.0, MAX_CFG)

    def describe(self) -> str:
        """Return the change as ``name=value`` pairs, for logs and reasons."""
        return ", ".join(
            f"{f.name}={getattr(self, f.name):g}"
            for f in fields(self)
            if getattr(self, f.name) is not None
        )
