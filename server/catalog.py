"""What the service offers and how a request for it is read: :class:`Catalog`.

The catalog holds the loaded models and the verifier registry the app owns. It describes them
for ``welcome`` (and ``GET /api/models``, ``GET /api/verifiers``), and it turns a ``start``
message into the engine's :class:`~stepwatch.server.engine.params.RunParams`, resolved against
the model, checked against the service's limits, with every default filled in. A request it
cannot serve raises :class:`~stepwatch.protocol.ProtocolError` with the code and the field the
protocol README names, before anything runs. It also checks ``set`` requests the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from stepwatch.protocol import ErrorCode, ModelInfo, ProtocolError, RunParameters, Set, Start
from stepwatch.protocol import VerifierInfo as WireVerifierInfo
from stepwatch.protocol import limits as wire
from stepwatch.server.config import MIN_PREVIEW_SIZE, ServiceLimits
from stepwatch.server.engine.errors import ParamError
from stepwatch.server.engine.model import LoadedModel
from stepwatch.server.engine.params import PreviewFormat, RunParams, SettingsChange
from stepwatch.server.engine.policy import cfg_refusal
from stepwatch.server.engine.verifiers import BUILTIN_COMPONENTS, VerifierRegistry

__all__ = ["DEFAULT_THRESHOLD", "Catalog", "ResolvedRun"]

#: The quality threshold a run gets when neither it nor its verifier names one (the engine's).
DEFAULT_THRESHOLD: float = RunParams(prompt="-").quality_threshold
#: The score components of the verifiers whose components are known before they run.
KNOWN_COMPONENTS: Mapping[str, tuple[str, ...]] = BUILTIN_COMPONENTS
#: Width and height are multiples of this (the engine's rule for every model).
SIZE_MULTIPLE = 8
PROMPT_FIELDS = ("prompt", "negative_prompt")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _invalid(field: str, message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_VALUE, message, field)


@dataclass(frozen=True)
class ResolvedRun:
    """A ``start`` the service can run: the model, the engine's parameters, what clients see."""

    model: LoadedModel
    params: RunParams
    parameters: RunParameters

    def with_settings(self, change: SettingsChange) -> ResolvedRun:
        """The run with ``change`` applied before it starts (a ``set`` of a queued run)."""
        updates = {
            name: getattr(change, name)
            for name in ("quality_threshold", "scale_factor", "check_interval", "cfg")
            if getattr(change, name) is not None
        }
        return ResolvedRun(
            self.model,
            dataclasses.replace(self.params, **updates),
            dataclasses.replace(self.parameters, **updates),
        )

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
            WireVerifierInfo(
                id=info.id,
                description=_clip(info.description, wire.MAX_DESCRIPTION_CHARS),
                components=self._components(info.id),
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

    def resolve(self, start: Start) -> ResolvedRun:
        """Check ``start`` in full and fill in its defaults.

        Raises :class:`~stepwatch.protocol.ProtocolError` with the code and the field.
        """
        model = self._model(start.model)
        verifier = start.verifier or model.defaults.verifier
        if verifier not in self.verifiers:
            raise ProtocolError(
                ErrorCode.UNKNOWN_VERIFIER, f"no verifier {verifier!r} is registered", "verifier"
            )
        self._check_names(model, start)
        self._check_limits(start)
        request = self._engine_params(model, start, verifier)
        try:
            resolved = model.resolve(request)
        except ParamError as exc:
            code = (
                ErrorCode.INVALID_PROMPT if exc.field in PROMPT_FIELDS else ErrorCode.INVALID_VALUE
            )
            raise ProtocolError(code, exc.message, exc.field) from exc
        self._check_resolved(resolved)
        return ResolvedRun(model, resolved, self._parameters(resolved, start.preview_size))

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

    def _check_names(self, model: LoadedModel, start: Start) -> None:
        if start.sampler is not None and start.sampler not in model.samplers:
            raise ProtocolError(
                ErrorCode.UNKNOWN_SAMPLER,
                f"model {model.name!r} has no sampler {start.sampler!r}",
                "sampler",
            )
        if start.scheduler is not None and start.scheduler not in model.schedulers:
            raise ProtocolError(
                ErrorCode.UNKNOWN_SCHEDULER,
                f"model {model.name!r} has no scheduler {start.scheduler!r}",
                "scheduler",
            )

    def _check_limits(self, start: Start) -> None:
        limits = self.limits
        for name in PROMPT_FIELDS:
            if len(getattr(start, name)) > limits.max_prompt_chars:
                raise _invalid(name, f"longer than {limits.max_prompt_chars} characters")
        if not start.prompt.strip():
            raise ProtocolError(
                ErrorCode.INVALID_PROMPT, "say what to draw: the prompt is empty", "prompt"
            )
        for name in ("width", "height"):
            side = getattr(start, name)
            if side is not None and side > limits.max_image_side:
                raise _invalid(name, f"at most {limits.max_image_side} pixels on this server")
            if side is not None and side % SIZE_MULTIPLE:
                raise _invalid(name, f"must be a multiple of {SIZE_MULTIPLE}, got {side}")
        if start.preview_size > limits.max_preview_size:
            raise _invalid(
                "preview_size", f"at most {limits.max_preview_size} pixels on this server"
            )
        if 0 < start.preview_size < MIN_PREVIEW_SIZE:
            raise _invalid("preview_size", f"0 (none) or at least {MIN_PREVIEW_SIZE} pixels")

    def _engine_params(self, model: LoadedModel, start: Start, verifier: str) -> RunParams:
        cfg = start.cfg if start.cfg is not None else default_cfg(model)
        cfg_max = start.cfg_max
        if cfg_max is None:
            # Defaults are filled in first, then the rule cfg <= cfg_max is checked.
            cfg_max = default_cfg_max(model)
            if cfg > cfg_max:
                raise _invalid(
                    "cfg",
                    f"must not exceed cfg_max, which defaults to {cfg_max:g} for this model; "
                    "name a cfg_max to go higher",
                )
        try:
            return RunParams(
                prompt=start.prompt,
                model=model.name,
                negative_prompt=start.negative_prompt,
                seed=start.seed,
                steps=start.steps,
                cfg=cfg,
                sampler=start.sampler,
                scheduler=start.scheduler,
                width=start.width,
                height=start.height,
                verifier=verifier,
                check_interval=start.check_interval,
                quality_threshold=(
                    start.quality_threshold
                    if start.quality_threshold is not None
                    else DEFAULT_THRESHOLD
                ),
                scale_factor=start.scale_factor,
                cfg_max=cfg_max,
                patience=start.patience,
                min_steps=start.min_steps,
                early_stop=start.early_stop,
                preview_size=max(start.preview_size, MIN_PREVIEW_SIZE),
                preview_format=PreviewFormat(start.preview_format),
            )
        except ParamError as exc:
            raise _invalid(exc.field, exc.message) from exc

    def _check_resolved(self, params: RunParams) -> None:
        assert params.steps is not None and params.min_steps is not None
        if params.steps > self.limits.max_steps:
            raise _invalid("steps", f"at most {self.limits.max_steps} on this server")
        if params.min_steps > params.steps:
            raise _invalid("min_steps", f"must not exceed steps ({params.steps})")
        assert params.width is not None and params.height is not None
        for name, side in (("width", params.width), ("height", params.height)):
            if side > self.limits.max_image_side:
                raise _invalid(name, f"at most {self.limits.max_image_side} pixels on this server")

    @staticmethod
    def _parameters(params: RunParams, preview_size: int) -> RunParameters:
        assert params.model is not None and params.seed is not None
        assert params.steps is not None and params.cfg is not None and params.cfg_max is not None
        assert params.sampler is not None and params.scheduler is not None
        assert params.width is not None and params.height is not None
        assert params.verifier is not None and params.min_steps is not None
        return RunParameters(
            model=params.model,
            prompt=params.prompt,
            negative_prompt=params.negative_prompt,
            seed=params.seed,
            steps=params.steps,
            cfg=params.cfg,
            sampler=params.sampler,
            scheduler=params.scheduler,
            width=params.width,
            height=params.height,
            verifier=params.verifier,
            check_interval=params.check_interval,
            quality_threshold=params.quality_threshold,
            scale_factor=params.scale_factor,
            cfg_max=params.cfg_max,
            early_stop=params.early_stop,
            patience=params.patience,
            min_steps=params.min_steps,
            preview_size=preview_size,
            preview_format=params.preview_format.value,
        )

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
        try:
            return SettingsChange(
                quality_threshold=request.quality_threshold,
                scale_factor=request.scale_factor,
                check_interval=request.check_interval,
                cfg=request.cfg,
            )
        except ParamError as exc:
            raise _invalid(exc.field, exc.message) from exc


def default_cfg(model: LoadedModel) -> float:
    """The model's starting CFG, within the protocol's range."""
    return min(max(model.defaults.cfg, wire.MIN_CFG), wire.MAX_CFG)


def default_cfg_max(model: LoadedModel) -> float:
    """The cap on CFG raises a run gets when it names none: twice the default CFG."""
    cfg = default_cfg(model)
    return min(max(cfg, 2 * cfg), wire.MAX_CFG)


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
        default_cfg=default_cfg(model),
        default_cfg_max=default_cfg_max(model),
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
    )


def to_json(value: object) -> object:
    """A protocol part (a frozen dataclass) as plain JSON values, for the HTTP API."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {item.name: to_json(getattr(value, item.name)) for item in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(key): to_json(item) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return [to_json(item) for item in value]
    return value
