"""What a run is asked to do, before and after it is resolved against a model.

- :class:`RequestedParams`: what a caller asks for. Every field but ``prompt`` may be ``None``,
  "the default": the model's (steps, CFG, sampler, scheduler, size, verifier, preview decoder),
  the protocol's (``check_interval``, ``scale_factor`` and the rest that ``start`` defaults) or
  one computed from the others (``cfg_max``, ``min_steps``, a random ``seed``).
- :class:`ResolvedParams`: what a run runs with, every default filled in and every rule checked,
  made only by :meth:`~.model.LoadedModel.resolve`. Its ``parameters`` are the protocol's
  :class:`~stepwatch.protocol.RunParameters`, exactly what the run's ``started`` reports; the
  engine never sees anything else.

The protocol is the one definition of every bound: a request's values are checked by the same
schema that checks a ``start`` frame, so a value the wire refuses is refused in process too.
Mid-run changes of the live settings are a mapping from the protocol's
:data:`~stepwatch.protocol.Setting` names to new values (:data:`SettingsChange`), checked the
same way against ``set``.

Each check raises :class:`~.errors.ParamError` naming the offending field and the protocol's
error code. This module imports neither torch nor diffusers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from stepwatch.protocol import (
    SEARCH_SETTINGS,
    ErrorCode,
    MessageError,
    RunParameters,
    SearchSetting,
    SearchSettings,
    Set,
    Setting,
    Start,
)
from stepwatch.protocol import limits as wire
from stepwatch.protocol.schema import compile_record
from stepwatch.protocol.values import SETTINGS, CheckMode, PreviewFormat

from .errors import ParamError
from .inputs import InputImages

__all__ = [
    "DEFAULT_CHECKS",
    "DEFAULT_THRESHOLD",
    "MIN_PREVIEW_SIZE",
    "PROMPT_FIELDS",
    "SIZE_MULTIPLE",
    "WIRE_FIELDS",
    "LatentArray",
    "RequestedParams",
    "ResolvedParams",
    "SettingsChange",
    "check_change",
    "default_cfg_max",
    "describe_change",
]

LatentArray = npt.NDArray[np.float32]
#: A change of some of a running run's live settings, by name (a search's settings too).
SettingsChange = Mapping[Setting | SearchSetting, float]

#: The parameters the wire carries, in the order ``started`` lists them.
WIRE_FIELDS: Final = tuple(f.name for f in dataclasses.fields(RunParameters))
#: The protocol's defaults for the parameters ``start`` gives a default value.
_START_DEFAULTS: Final[Mapping[str, Any]] = {
    f.name: f.default
    for f in dataclasses.fields(Start)
    if f.default is not dataclasses.MISSING and f.default is not None
}
#: The quality threshold of a run that names none (the protocol leaves it to the verifier).
DEFAULT_THRESHOLD: Final = 0.7
#: How the checks of a run that names none are computed: ``strict``, so that a client written
#: before ``checks`` existed gets the run it always got (an early stop one step later, a CFG
#: raise one step later would change its images); ``overlapped`` is asked for per run.
DEFAULT_CHECKS: Final[CheckMode] = "strict"
#: Width and height are multiples of this, for every model.
SIZE_MULTIPLE: Final = 8
#: The smallest thumbnail; ``preview_size`` 0 asks for none.
MIN_PREVIEW_SIZE: Final = 8
PROMPT_FIELDS: Final = ("prompt", "negative_prompt")
INVALID_PROMPT: Final = ErrorCode.INVALID_PROMPT

_START: Final = compile_record(Start)
_SET: Final = compile_record(Set)
_SEARCH: Final = compile_record(SearchSettings)
# The fields a request check fills in so that the protocol's schema can read the rest.
_START_PLACEHOLDERS: Final = {"request_id": "-"}
_SET_PLACEHOLDERS: Final = {"request_id": "-", "run_id": "-", "token": "-" * 16}


def _wire_check(spec: Any, values: Mapping[str, object], placeholders: Mapping[str, str]) -> None:
    """Check ``values`` with the protocol's schema of a message (its bounds and types)."""
    try:
        spec.read({**placeholders, **values}, "")
    except MessageError as exc:
        raise ParamError(exc.field or "parameters", exc.message, exc.code) from exc


def _check(condition: bool, name: str, message: str) -> None:
    if not condition:
        raise ParamError(name, message)


