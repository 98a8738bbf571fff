"""The one place the ComfyUI nodes reach into stepwatch's engine.

The nodes never score, decide or record on their own: they hand each x0 preview to a
:class:`QualityWatch`, which calls the engine. Everything the nodes use of the engine is here:

- :mod:`stepwatch.server.engine.verifiers`: ``VerifierRegistry`` (``load_entry_points``,
  ``register_spec``, ``infos``, ``get``, ``in``), ``score_batch``, ``SIMPLE``;
- :mod:`stepwatch.server.engine.policy`: ``decide`` with ``PolicySettings`` (and the
  expected-score curve the nodes learn, :mod:`.history`) and a history of ``Scored`` checks,
  returning a ``PolicyDecision``; ``CFG_OFF_AT``;
- :mod:`stepwatch.server.engine.params`: ``DEFAULT_THRESHOLD`` and ``default_cfg_max``;
- :mod:`stepwatch.server.engine.previews`: ``LinearPreview`` and ``to_uint8``;
- :mod:`stepwatch.server.engine.errors`: ``VerifierError``.

The checks are kept in the protocol's words (``Check``, ``Decision``), and the defaults of the
settings the nodes expose are the protocol's (``start``'s). This module imports torch and the
engine but not ComfyUI, so it is tested on its own.

A **verifier id** is the string :class:`VerifierSelection` hands from one node to the other:
``ID@THRESHOLD``, where ``ID`` is a registered verifier's id (``simple``, the entry points
installed in ComfyUI's Python) or a custom ``module:callable``, e.g. ``simple@0.70`` or
``mypkg.verify:Sharpness@0.55``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from stepwatch.protocol import Check, Decision, Start
from stepwatch.server.engine.curves import ExpectedCurve
from stepwatch.server.engine.errors import VerifierError
from stepwatch.server.engine.events import fit_cfg, fit_components, fit_score, fit_text
from stepwatch.server.engine.params import DEFAULT_THRESHOLD, default_cfg_max
from stepwatch.server.engine.policy import (
    CFG_OFF_AT,
    PolicyDecision,
    PolicySettings,
    Scored,
    decide,
)
from stepwatch.server.engine.previews import LatentFactors, LinearPreview, to_uint8
from stepwatch.server.engine.verifiers import SIMPLE, Verifier, VerifierRegistry, score_batch

__all__ = [
    "CUSTOM",
    "DEFAULTS",
    "DEFAULT_THRESHOLD",
    "Decision",
    "NodeError",
    "QualityWatch",
    "VerifierSelection",
    "WatchSettings",
    "linear_preview",
    "make_registry",
    "to_uint8",
    "verifier_choices",
]

#: The ``verifier_type`` that takes a ``module:callable`` from the node's ``custom_verifier``.
CUSTOM = "custom"
#: The protocol's defaults for the settings the nodes expose (a ``start`` that names none).
DEFAULTS = Start(request_id="comfyui", prompt="-")


class NodeError(Exception):
    """A node cannot go on; the message is what ComfyUI shows the user."""


def make_registry() -> VerifierRegistry:
    """The verifiers a ComfyUI process offers: ``simple`` and the installed entry points."""
    registry = VerifierRegistry()
    try:
        registry.load_entry_points()
    except VerifierError as exc:
        raise NodeError(f"stepwatch: {exc}") from exc
    return registry


def verifier_choices(registry: VerifierRegistry) -> list[str]:
    """The ``verifier_type`` options: every registered id, ``simple`` first, then ``custom``."""
    ids = [info.id for info in registry.infos()]
    ids.sort(key=lambda verifier_id: (verifier_id != SIMPLE, verifier_id))
    return [*ids, CUSTOM]


@dataclass(frozen=True)
class VerifierSelection:
    """A verifier and its quality threshold, as one ``verifier_id`` string."""

    verifier: str
    quality_threshold: float

    @classmethod
    def choose(
        cls, verifier_type: str, quality_threshold: float, custom_verifier: str = ""
    ) -> VerifierSelection:
        """The selection :class:`VerifierSelectionNode` makes from its inputs."""
        if verifier_type == CUSTOM:
            spec = custom_verifier.strip()
            if not spec:
                raise NodeError("stepwatch: verifier_type custom needs custom_verifier")
            if ":" not in spec or "@" in spec:
                raise NodeError(
                    f"stepwatch: custom_verifier is module:callable, got {custom_verifier!r}"
                )
            return cls(spec, _threshold(quality_threshold))
        return cls(verifier_type, _threshold(quality_threshold))

    @classmethod
    def parse(cls, verifier_id: str) -> VerifierSelection:
        """Read a ``verifier_id``; raise :class:`NodeError` when it is not one."""
        name, at, threshold = verifier_id.strip().rpartition("@")
        try:
            value = float(threshold)
        except ValueError:
            value = -1.0
        if not at or not name or not 0.0 <= value <= 1.0:
            raise NodeError(
                f"stepwatch: a verifier_id is ID@THRESHOLD (from VerifierSelectionNode), "
                f"got {verifier_id!r}"
            )
        return cls(name, value)

    def __str__(self) -> str:
        return f"{self.verifier}@{self.quality_threshold:.4g}"

    def resolve(self, registry: VerifierRegistry) -> Verifier:
        """The verifier, registering a custom ``module:callable`` first."""
        try:
            verifier_id = self.verifier
            if ":" in verifier_id:
                verifier_id = registry.register_spec(f"{CUSTOM}={verifier_id}")
            return registry.get(verifier_id)
        except VerifierError as exc:
            raise NodeError(f"stepwatch: {exc}") from exc


def _threshold(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise NodeError(f"stepwatch: quality_threshold must be in [0, 1], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class WatchSettings:
    """What the InferenceScalingNode's inputs ask of the policy."""

    steps: int
    cfg: float
    check_interval: int = DEFAULTS.check_interval
    quality_threshold: float = DEFAULT_THRESHOLD
    scale_factor: float = DEFAULTS.scale_factor
    cfg_max: float = 0.0
    early_stop: bool = False
    patience: int = DEFAULTS.patience
    min_steps: int = 0
    #: What this model usually scores with this verifier and sampler (see :mod:`.history`).
    curve: ExpectedCurve | None = None

    def policy(self) -> PolicySettings:
        """The engine's settings; ``cfg_max`` 0 means twice the starting CFG."""
        cfg_max = self.cfg_max if self.cfg_max > 0 else default_cfg_max(self.cfg)
        return PolicySettings(
            quality_threshold=self.quality_threshold,
            scale_factor=self.scale_factor,
            cfg_max=max(cfg_max, self.cfg),
            patience=self.patience,
            min_steps=self.min_steps if self.min_steps > 0 else self.steps // 2,
            early_stop=self.early_stop,
            guidance_on=self.cfg > CFG_OFF_AT,
            curve=self.curve,
        )


