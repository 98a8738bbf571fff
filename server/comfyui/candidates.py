"""Best-of-N in the InferenceScalingNode: the seeds, the checks and the choice of N candidates.

A node with ``candidates`` N > 1 denoises N candidates as one batch of ComfyUI's sampler
(:func:`~stepwatch.server.comfyui.sampling.sample_candidates`). Candidate *i* starts from the
noise of ``seed + i`` (:func:`candidate_seeds`), exactly as a lone run of that seed would, and a
:class:`CandidateWatch` scores every candidate with the verifier in one call at each check
(every ``check_interval`` steps, and always at the last step). The result is the candidate with
the best final score (its last check's; ties go to the lower number), chosen with the service's
own rule (:func:`~stepwatch.server.engine.strategies.prune_keep` keeping one), so a node's
best-of-N picks what ``stepwatch generate --candidates N`` would.

The node offers ``best_of_n`` only: every candidate runs to the end. Pruning or Feynman–Kac
resampling inside ComfyUI's k-diffusion samplers would need the sampler's own state (the
multistep history its function keeps in local variables) re-indexed, which the sampler does not
expose; masking a pruned candidate's rows would still compute them, so the node does not
pretend to. As in the service's search, the single-run policy (CFG raises, early stop) does not
act: every candidate samples at the node's ``cfg`` to the last step.

This module imports torch and the engine but not ComfyUI, so it is tested on its own.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from stepwatch.protocol import Check
from stepwatch.server.engine.errors import VerifierError
from stepwatch.server.engine.events import fit_cfg, fit_components, fit_score
from stepwatch.server.engine.strategies import candidate_seed, prune_keep
from stepwatch.server.engine.verifiers import Verifier, score_batch

from .adapter import NodeError

__all__ = ["STRATEGY", "CandidateWatch", "candidate_seeds"]

#: The one search strategy the node offers (see the module docstring).
STRATEGY = "best_of_n"
#: The service's seeds are 32-bit; ComfyUI's seed input goes to 2**64 - 1.
_SERVICE_SEEDS = 2**32
_COMFY_SEEDS = 2**64


def candidate_seeds(seed: int, candidates: int) -> list[int]:
    """The seed of each candidate: ``seed + i``, the seed a lone ComfyUI run of candidate *i*
    would be given. Within the service's 32-bit range this is the service's
    :func:`~stepwatch.server.engine.strategies.candidate_seed`; above it the node wraps at
    ComfyUI's 2**64 instead of the service's 2**32, so that candidate 0 is always ``seed``."""
    seeds = []
    for i in range(candidates):
        if seed + i < _SERVICE_SEEDS:
            seeds.append(candidate_seed(seed, i))
        else:
            seeds.append((seed + i) % _COMFY_SEEDS)
    return seeds


@dataclass
class CandidateWatch:
    """The checks of one best-of-N node execution: every candidate scored at every check.

    Made per node execution and used from ComfyUI's sampling thread only. ``histories[i]`` is
    candidate *i*'s checks in the protocol's words (decision ``continue``: no policy acts).
    """

    verifier: Verifier
    verifier_name: str
    seeds: list[int]
    steps: int
    cfg: float
    check_interval: int
    quality_threshold: float
    prompt: str = ""
    clock: Callable[[], float] = time.monotonic
    histories: list[list[Check]] = field(default_factory=list)
    #: Seconds from the start of the run to each check.
    elapsed: list[float] = field(default_factory=list)
    verifier_calls: int = 0
    started: float = 0.0

    def __post_init__(self) -> None:
        self.histories = [[] for _ in self.seeds]
        self.started = self.clock()

    @property
    def candidates(self) -> int:
        """How many candidates the batch holds."""
        return len(self.seeds)

    def due(self, step: int) -> bool:
        """Whether ``step`` (1-based: steps done) is a check step: every ``check_interval``
        steps and the last step, where the final scores come from."""
        return step % self.check_interval == 0 or step == self.steps

    def check(self, step: int, images: torch.Tensor) -> list[float]:
        """Score ``images`` (one N×3×H×W batch in candidate order, in [0, 1]) in one verifier
        call after ``step`` steps; return the scores."""
        try:
            scores = score_batch(self.verifier, images, self.prompt)
        except VerifierError as exc:
            raise NodeError(f"stepwatch: verifier {self.verifier_name} failed: {exc}") from exc
        if len(scores) != self.candidates:
            raise NodeError(
                f"stepwatch: {self.candidates} candidates decoded to {len(scores)} images"
            )
        self.verifier_calls += 1
        best = self.leader(scores=[score.value for score in scores])
        for i, (history, score) in enumerate(zip(self.histories, scores, strict=True)):
            reason = "best so far" if i == best else f"candidate {best} leads"
            history.append(
                Check(
                    step=step,
                    score=fit_score(score.value),
                    components=fit_components(score.components),
                    threshold=fit_score(self.quality_threshold),
                    decision="continue",
                    reason=reason,
                    cfg=fit_cfg(self.cfg),
                    preview=None,
                )
            )
        self.elapsed.append(self.clock() - self.started)
        return [history[-1].score for history in self.histories]

    def final_scores(self) -> list[float]:
        """Each candidate's final score: its last check's (0 before any check)."""
        return [history[-1].score if history else 0.0 for history in self.histories]

    def leader(self, scores: list[float] | None = None) -> int:
        """The candidate the service's ``best`` rule picks by ``scores`` (by default the final
        scores): the highest, ties to the lower number."""
        (best,) = prune_keep(self.final_scores() if scores is None else scores, 0.0)
        return best

    def summary(self, step: int, total: int) -> str:
        """The progress text of a check: every candidate's score, the leader marked."""
        scores = self.final_scores()
        best = self.leader()
        parts = [f"{'*' if i == best else ''}#{i} {score:.3f}" for i, score in enumerate(scores)]
        return f"step {step}/{total}: {STRATEGY} of {self.candidates}: " + ", ".join(parts)

    def history_json(self, steps_run: int) -> str:
        """The quality history as the node's STRING output: the chosen candidate's checks under
        ``checks`` (the single run's shape), every candidate's under ``candidates``."""
        chosen = self.leader()
        scores = self.final_scores()
        return json.dumps(
            {
                "verifier": self.verifier_name,
                "finish": "completed",
                "steps": self.steps,
                "steps_run": steps_run,
                "final_cfg": self.cfg,
                "strategy": STRATEGY,
                "chosen": chosen,
                "seed": self.seeds[chosen],
                "verifier_calls": self.verifier_calls,
                "checks": [
                    {**_check_json(record), "elapsed": round(elapsed, 4)}
                    for record, elapsed in zip(self.histories[chosen], self.elapsed, strict=True)
                ],
                "candidates": [
                    {
                        "candidate": i,
                        "seed": seed,
                        "final_score": scores[i],
                        "fate": "chosen" if i == chosen else "finished",
                        "checks": [_check_json(record) for record in history],
                    }
                    for i, (seed, history) in enumerate(
                        zip(self.seeds, self.histories, strict=True)
                    )
                ],
            },
            indent=2,
        )


def _check_json(record: Check) -> dict[str, object]:
    return {
        "step": record.step,
        "score": record.score,
        "components": dict(record.components),
        "threshold": record.threshold,
        "decision": record.decision,
        "reason": record.reason,
        "cfg": record.cfg,
    }
