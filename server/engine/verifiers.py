"""Verifiers: score decoded previews in [0, 1], and the registry a server keeps them in.

The contract a verifier implements (:class:`Verifier`)::

    score(images: torch.Tensor, prompt: str) -> Sequence[VerifierScore | float]

``images`` is a batch of RGB images, float32, N×3×H×W, values in [0, 1], on the model's device,
at the preview decoder's resolution (the latent's size for ``linear``, the image size for a VAE
or a pixel-space model). It returns one entry per image: a :class:`VerifierScore` (a value in
[0, 1] plus named components, each in [0, 1]) or a bare float. Higher is better. It is called
from the sampler's thread, once per check, and should take a small fraction of a denoising step.
An exception, a wrong count or a value outside [0, 1] fails the run with ``verifier_failed``.

A **custom verifier** is registered by the operator, never by a client, in one of two ways:

- a Python entry point in the group ``stepwatch.verifiers`` of an installed distribution, e.g. in
  its pyproject: ``[project.entry-points."stepwatch.verifiers"] sharp = "mypkg.verify:Sharpness"``
  (loaded by :meth:`VerifierRegistry.load_entry_points`);
- a ``module:callable`` string, optionally ``id=module:callable``, in the server's configuration
  (:meth:`VerifierRegistry.register_spec`).

Either way the named object is a factory: called with no arguments, it returns the verifier. A
class with a no-argument constructor is the usual choice. The registry calls it once, on first
use, and keeps the instance.
"""

from __future__ import annotations

import importlib
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Protocol

import torch

from . import structure
from .errors import VerifierError

ENTRY_POINT_GROUP = "stepwatch.verifiers"
VARIANCE_EDGES = "variance_edges"
#: The original design's name for ``variance_edges``, still accepted.
SIMPLE = "simple"
STRUCTURE = "structure"


@dataclass(frozen=True)
class VerifierScore:
    """One image's score in [0, 1] and the named components it was made of."""

    value: float
    components: Mapping[str, float] = field(default_factory=dict)


class Verifier(Protocol):
    """Scores a batch of RGB images in [0, 1] against a prompt; see the module docstring."""

    def score(self, images: torch.Tensor, prompt: str) -> Sequence[VerifierScore | float]: ...


VerifierFactory = Callable[[], Verifier]


@dataclass(frozen=True)
class VerifierEntry:
    """What a client may learn about a registered verifier."""

    id: str
    description: str
    source: str
    #: The components its checks may report, where they are known before it runs.
    components: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelVerifier:
    """A verifier a model brings with it (the built-in model's prompt-adherence classifier)."""

    info: VerifierEntry
    factory: VerifierFactory


class VarianceEdgeVerifier:
    """Image variance plus edge strength: the original node design's verifier (alias ``simple``).

    With ``Y`` the luminance (0.299 R + 0.587 G + 0.114 B) of an image in [0, 1]::

        variance = min(1, 4 * Var(Y))                 Var(Y) <= 0.25 for values in [0, 1]
        edges    = min(1, mean |grad Y| / 0.1)        forward differences, gradient magnitude
        score    = (variance + edges) / 2

    It knows nothing of the prompt: it rewards contrast and detail at the preview's own
    resolution, and noise is both, so uniform noise outscores a finished picture and the same
    image scores differently through different preview decoders. Kept for compatibility;
    :class:`StructureVerifier` is the default for diffusers models.
    """

    EDGE_SCALE = 0.1

    def score(self, images: torch.Tensor, prompt: str) -> list[VerifierScore]:
        rgb = images.float()
        weights = torch.tensor([0.299, 0.587, 0.114], device=rgb.device).view(1, 3, 1, 1)
        luma = (rgb * weights).sum(dim=1)
        variance = (luma.flatten(1).var(dim=1, unbiased=False) * 4).clamp(max=1.0)
        dx = luma[:, :, 1:] - luma[:, :, :-1]
        dy = luma[:, 1:, :] - luma[:, :-1, :]
        magnitude = (dx[:, :-1, :] ** 2 + dy[:, :, :-1] ** 2).sqrt()
        edges = (magnitude.flatten(1).mean(dim=1) / self.EDGE_SCALE).clamp(max=1.0)
        combined = (variance + edges) / 2
        return [
            VerifierScore(float(s), {"variance": float(v), "edges": float(e)})
            for s, v, e in zip(combined.tolist(), variance.tolist(), edges.tolist(), strict=True)
        ]


