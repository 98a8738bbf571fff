"""The words of a search run: many candidates of one prompt, pruned or resampled by the verifier.

A ``start`` with ``candidates`` N > 1 asks for a search: N candidates denoised as one batch,
candidate *i* seeded with ``seed + i`` (so candidate *i* is the single run of that seed). Its
``search`` names the strategy and its settings (:class:`SearchSettings`); each ``check`` then
carries every candidate's score (``CandidateScore``) and ``finished`` every candidate's
outcome (``CandidateResult``) and the compute the search spent (``SearchCompute``), all in
:mod:`.server_messages`.
Every field here is optional on the wire: a run of one candidate looks exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Final, Literal, TypeAlias, get_args

from . import limits
from .schema import ADDED, Length, Range

__all__ = [
    "ADDED",
    "DEFAULT_SEARCH",
    "CandidateFate",
    "CandidateIndex",
    "Candidates",
    "Fraction",
    "ImagesRule",
    "SEARCH_SETTINGS",
    "STRATEGY_SETTINGS",
    "SearchSetting",
    "SearchSettingChange",
    "SearchSettings",
    "SearchStrategy",
    "SelectRule",
    "all_images_fit",
]

#: ``best_of_n``: every candidate runs to the end, the best is kept. ``prune``: at checks the
#: lower-scoring candidates stop (see :class:`SearchSettings`). ``fk``: Feynman–Kac resampling.
SearchStrategy: TypeAlias = Literal["best_of_n", "prune", "fk"]
#: ``best``: the candidate with the best final score is the result; ``first``: the
#: lowest-numbered candidate still running at the end.
SelectRule: TypeAlias = Literal["best", "first"]
#: ``live``: still denoising; ``pruned``: stopped at this check; ``resampled``: replaced at this
#: check by a copy of ``parent``; ``finished``: ran to the end; ``chosen``: the result.
CandidateFate: TypeAlias = Literal["live", "pruned", "resampled", "finished", "chosen"]
#: ``chosen``: ``finished`` carries the chosen candidate's image only; ``all``: every finished
#: candidate's too (``CandidateResult.image``).
ImagesRule: TypeAlias = Literal["chosen", "all"]
#: The settings of :class:`SearchSettings` a ``set`` may change while a search goes on.
SearchSetting: TypeAlias = Literal[
    "keep_fraction", "prune_every", "fk_lambda", "resample_every", "ess_threshold"
]
#: Every :data:`SearchSetting`, in order.
SEARCH_SETTINGS: Final[tuple[str, ...]] = get_args(SearchSetting)
#: The search settings each strategy uses; a ``set`` of any other is refused.
STRATEGY_SETTINGS: Final[dict[str, tuple[str, ...]]] = {
    "best_of_n": (),
    "prune": ("keep_fraction", "prune_every"),
    "fk": ("fk_lambda", "resample_every", "ess_threshold"),
}
#: How many candidates a run denoises at once.
Candidates: TypeAlias = Annotated[int, Range(1, limits.MAX_CANDIDATES)]
#: A candidate's number, 0 to ``candidates`` - 1.
CandidateIndex: TypeAlias = Annotated[int, Range(0, limits.MAX_CANDIDATES - 1)]
#: A share, 0 to 1.
Fraction: TypeAlias = Annotated[float, Range(0.0, 1.0)]
#: Feynman–Kac's λ: how sharply the potential favours higher scores.
Sharpness: TypeAlias = Annotated[float, Range(0.0, limits.MAX_FK_LAMBDA)]
Every: TypeAlias = Annotated[int, Range(1, limits.MAX_STEPS)]
#: The steps a ``prune`` schedule prunes at, 1-based, at most one per candidate.
PruneSteps: TypeAlias = Annotated[
    tuple[Annotated[int, Range(1, limits.MAX_STEPS)], ...], Length(0, limits.MAX_CANDIDATES)
]


@dataclass(frozen=True, slots=True)
class SearchSettings:
    """How a search run spends its candidates.

    ``prune``: at every ``prune_every``-th check (before the last step) the live candidates are
    ranked by score and the best ``ceil(keep_fraction × live)`` (at least one) go on; the rest
    stop and cost nothing more. With the defaults, 8 candidates checked every 5 of 20 steps run
    8, 4, 2 and 1 lanes. ``keep_top`` k keeps the best k instead (fewer when fewer are live).
    ``prune_steps`` is a schedule: prune at those steps only (the search checks there whatever
    its ``check_interval``), ``prune_every`` ignored; 8 candidates with ``keep_top`` 1 and
    ``prune_steps`` (3,) run 8 lanes for three steps and one after.

    ``images``: ``all`` puts every finished candidate's final image into ``finished`` (see
    :func:`all_images_fit` for what fits in one frame).

    ``fk``: Feynman–Kac steering (Singhal et al. 2025, "A General Framework for Inference-time
    Scaling and Steering of Diffusion Models"). At every ``resample_every``-th check each
    candidate's potential is exp(``fk_lambda`` × max(r, r_prev)), r its score now and r_prev
    the best it had; when the effective sample size of the normalised potentials falls below
    ``ess_threshold`` × k, k candidates are drawn from them (multinomial, with replacement) and
    each slot continues from its drawn parent's state. The batch keeps k lanes.
    """

    strategy: SearchStrategy = "best_of_n"
    keep_fraction: Fraction = 0.5
    prune_every: Every = 1
    fk_lambda: Sharpness = 10.0
    resample_every: Every = 1
    ess_threshold: Fraction = 0.5
    select: SelectRule = "best"
    keep_top: Candidates | None = field(default=None, metadata=ADDED)
    prune_steps: PruneSteps = field(default=(), metadata=ADDED)
    images: ImagesRule = field(default="chosen", metadata=ADDED)


DEFAULT_SEARCH: Final = SearchSettings()

#: What one PNG may take beyond its pixels (signature, chunks, zlib's stored-block headers).
PNG_OVERHEAD_BYTES: Final = 4096
#: Room left in a ``finished`` frame for everything but its images (history, candidates).
FINISHED_ROOM_BYTES: Final = 1024 * 1024


def all_images_fit(candidates: int, width: int, height: int) -> bool:
    """Whether ``finished`` holds the final images of ``candidates`` candidates of
    ``width`` × ``height`` in one frame, each an incompressible RGB PNG at worst (``images``
    ``all``; the server refuses a ``start`` for which this is false)."""
    worst = width * height * 3 + height + PNG_OVERHEAD_BYTES
    return candidates * worst + FINISHED_ROOM_BYTES <= limits.MAX_SERVER_FRAME_BYTES


@dataclass(frozen=True, slots=True)
class SearchSettingChange:
    """One search setting's value before and after a ``set``."""

    setting: SearchSetting
    old: float
    new: float
