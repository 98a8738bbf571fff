"""What the service offers and how a request for it is read: :class:`Catalog`.

The catalog holds the loaded models and the verifier registry the app owns. It describes them
for ``welcome`` (and ``GET /api/models``, ``GET /api/verifiers``), and it turns a ``start``
message into the engine's :class:`~stepwatch.server.engine.params.ResolvedParams`, resolved
against the model (:meth:`~stepwatch.server.engine.model.LoadedModel.resolve`, the one place
defaults are filled in and cross-field rules checked) and then against this server's limits. A
request it cannot serve raises :class:`~stepwatch.protocol.ProtocolError` with the code and the
field the protocol README names, before anything runs. It also checks ``set`` requests the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from stepwatch.protocol import (
    SEARCH_SETTINGS,
    STRATEGY_SETTINGS,
    ErrorCode,
    ModelInfo,
    ProtocolError,
    RunParameters,
    Set,
    Start,
    VerifierInfo,
)
from stepwatch.protocol import limits as wire
from stepwatch.server.config import ServiceLimits
from stepwatch.server.engine.candidates import search_refusal
from stepwatch.server.engine.errors import ParamError
from stepwatch.server.engine.inputs import InputImages
from stepwatch.server.engine.model import LoadedModel
from stepwatch.server.engine.params import (
    DEFAULT_THRESHOLD,
    SIZE_MULTIPLE,
    RequestedParams,
    ResolvedParams,
    SettingsChange,
    check_change,
    default_cfg_max,
)
from stepwatch.server.engine.policy import cfg_refusal
from stepwatch.server.engine.verifiers import BUILTIN_COMPONENTS, VerifierRegistry

__all__ = ["Catalog", "ResolvedRun"]

#: The score components of the verifiers whose components are known before they run.
KNOWN_COMPONENTS: Mapping[str, tuple[str, ...]] = BUILTIN_COMPONENTS


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _invalid(field: str, message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_VALUE, message, field)


def _refused(exc: ParamError) -> ProtocolError:
    return ProtocolError(exc.code, exc.message, exc.field)


@dataclass(frozen=True)
class ResolvedRun:
    """A ``start`` the service can run: the model and the parameters resolved against it."""

    model: LoadedModel
    params: ResolvedParams

    @property
    def parameters(self) -> RunParameters:
        """What the run's ``started`` reports."""
        return self.params.parameters

    def with_settings(self, change: SettingsChange) -> ResolvedRun:
        """The run with ``change`` applied before it starts (a ``set`` of a queued run)."""
        return ResolvedRun(self.model, self.params.with_settings(change))

    @property
    def previews(self) -> bool:
        """Whether the run's checks carry thumbnails (``preview_size`` 0 turns them off)."""
        return self.parameters.preview_size > 0