class StructureVerifier:
    """Coarse structure times cleanliness, at a fixed analysis resolution: any model, no weights.

    ``structure`` is the strength of the picture's coarse edges and ``clean`` is 1 when no
    fine-scale noise is left (see :mod:`.structure` for both, their constants and how they were
    calibrated); ``score = structure * clean``, so noise sinks the score whatever its contrast,
    a blurry estimate scores below a sharp one, and a flat image scores 0. Every preview is
    resized to the same analysis size first, so the linear decoder's latent-sized preview and a
    VAE's full-sized decode of one picture score nearly alike. It ignores the prompt.
    """

    def score(self, images: torch.Tensor, prompt: str) -> list[VerifierScore]:
        parts = structure.measure(images)
        return [
            VerifierScore(s * c, {"structure": s, "clean": c})
            for s, c in zip(parts.structure.tolist(), parts.clean.tolist(), strict=True)
        ]


STRUCTURE_DESCRIPTION = (
    "coarse edge strength x cleanliness at a fixed 64 px analysis size; noise scores low "
    "(components: structure, clean = 1 when no fine noise is left)"
)
VARIANCE_EDGES_DESCRIPTION = (
    "image variance + edge strength at the preview's resolution: rewards contrast and detail, "
    "and noise scores high"
)
SIMPLE_DESCRIPTION = "the original design's name for variance_edges (variance + edge strength)"
#: The components the verifiers every registry holds report, by id (``welcome`` announces them).
BUILTIN_COMPONENTS: Mapping[str, tuple[str, ...]] = {
    STRUCTURE: ("structure", "clean"),
    VARIANCE_EDGES: ("variance", "edges"),
    SIMPLE: ("variance", "edges"),
}


