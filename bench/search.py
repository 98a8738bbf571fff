"""Inference-time search on the built-in model: judged quality against denoiser evaluations.

Settings with headroom: full four-attribute prompts, CFG 1 (no guidance: one denoiser
evaluation per candidate and step), 10 steps of ``euler_a`` (stochastic, so Feynman–Kac's
resampled copies diverge from their parents). A single run's held-out judged joint accuracy is
68–83% there, by the seeds drawn (CFG 1.5 is 98% on every sampler, see ``bench/policy.py``:
no headroom).

Every instance (prompt, seed) has its own seed, ``SEED_STRIDE`` apart, so no two instances
share a starting noise (the outcome of a candidate depends on its noise as much as on its
prompt: sharing seeds across prompts would leave a handful of independent draws). For every
instance it runs, through :func:`run_monitored` (the real engine, one batch per search):

- ``single``: one run (checked every 2 steps; the judge scores its image);
- ``best_of_n`` N = 2, 4, 8: every candidate to the end, checked only at the last step, the
  verifier's best kept;
- ``prune`` at several budgets: every check (``keep_fraction``) and on schedules
  (``prune_steps``, ``keep_top``, checked only where they prune and at the end), and ``fk``
  (see :data:`METHODS`);
- the predictiveness pass (:mod:`search_ranks`): best-of-8 checked at every step and every
  candidate judged, to tell at which step the verifier's ranking starts to mean something.

Per method: mean denoiser evaluations (rows the UNet evaluated, as ``finished.compute`` counts
them) and their ratio to best-of-8's, mean verifier calls and preview decodes (the verifier's
own cost), wall time per instance (median [q1, q3]), the held-out **judge**'s joint accuracy of
the chosen image with its 95% bootstrap interval over instances (the judge never steers) and its
**fidelity** to the full single run of the chosen candidate's seed (PSNR, SSIM; best-of-N and
prune pick a candidate unchanged, FK's copies differ), beside a no-reference noise level.
Prints the tables and writes ``bench/results/search.json``::

    nice -n 10 .venv/bin/python bench/search.py [--prompts 48] [--seeds 1] [--threads 1]
    nice -n 10 .venv/bin/python bench/search.py --quick   # 12 prompts x 1 seed, a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from _service import Machine, percentile, print_table, write_results
from policy import PSNR_CAP, as_tensor, prompts
from search_ranks import bootstrap_interval, first_predictive_step, step_table

from stepwatch.protocol import Check, Finished, SearchSettings
from stepwatch.server.engine.control import RunControl
from stepwatch.server.engine.fidelity import noise_level, psnr, ssim
from stepwatch.server.engine.monitor import run_monitored
from stepwatch.server.engine.params import RequestedParams
from stepwatch.server.engine.strategies import candidate_seed
from stepwatch.server.engine.verifiers import VerifierRegistry
from stepwatch.server.models.builtin import Judge
from stepwatch.server.models.loading import DEFAULT_MODEL, ModelSpec, load_model

STEPS = 10
CFG = 1.0
SAMPLER = "euler_a"
#: Seeds of one prompt's instances are this far apart, so no two instances share a candidate.
SEED_STRIDE = 1000


@dataclass(frozen=True)
class Method:
    name: str
    candidates: int
    check_interval: int
    search: SearchSettings | None = None


def scheduled(candidates: int, steps: tuple[int, ...], keep_top: int | None = None) -> Method:
    """A prune on a schedule, checked only at the steps it prunes at and at the last."""
    name = f"prune_{candidates}_at_{'_'.join(map(str, steps))}" + (
        f"_top{keep_top}" if keep_top else ""
    )
    settings = SearchSettings("prune", keep_fraction=0.5, keep_top=keep_top, prune_steps=steps)
    return Method(name, candidates, STEPS, settings)


METHODS = (
    Method("single", 1, 2),
    Method("best_of_2", 2, STEPS, SearchSettings("best_of_n")),
    Method("best_of_4", 4, STEPS, SearchSettings("best_of_n")),
    Method("best_of_8", 8, STEPS, SearchSettings("best_of_n")),
    # prune at every check, 4 -> 1 at step 1 (the best of the earlier measurement at <= 0.25x)
    Method("prune_4_keep25_every1", 4, 1, SearchSettings("prune", keep_fraction=0.25)),
    # prune schedules at <= 20 evaluations (0.25x): N lanes to step s, one after (N*s + 10 - s);
    # 4 -> 2 at step 1 -> 1 at step 8 (4 + 2*7 + 2 = 20).
    scheduled(2, (8,), keep_top=1),
    scheduled(3, (5,), keep_top=1),
    scheduled(4, (3,), keep_top=1),
    scheduled(4, (1, 8)),
    # above the budget, for the curve: 8 -> 1 at step 4 (38), 4 -> 1 at step 7 (31)
    scheduled(8, (4,), keep_top=1),
    scheduled(4, (7,), keep_top=1),
    # FK: k lanes throughout; k = 2 resamples whenever the scores differ.
    Method("fk_2", 2, 2, SearchSettings("fk", fk_lambda=10.0, ess_threshold=1.0)),
    Method("fk_4", 4, 2, SearchSettings("fk", fk_lambda=10.0, ess_threshold=0.5)),
)
#: The predictiveness pass: best-of-8 checked at every step (its scores, not its result).
EVERY_STEP = Method("best_of_8_every_step", 8, 1, SearchSettings("best_of_n"))


@dataclass(frozen=True)
class Row:
    method: str
    candidates: int
    runs: int
    joint: float
    joint_low: float
    joint_high: float
    evaluations_mean: float
    evaluations_vs_best_of_8: float
    verifier_calls_mean: float
    preview_decodes_mean: float
    seconds_median: float
    seconds_q1: float
    seconds_q3: float
    psnr_median: float
    ssim_median: float
    noise_median: float


def request(text: str, seed: int, method: Method) -> RequestedParams:
    return RequestedParams(
        text, seed=seed, steps=STEPS, cfg=CFG, sampler=SAMPLER, early_stop=False,
        scale_factor=1.0, check_interval=method.check_interval, candidates=method.candidates,
        search=method.search, preview_size=0,
    )  # fmt: skip


def origin_seed(result: Finished, seed: int) -> int:
    """The seed whose single run the chosen image comes from (its lineage's root for FK)."""
    if not result.candidates:
        return seed
    chosen = next(c for c in result.candidates if c.fate == "chosen")
    root = chosen.lineage[0] if chosen.lineage else chosen.candidate
    return candidate_seed(seed, root)


class Bench:
    """The model, the verifier, the judge and every instance's full single runs, shared by
    the methods."""

    def __init__(self, instances: list[tuple[str, int]]) -> None:
        self.model = load_model(ModelSpec.parse(DEFAULT_MODEL))
        self.registry = VerifierRegistry()
        self.registry.register_model_verifiers(self.model.verifiers)
        self.judge = Judge.load("cpu")
        self.instances = instances
        self.singles: dict[int, torch.Tensor] = {}

    def run(self, text: str, seed: int, method: Method, sink: Any = None) -> Finished:
        params = self.model.resolve(request(text, seed, method))
        result = run_monitored(
            self.model, params, self.registry, RunControl(), sink or (lambda event: None)
        )
        if result.reason != "completed":
            raise RuntimeError(f"{method.name} {text!r} seed {seed}: {result.error}")
        return result

    def full_run(self, text: str, seed: int) -> torch.Tensor:
        """The image of the single run of ``seed`` (every instance's seed is its own)."""
        if seed not in self.singles:
            self.singles[seed] = as_tensor(self.run(text, seed, METHODS[0]))
        return self.singles[seed]

    def passes(self, image: torch.Tensor, text: str) -> bool:
        return all(self.judge.matches(image, text)[0].values())

    def measure(self, method: Method) -> Row:
        results, seconds, references = [], [], []
        for text, seed in self.instances:
            started = time.perf_counter()
            results.append(self.run(text, seed, method))
            seconds.append(time.perf_counter() - started)
            references.append(self.full_run(text, origin_seed(results[-1], seed)))
        images = torch.cat([as_tensor(r) for r in results])
        reference = torch.cat(references)
        judged = [
            float(self.passes(images[i : i + 1], text))
            for i, (text, _) in enumerate(self.instances)
        ]
        low, high = bootstrap_interval(judged)
        evaluations = [
            r.compute.denoiser_evaluations if r.compute else STEPS * (2 if CFG > 1 else 1)
            for r in results
        ]
        verifier = [r.compute.verifier_calls if r.compute else len(r.history) for r in results]
        decodes = [r.compute.preview_decodes if r.compute else len(r.history) for r in results]
        return Row(
            method=method.name, candidates=method.candidates, runs=len(results),
            joint=statistics.mean(judged), joint_low=low, joint_high=high,
            evaluations_mean=statistics.mean(evaluations),
            evaluations_vs_best_of_8=statistics.mean(evaluations) / (8 * STEPS),
            verifier_calls_mean=statistics.mean(verifier),
            preview_decodes_mean=statistics.mean(decodes),
            seconds_median=statistics.median(seconds),
            seconds_q1=percentile(seconds, 25), seconds_q3=percentile(seconds, 75),
            psnr_median=statistics.median(
                min(PSNR_CAP, float(v)) for v in psnr(images, reference)
            ),
            ssim_median=statistics.median(float(v) for v in ssim(images, reference)),
            noise_median=statistics.median(float(v) for v in noise_level(images)),
        )  # fmt: skip

    def trajectories(self) -> tuple[list[list[list[float]]], list[list[bool]]]:
        """Every candidate's score at every step of best-of-8, and whether the judge passes
        its final image (candidate i's image is the single run of seed + i)."""
        scores, judged = [], []
        for text, seed in self.instances:
            events: list[Any] = []
            self.run(text, seed, EVERY_STEP, events.append)
            checks = [e for e in events if isinstance(e, Check)]
            scores.append([
                [c.score for c in sorted(check.candidates, key=lambda c: c.candidate)]
                for check in checks
            ])  # fmt: skip
            judged.append([
                self.passes(self.full_run(text, candidate_seed(seed, i)), text)
                for i in range(EVERY_STEP.candidates)
            ])  # fmt: skip
        return scores, judged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="12 prompts x 1 seed (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.prompts, args.seeds = 12, 1
    torch.set_num_threads(args.threads)
    texts = prompts(args.prompts)
    instances = [
        (text, SEED_STRIDE * (s * len(texts) + i))
        for s in range(args.seeds)
        for i, text in enumerate(texts)
    ]
    bench = Bench(instances)
    setting = (
        f"{SAMPLER}, {STEPS} steps, CFG {CFG:g}; {len(texts)} prompts x {args.seeds} seeds = "
        f"{len(instances)} instances, each its own seed"
    )
    steps = step_table(*bench.trajectories())
    predictive = first_predictive_step(steps)
    print_table(
        f"How well the verifier's score at each step ranks best-of-8's candidates ({setting}; "
        "rho/top-1 against its own final scores, AUC against the judge's final verdict)",
        ["step", "rho to final", "top-1 = final", "AUC vs judge [95%]", "split prompts",
         *(f"{n} -> 1 here (evals)" for n in steps[0].prune_n_to_1)],
        [
            [r.step, f"{r.rho_final:.3f}", f"{r.top1_final:.3f}",
             f"{r.auc_judged:.3f} [{r.auc_low:.3f}, {r.auc_high:.3f}]", r.split_prompts,
             *(f"{100 * v:.1f}% ({r.prune_cost[n]})" for n, v in r.prune_n_to_1.items())]
            for r in steps
        ],
    )  # fmt: skip
    print(f"first step whose ranking agrees with the final one at rho >= 0.5: {predictive}")
    rows: list[Row] = []
    for method in METHODS:
        rows.append(bench.measure(method))
        print(rows[-1], flush=True)
    best8 = next(r for r in rows if r.method == "best_of_8")
    cheap = [
        r
        for r in rows
        if r.method.startswith(("prune", "fk")) and r.evaluations_vs_best_of_8 <= 0.25
    ]
    reached = [r.method for r in cheap if r.joint >= best8.joint]
    print_table(
        f"Search on the built-in model ({setting}; the judge's joint accuracy, never the "
        "steering verifier's)",
        ["method", "joint [95%]", "denoiser evals", "x best-of-8", "verifier calls", "decodes",
         "s/instance med [q1, q3]", "PSNR to full run", "SSIM", "noise"],
        [
            [r.method, f"{100 * r.joint:.1f}% [{100 * r.joint_low:.1f}, {100 * r.joint_high:.1f}]",
             f"{r.evaluations_mean:.1f}",
             f"{r.evaluations_vs_best_of_8:.3f}", f"{r.verifier_calls_mean:.1f}",
             f"{r.preview_decodes_mean:.1f}",
             f"{r.seconds_median:.3f} [{r.seconds_q1:.3f}, {r.seconds_q3:.3f}]",
             f"{r.psnr_median:.1f}", f"{r.ssim_median:.3f}", f"{r.noise_median:.4f}"]
            for r in rows
        ],
    )  # fmt: skip
    best_cheap = max(cheap, key=lambda r: r.joint, default=None)
    target: dict[str, Any] = {
        "best_of_8_joint": best8.joint,
        "reached_at_quarter_of_best_of_8": reached,
        "best_at_quarter": None if best_cheap is None else best_cheap.method,
        "best_at_quarter_joint": None if best_cheap is None else best_cheap.joint,
        "miss_points": None if best_cheap is None else 100 * (best8.joint - best_cheap.joint),
    }
    print(f"target (prune or FK at <= 0.25x best-of-8's evaluations reaches its joint): {target}")
    path = write_results(
        "search",
        {
            "machine": asdict(Machine.here()),
            "prompts": len(texts), "seeds": args.seeds, "instances": len(instances),
            "steps": STEPS, "cfg": CFG, "sampler": SAMPLER,
            "predictiveness": [asdict(r) for r in steps], "first_predictive_step": predictive,
            "rows": [asdict(r) for r in rows], "target": target,
        },
    )  # fmt: skip
    print(path)


if __name__ == "__main__":
    main()