@dataclass
class QualityWatch:
    """One sampling run's checks: score each x0 preview, ask the policy, keep the history.

    Made per node execution and used from ComfyUI's sampling thread only. ``cfg`` is the
    guidance scale in use; a raise changes it and the node's CFG function reads it at the next
    model call.
    """

    verifier: Verifier
    verifier_name: str
    settings: WatchSettings
    prompt: str = ""
    clock: Callable[[], float] = time.monotonic
    #: Every check so far, in the protocol's words (without previews).
    history: list[Check] = field(default_factory=list)
    #: Seconds from the start of the run to each check.
    elapsed: list[float] = field(default_factory=list)
    cfg: float = 0.0
    started: float = 0.0

    def __post_init__(self) -> None:
        self.cfg = self.settings.cfg
        self.started = self.clock()
        self._policy = self.settings.policy()

    def due(self, step: int) -> bool:
        """Whether ``step`` (1-based: steps done) is a check step."""
        return step % self.settings.check_interval == 0

    def check(self, step: int, images: torch.Tensor) -> PolicyDecision:
        """Score ``images`` (N×3×H×W in [0, 1]; the first is scored) after ``step`` steps."""
        try:
            score = score_batch(self.verifier, images[:1], self.prompt)[0]
        except VerifierError as exc:
            raise NodeError(f"stepwatch: verifier {self.verifier_name} failed: {exc}") from exc
        components = fit_components(score.components)
        history: Sequence[Scored] = [*self.history, _Scored(step, score.value, components)]
        decision = decide(history, self._policy, cfg=self.cfg, total_steps=self.settings.steps)
        self.history.append(
            Check(
                step=step,
                score=fit_score(score.value),
                components=components,
                threshold=fit_score(self._policy.quality_threshold),
                decision=decision.decision,
                reason=fit_text(decision.reason),
                cfg=fit_cfg(self.cfg),
                preview=None,
            )
        )
        self.elapsed.append(self.clock() - self.started)
        if decision.decision == "raise_cfg":
            self.cfg = decision.cfg
        return decision

    def history_json(self, finish: str, steps_run: int) -> str:
        """The quality history as the node's STRING output."""
        return json.dumps(
            {
                "verifier": self.verifier_name,
                "finish": finish,
                "steps": self.settings.steps,
                "steps_run": steps_run,
                "final_cfg": self.cfg,
                "checks": [
                    {
                        "step": record.step,
                        "score": record.score,
                        "components": dict(record.components),
                        "threshold": record.threshold,
                        "decision": record.decision,
                        "reason": record.reason,
                        "cfg": record.cfg,
                        "elapsed": round(elapsed, 4),
                    }
                    for record, elapsed in zip(self.history, self.elapsed, strict=True)
                ],
            },
            indent=2,
        )


@dataclass(frozen=True)
class _Scored:
    step: int
    score: float
    components: Mapping[str, float]


def linear_preview(
    factors: Sequence[Sequence[float]], bias: Sequence[float] | None
) -> LinearPreview:
    """The engine's linear preview decoder with a model family's latent-to-RGB table."""
    weights = tuple((float(row[0]), float(row[1]), float(row[2])) for row in factors)
    offsets = (0.0, 0.0, 0.0) if bias is None else (float(bias[0]), float(bias[1]), float(bias[2]))
    table: LatentFactors = (weights, offsets)
    return LinearPreview(table)