class VerifierRegistry:
    """The verifiers a server offers, by id. Owned by its caller; there is no global registry.

    ``VerifierRegistry()`` holds ``structure``, ``variance_edges`` and its alias ``simple``; add
    a model's own verifiers with :meth:`register_model_verifiers`, an operator's with
    :meth:`load_entry_points` and :meth:`register_spec`. Thread-safe: runs on several threads
    may share it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._factories: dict[str, tuple[VerifierEntry, VerifierFactory]] = {}
        self._instances: dict[str, Verifier] = {}
        self.register(STRUCTURE, StructureVerifier, STRUCTURE_DESCRIPTION, "builtin")
        self.register(VARIANCE_EDGES, VarianceEdgeVerifier, VARIANCE_EDGES_DESCRIPTION, "builtin")
        self.register(SIMPLE, VarianceEdgeVerifier, SIMPLE_DESCRIPTION, "builtin")

    def register(
        self,
        verifier_id: str,
        factory: VerifierFactory,
        description: str = "",
        source: str = "",
        components: tuple[str, ...] = (),
    ) -> None:
        """Register ``factory`` under ``verifier_id``; an id can be registered once."""
        if not verifier_id or not verifier_id.replace("_", "").replace("-", "").isalnum():
            raise VerifierError(
                f"a verifier id is letters, digits, '-' and '_'; got {verifier_id!r}"
            )
        with self._lock:
            if verifier_id in self._factories:
                raise VerifierError(f"verifier {verifier_id!r} is already registered")
            info = VerifierEntry(verifier_id, description or _summary(factory), source, components)
            self._factories[verifier_id] = (info, factory)

    def register_model_verifiers(self, verifiers: Iterable[ModelVerifier]) -> None:
        """Register the verifiers a loaded model brings (ids already present are kept)."""
        for verifier in verifiers:
            if verifier.info.id not in self:
                info = verifier.info
                self.register(
                    info.id, verifier.factory, info.description, info.source, info.components
                )

    def register_spec(self, spec: str) -> str:
        """Register ``module:callable`` or ``id=module:callable`` and return the id.

        Without an id the callable's name (lower-cased) is the id. A CLIP verifier,
        ``[id=]clip:SOURCE[,aesthetic=PATH]`` (see :mod:`.clipscore`), is loaded at once, so
        that a bad source is refused when the server starts.
        """
        from . import clipscore

        if clipscore.is_clip_spec(spec):
            clip = clipscore.parse_clip_spec(spec)
            verifier = clipscore.ClipScoreVerifier(clip)
            self.register(
                clip.verifier_id, lambda: verifier, clip.description, spec, clip.components
            )
            return clip.verifier_id
        verifier_id, _, target = spec.rpartition("=")
        module_name, _, attribute = target.partition(":")
        if not module_name or not attribute:
            raise VerifierError(f"a verifier spec is [id=]module:callable, got {spec!r}")
        try:
            factory = _resolve(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as exc:
            raise VerifierError(f"cannot load verifier {target!r}: {exc}") from exc
        verifier_id = verifier_id or attribute.rpartition(".")[2].lower()
        self.register(verifier_id, factory, source=target)
        return verifier_id

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> tuple[str, ...]:
        """Register every verifier installed under the entry point ``group``; return their ids."""
        added = []
        for entry in entry_points(group=group):
            try:
                factory = entry.load()
            except Exception as exc:  # any import error in third-party code
                raise VerifierError(
                    f"cannot load verifier entry point {entry.value!r}: {exc}"
                ) from exc
            self.register(entry.name, factory, source=f"entry point {entry.value}")
            added.append(entry.name)
        return tuple(added)

    def __contains__(self, verifier_id: object) -> bool:
        with self._lock:
            return verifier_id in self._factories

    def infos(self) -> tuple[VerifierEntry, ...]:
        """Every registered verifier, sorted by id."""
        with self._lock:
            return tuple(info for _, (info, _f) in sorted(self._factories.items()))

    def get(self, verifier_id: str) -> Verifier:
        """Return the verifier ``verifier_id``, making it on first use."""
        with self._lock:
            if verifier_id in self._instances:
                return self._instances[verifier_id]
            if verifier_id not in self._factories:
                known = ", ".join(sorted(self._factories))
                raise VerifierError(f"unknown verifier {verifier_id!r}; one of {known}")
            _, factory = self._factories[verifier_id]
            try:
                verifier = factory()
            except Exception as exc:  # third-party construction code
                raise VerifierError(f"verifier {verifier_id!r} failed to start: {exc}") from exc
            self._instances[verifier_id] = verifier
            return verifier


def score_batch(verifier: Verifier, images: torch.Tensor, prompt: str) -> list[VerifierScore]:
    """Call ``verifier`` and hold its answer to the contract, or raise :class:`VerifierError`."""
    try:
        raw = list(verifier.score(images, prompt))
    except (torch.OutOfMemoryError, MemoryError):
        raise  # the device is full, which is no fault of the verifier's
    except Exception as exc:  # a verifier's own failure, whatever it is
        raise VerifierError(f"{type(exc).__name__}: {exc}") from exc
    if len(raw) != images.shape[0]:
        raise VerifierError(f"returned {len(raw)} scores for {images.shape[0]} images")
    return [_checked(item) for item in raw]


def _checked(item: VerifierScore | float) -> VerifierScore:
    # The boundary where a verifier's answer is received: whatever it is, a wrong one is the
    # verifier's failure (verifier_failed), never the server's.
    try:
        score = item if isinstance(item, VerifierScore) else VerifierScore(float(item))
        values = [("score", score.value), *score.components.items()]
    except (TypeError, ValueError, AttributeError) as exc:
        raise VerifierError(
            f"a score must be a number or a VerifierScore, got {item!r:.100}"
        ) from exc
    for name, value in values:
        if not isinstance(name, str):
            raise VerifierError(f"a component name must be a string, got {name!r:.100}")
        if not isinstance(value, int | float) or not math.isfinite(value) or not 0 <= value <= 1:
            raise VerifierError(f"{name} must be a number in [0, 1], got {value!r}")
    return VerifierScore(float(score.value), {k: float(v) for k, v in score.components.items()})


def _resolve(module: object, dotted: str) -> VerifierFactory:
    target = module
    for part in dotted.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise AttributeError(f"{dotted} is not callable")
    factory: VerifierFactory = target
    return factory


def _summary(factory: object) -> str:
    doc = getattr(factory, "__doc__", None) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""