@dataclass(frozen=True)
class RequestedParams:
    """What a caller asks a run to do; ``None`` is "the default" (see the module's docstring).

    ``preview_decoder`` names one of the model's decoders (``linear``, ``tiny``, ``vae``,
    ``identity``); ``checks`` is ``strict`` or ``overlapped`` (see :mod:`.checking`).
    ``initial_latent``, when given, replaces the seeded starting noise: an array of the model's
    latent shape (batch 1) holding unit-variance noise, which the scheduler scales as it would
    its own. Checked on construction.
    """

    prompt: str
    model: str | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    steps: int | None = None
    cfg: float | None = None
    sampler: str | None = None
    scheduler: str | None = None
    width: int | None = None
    height: int | None = None
    verifier: str | None = None
    check_interval: int | None = None
    quality_threshold: float | None = None
    scale_factor: float | None = None
    cfg_max: float | None = None
    early_stop: bool | None = None
    patience: int | None = None
    min_steps: int | None = None
    preview_size: int | None = None
    preview_format: PreviewFormat | None = None
    preview_decoder: str | None = None
    candidates: int | None = None
    search: SearchSettings | None = None
    image: str | None = None
    mask: str | None = None
    control_image: str | None = None
    strength: float | None = None
    control_scale: float | None = None
    checks: CheckMode | None = None
    initial_latent: LatentArray | None = field(default=None, compare=False, repr=False)
    #: The decoded images of the uploads ``image``, ``mask`` and ``control_image`` name.
    inputs: InputImages | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        given = {name: getattr(self, name) for name in WIRE_FIELDS if name != "search"}
        _wire_check(_START, {k: v for k, v in given.items() if v is not None}, _START_PLACEHOLDERS)
        if not self.prompt.strip():
            raise ParamError("prompt", "say what to draw: the prompt is empty", INVALID_PROMPT)
        for name in ("width", "height"):
            side = getattr(self, name)
            _check(
                side is None or side % SIZE_MULTIPLE == 0,
                name,
                f"must be a multiple of {SIZE_MULTIPLE}, got {side}",
            )
        _check(
            self.preview_size is None or not 0 < self.preview_size < MIN_PREVIEW_SIZE,
            "preview_size",
            f"0 (none) or at least {MIN_PREVIEW_SIZE} pixels",
        )
        if self.preview_decoder is not None:
            _check(isinstance(self.preview_decoder, str), "preview_decoder", "must be a name")
        if self.initial_latent is not None:
            latent = self.initial_latent
            _check(isinstance(latent, np.ndarray), "initial_latent", "must be a numpy array")
            _check(latent.ndim >= 3, "initial_latent", f"needs a batch axis, got {latent.shape}")
            _check(latent.shape[0] == 1, "initial_latent", "must hold exactly one latent")
            _check(bool(np.isfinite(latent).all()), "initial_latent", "holds NaN or infinity")
            _check(
                (self.candidates or 1) == 1,
                "initial_latent",
                "a search draws each candidate's noise from its seed; give no initial latent",
            )
        if self.search is not None:
            _check(isinstance(self.search, SearchSettings), "search", "must be search settings")
            # Read back through the protocol's schema, which holds every setting to its bounds.
            search = {"prompt": self.prompt, "search": _SEARCH.write(self.search)}
            _wire_check(_START, search, _START_PLACEHOLDERS)

    @classmethod
    def from_start(cls, start: Start, inputs: InputImages | None = None) -> RequestedParams:
        """The parameters a ``start`` message asks for, with the images its uploads hold."""
        return cls(**{name: getattr(start, name) for name in WIRE_FIELDS}, inputs=inputs)

    def wire_default(self, name: str) -> Any:
        """The value of ``name``, or the protocol's default for it when left out."""
        value = getattr(self, name)
        return _START_DEFAULTS.get(name) if value is None else value


@dataclass(frozen=True)
class ResolvedParams:
    """A run's parameters resolved against its model (see :meth:`~.model.LoadedModel.resolve`).

    ``parameters`` hold every protocol parameter, filled in and checked; ``preview_decoder`` is
    the decoder checks use; ``initial_latent`` the caller's starting noise, if any; ``inputs``
    the run's input images, if any.
    """

    parameters: RunParameters
    preview_decoder: str
    initial_latent: LatentArray | None = field(default=None, compare=False, repr=False)
    inputs: InputImages | None = field(default=None, compare=False, repr=False)

    def with_settings(self, change: SettingsChange) -> ResolvedParams:
        """These parameters with ``change`` applied before the run starts."""
        values: dict[str, Any] = {
            name: int(v) if name in _WHOLE else v
            for name, v in change.items()
            if name not in SEARCH_SETTINGS
        }
        searched: dict[str, Any] = {
            name: int(v) if name in _WHOLE else v
            for name, v in change.items()
            if name in SEARCH_SETTINGS
        }
        if searched and self.parameters.search is not None:
            values["search"] = dataclasses.replace(self.parameters.search, **searched)
        return dataclasses.replace(self, parameters=dataclasses.replace(self.parameters, **values))


def default_cfg_max(cfg: float) -> float:
    """The cap on CFG raises of a run that names none: twice its starting CFG, within the
    protocol's range."""
    return min(max(cfg, 2 * cfg), wire.MAX_CFG)


#: The live settings that count steps or checks: whole numbers on the wire.
_WHOLE: Final = ("check_interval", "prune_every", "resample_every")


def check_change(change: SettingsChange) -> dict[Setting | SearchSetting, float]:
    """``change`` checked against the protocol's bounds for ``set``; a plain dict of it."""
    _check(bool(change), "settings", "a change must set at least one of " + ", ".join(SETTINGS))
    unknown = [name for name in change if name not in (*SETTINGS, *SEARCH_SETTINGS)]
    _check(not unknown, ", ".join(map(str, unknown)), "is not a live setting")
    # ``check_interval`` is a whole number of steps; the wire carries it as an integer.
    wire_values: dict[str, object] = {
        name: int(value) if name in _WHOLE and float(value).is_integer() else value
        for name, value in change.items()
    }
    _wire_check(_SET, wire_values, _SET_PLACEHOLDERS)
    return dict(change)


def describe_change(change: SettingsChange) -> str:
    """``change`` as ``name=value`` pairs, for logs and reasons."""
    return ", ".join(f"{name}={value:g}" for name, value in change.items())
