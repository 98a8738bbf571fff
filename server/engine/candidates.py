"""A search's candidates: each one's lane in the batch, and what a check says of them.

:class:`Lane` is one candidate's place in the batch (its generator, scores and lineage);
:func:`check_event` is a check's event for every live candidate, with each one's thumbnail
sized by :func:`candidate_preview_size`; :func:`search_refusal` says which pipelines cannot
re-index their batch for a strategy.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from stepwatch.protocol import (
    CandidateScore,
    Check,
    HistoryEntry,
    RunParameters,
    SearchSettings,
)

from .events import fit_cfg, fit_score, fit_text
from .lanes import REINDEXABLE
from .model import LoadedModel
from .params import MIN_PREVIEW_SIZE
from .previews import encode_thumbnail, to_uint8
from .strategies import Plan

__all__ = ["Lane", "candidate_preview_size", "check_event", "compose_orders", "search_refusal"]


@dataclasses.dataclass
class Lane:
    """One candidate's place in the batch: its generator, its scores, its fate."""

    candidate: int
    generator: torch.Generator
    history: list[HistoryEntry] = dataclasses.field(default_factory=list)
    best: float = 0.0
    lineage: list[int] = dataclasses.field(default_factory=list)

    def copy_as(self, candidate: int, generator: torch.Generator) -> Lane:
        """A copy of this lane in another candidate's slot (FK resampling)."""
        return Lane(
            candidate, generator, list(self.history), self.best, [*self.lineage, self.candidate]
        )


def search_refusal(model: LoadedModel, settings: SearchSettings) -> str:
    """Why ``model`` cannot run ``settings``' strategy (empty when it can)."""
    if settings.strategy == "best_of_n":
        return ""
    if type(model.pipeline).__name__ not in REINDEXABLE:
        return (
            f"{type(model.pipeline).__name__} may keep per-candidate state outside its step "
            f"callback and denoiser, so {settings.strategy} cannot re-index its batch; "
            "use best_of_n"
        )
    return ""


def candidate_preview_size(preview_size: int, live: int) -> int:
    """The longest side of each candidate's thumbnail in a check: ``preview_size`` shared out
    so that all of them together cover about the area of one preview (0: none)."""
    if preview_size == 0:
        return 0
    return max(MIN_PREVIEW_SIZE, preview_size // math.ceil(math.sqrt(live)))


def check_event(
    params: RunParameters,
    settings: SearchSettings,
    step: int,
    cfg: float,
    candidates: list[int],
    images: torch.Tensor,
    scores: list[float],
    components: list[dict[str, float]],
    decided: Plan,
) -> Check:
    """The check of a search at ``step``: every live candidate's score and thumbnail (in batch
    order, ``candidates`` their numbers) and its fate by ``decided``; the best one's score and
    preview stand for the run."""
    live = len(candidates)
    kept = set(decided.order)
    best = max(range(live), key=lambda i: (scores[i], -i))
    pixels = to_uint8(images) if params.preview_size else []
    size = candidate_preview_size(params.preview_size, live)
    entries = []
    for position, candidate in enumerate(candidates):
        fate: Any = "live"
        parent = None
        if position not in kept:
            fate = "pruned" if len(decided.order) < live else "resampled"
        if len(decided.order) == live and decided.order[position] != position:
            fate, parent = "resampled", candidates[decided.order[position]]
        preview = encode_thumbnail(pixels[position], size, params.preview_format) if size else None
        entries.append(
            CandidateScore(candidate, scores[position], components[position], fate, parent, preview)
        )
    main = (
        encode_thumbnail(pixels[best], params.preview_size, params.preview_format)
        if params.preview_size
        else None
    )
    return Check(
        step=step,
        score=scores[best],
        components=components[best],
        threshold=fit_score(params.quality_threshold),
        decision="continue",
        reason=fit_text(f"search {settings.strategy}: {decided.reason}"),
        cfg=fit_cfg(cfg),
        preview=main,
        candidates=tuple(entries),
    )


def compose_orders(first: tuple[int, ...] | None, then: tuple[int, ...]) -> tuple[int, ...]:
    """The order ``then`` applied after ``first`` (positions into the batch before both)."""
    return then if first is None else tuple(first[i] for i in then)