class Catalog:
    """The models (the first is the default) and verifiers this service offers.

    Made once in the app's lifespan; read-only afterwards, so every connection may share it.
    """

    def __init__(
        self, models: Sequence[LoadedModel], verifiers: VerifierRegistry, limits: ServiceLimits
    ) -> None:
        if not models:
            raise ValueError("a catalog needs at least one model")
        self.models: Mapping[str, LoadedModel] = {model.name: model for model in models}
        self.default_model = models[0]
        self.verifiers = verifiers
        self.limits = limits
        self.model_infos = tuple(describe_model(model) for model in models)
        self.verifier_infos = tuple(
            VerifierInfo(
                id=info.id,
                description=_clip(info.description, wire.MAX_DESCRIPTION_CHARS),
                components=self._components(info.id) or info.components[: wire.MAX_COMPONENTS],
                default_threshold=DEFAULT_THRESHOLD,
            )
            for info in verifiers.infos()
        )

    def _components(self, verifier_id: str) -> tuple[str, ...]:
        """The components a verifier's checks may report, when they are known before it runs.

        A model's own verifier (the built-in model's ``adherence``) reports the attributes of the
        model's vocabulary that a prompt names; the ones it may report are all of them.
        """
        if verifier_id in KNOWN_COMPONENTS:
            return KNOWN_COMPONENTS[verifier_id]
        for model in self.models.values():
            for verifier in model.verifiers:
                if verifier.info.id == verifier_id and verifier.info.components:
                    return verifier.info.components[: wire.MAX_COMPONENTS]
        for model in self.models.values():
            own = any(verifier.info.id == verifier_id for verifier in model.verifiers)
            if own and model.vocabulary is not None:
                return tuple(model.vocabulary.attributes)[: wire.MAX_COMPONENTS]
        return ()

    # -- start ---------------------------------------------------------------------------------

    def resolve(self, start: Start, inputs: InputImages | None = None) -> ResolvedRun:
        """Check ``start`` in full and fill in its defaults; ``inputs`` are the images of the
        uploads it names.

        Raises :class:`~stepwatch.protocol.ProtocolError` with the code and the field.
        """
        model = self._model(start.model)
        verifier = start.verifier or model.defaults.verifier
        if verifier not in self.verifiers:
            raise ProtocolError(
                ErrorCode.UNKNOWN_VERIFIER, f"no verifier {verifier!r} is registered", "verifier"
            )
        try:
            params = model.resolve(RequestedParams.from_start(start, inputs))
        except ParamError as exc:
            raise _refused(exc) from exc
        self._check_limits(params.parameters)
        if params.parameters.search is not None:
            why = search_refusal(model, params.parameters.search)
            if why:
                raise _invalid("search.strategy", why)
        return ResolvedRun(model, params)

    def _model(self, name: str | None) -> LoadedModel:
        if name is None:
            return self.default_model
        model = self.models.get(name)
        if model is None:
            known = ", ".join(self.models)
            raise ProtocolError(
                ErrorCode.UNKNOWN_MODEL, f"no model {name!r}; this server has {known}", "model"
            )
        return model

    def _check_limits(self, parameters: RunParameters) -> None:
        """This server's own bounds, tighter than the protocol's (see :class:`ServiceLimits`)."""
        limits = self.limits
        for name in ("prompt", "negative_prompt"):
            if len(getattr(parameters, name)) > limits.max_prompt_chars:
                raise _invalid(name, f"longer than {limits.max_prompt_chars} characters")
        if parameters.steps > limits.max_steps:
            raise _invalid("steps", f"at most {limits.max_steps} on this server")
        for name in ("width", "height"):
            if getattr(parameters, name) > limits.max_image_side:
                raise _invalid(name, f"at most {limits.max_image_side} pixels on this server")
        if parameters.preview_size > limits.max_preview_size:
            raise _invalid(
                "preview_size", f"at most {limits.max_preview_size} pixels on this server"
            )
        if parameters.candidates > limits.max_candidates:
            raise _invalid("candidates", f"at most {limits.max_candidates} on this server")

    # -- set -----------------------------------------------------------------------------------

    @staticmethod
    def settings_change(request: Set, parameters: RunParameters) -> SettingsChange:
        """The engine's change for ``request`` on a run started with ``parameters``.

        Raises ``invalid_value`` for a CFG the run cannot switch to (across the CFG-on/off
        boundary) or beyond its ``cfg_max``.
        """
        if request.cfg is not None:
            why = cfg_refusal(parameters.cfg, request.cfg)
            if why:
                raise _invalid("cfg", why)
            if request.cfg > parameters.cfg_max:
                raise _invalid("cfg", f"must not exceed the run's cfg_max ({parameters.cfg_max:g})")
        named = {
            "quality_threshold": request.quality_threshold,
            "scale_factor": request.scale_factor,
            "check_interval": request.check_interval,
            "cfg": request.cfg,
            **{name: getattr(request, name) for name in SEARCH_SETTINGS},
        }
        strategy = parameters.search.strategy if parameters.search is not None else None
        for name in SEARCH_SETTINGS:
            if named[name] is not None and name not in STRATEGY_SETTINGS.get(strategy or "", ()):
                kind = f"a {strategy} search" if strategy else "a single run"
                raise _invalid(name, f"{kind} has no {name}")
        try:
            return check_change({k: float(v) for k, v in named.items() if v is not None})  # type: ignore[misc]
        except ParamError as exc:
            raise _refused(exc) from exc


def describe_model(model: LoadedModel) -> ModelInfo:
    """The model as ``welcome`` lists it."""
    d = model.defaults
    if model.vocabulary is not None:
        description = model.vocabulary.description
        words = sorted({word for values in model.vocabulary.attributes.values() for word in values})
        vocabulary: tuple[str, ...] | None = tuple(words[: wire.MAX_VOCABULARY_WORDS]) or None
    else:
        pipeline = type(model.pipeline).__name__
        description = f"{pipeline} ({model.family.value}), {d.width}x{d.height} by default"
        vocabulary = None
    return ModelInfo(
        id=model.name,
        description=_clip(description, wire.MAX_DESCRIPTION_CHARS),
        default_steps=min(d.steps, wire.MAX_STEPS),
        default_cfg=model.start_cfg,
        default_cfg_max=default_cfg_max(model.start_cfg),
        default_width=d.width,
        default_height=d.height,
        default_sampler=d.sampler,
        default_scheduler=d.scheduler,
        default_verifier=d.verifier,
        size_multiple=SIZE_MULTIPLE,
        samplers=model.samplers[: wire.MAX_LISTED],
        schedulers=model.schedulers[: wire.MAX_LISTED],
        vocabulary=vocabulary,
        fixed_size=model.fixed_size,
        preview_decoders=model.preview_decoders[: wire.MAX_LISTED],
    )
