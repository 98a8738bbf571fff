"""Inference-time search on the built-in model: judged quality against denoiser evaluations.

Settings with headroom: full four-attribute prompts, CFG 1 (no guidance: one denoiser
evaluation per candidate and step), 10 steps of ``euler_a`` (stochastic, so Feynman–Kac's
resampled copies diverge from their parents). A single run's held-out judged joint accuracy is
about 75% there (CFG 1.5 is 98% on every sampler, see ``bench/policy.py``: no headroom).

For every prompt and seed it runs, through :func:`run_monitored` (the real engine, one batch
per search):

- ``single``: one run (checked every 2 steps; the judge scores its image);
- ``best_of_n`` N = 2, 4, 8: every candidate to the end, checked only at the last step, the
  verifier's best kept;
- ``prune`` and ``fk`` at several budgets (see :data:`METHODS`).

Per method: mean denoiser evaluations (rows the UNet evaluated, as ``finished.compute`` counts
them) and their ratio to best-of-8's, mean verifier calls and preview decodes, wall time per
prompt (median [q1, q3]), the held-out **judge**'s joint accuracy of the chosen image (the
judge never steers) and its **fidelity** to the full single run of the chosen candidate's seed
(PSNR, SSIM; best-of-N and prune pick a candidate unchanged, FK's copies differ), beside a
no-reference noise level. Prints the table and writes ``bench/results/search.json``::

    nice -n 10 .venv/bin/python bench/search.py [--prompts 48] [--seeds 2] [--threads 1]
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

from stepwatch.protocol import Finished, SearchSettings
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


METHODS = (
    Method("single", 1, 2),
    Method("best_of_2", 2, STEPS, SearchSettings("best_of_n")),
    Method("best_of_4", 4, STEPS, SearchSettings("best_of_n")),
    Method("best_of_8", 8, STEPS, SearchSettings("best_of_n")),
    # prune budgets: lanes per step 4,1,1,… / 8,2,1,… / 8,4,2,1,… / 8,8,1,…
    Method("prune_4_keep25_every1", 4, 1, SearchSettings("prune", keep_fraction=0.25)),
    Method("prune_8_keep25_every1", 8, 1, SearchSettings("prune", keep_fraction=0.25)),
    Method("prune_8_keep50_every1", 8, 1, SearchSettings("prune", keep_fraction=0.5)),
    Method("prune_8_keep12_every2", 8, 2, SearchSettings("prune", keep_fraction=0.125)),
    Method("prune_16_keep12_every1", 16, 1, SearchSettings("prune", keep_fraction=0.125)),
    # FK: k lanes throughout; k = 2 resamples whenever the scores differ.
    Method("fk_2", 2, 2, SearchSettings("fk", fk_lambda=10.0, ess_threshold=1.0)),
    Method("fk_4", 4, 2, SearchSettings("fk", fk_lambda=10.0, ess_threshold=0.5)),
)


@dataclass(frozen=True)
class Row:
    method: str
    candidates: int
    runs: int
    joint: float
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(ModelSpec.parse(DEFAULT_MODEL))
    registry = VerifierRegistry()
    registry.register_model_verifiers(model.verifiers)
    judge = Judge.load("cpu")
    texts = prompts(args.prompts)
    instances = [(t, SEED_STRIDE * s) for t in texts for s in range(args.seeds)]
    singles: dict[tuple[str, int], torch.Tensor] = {}

    def full_run(text: str, seed: int) -> torch.Tensor:
        if (text, seed) not in singles:
            params = model.resolve(request(text, seed, METHODS[0]))
            done = run_monitored(model, params, registry, RunControl(), lambda event: None)
            singles[text, seed] = as_tensor(done)
        return singles[text, seed]

    rows: list[Row] = []
    for method in METHODS:
        results, seconds, references = [], [], []
        for text, seed in instances:
            params = model.resolve(request(text, seed, method))
            started = time.perf_counter()
            result = run_monitored(model, params, registry, RunControl(), lambda event: None)
            seconds.append(time.perf_counter() - started)
            if result.reason != "completed":
                raise RuntimeError(f"{method.name} {text!r} seed {seed}: {result.error}")
            results.append(result)
            references.append(full_run(text, origin_seed(result, seed)))
        images = torch.cat([as_tensor(r) for r in results])
        reference = torch.cat(references)
        judged = [
            all(judge.matches(images[i : i + 1], text)[0].values())
            for i, (text, _) in enumerate(instances)
        ]
        evaluations = [
            r.compute.denoiser_evaluations if r.compute else STEPS * (2 if CFG > 1 else 1)
            for r in results
        ]
        verifier = [r.compute.verifier_calls if r.compute else len(r.history) for r in results]
        decodes = [r.compute.preview_decodes if r.compute else len(r.history) for r in results]
        rows.append(
            Row(
                method=method.name,
                candidates=method.candidates,
                runs=len(results),
                joint=statistics.mean(judged),
                evaluations_mean=statistics.mean(evaluations),
                evaluations_vs_best_of_8=statistics.mean(evaluations) / (8 * STEPS),
                verifier_calls_mean=statistics.mean(verifier),
                preview_decodes_mean=statistics.mean(decodes),
                seconds_median=statistics.median(seconds),
                seconds_q1=percentile(seconds, 25),
                seconds_q3=percentile(seconds, 75),
                psnr_median=statistics.median(
                    min(PSNR_CAP, float(v)) for v in psnr(images, reference)
                ),
                ssim_median=statistics.median(float(v) for v in ssim(images, reference)),
                noise_median=statistics.median(float(v) for v in noise_level(images)),
            )  # fmt: skip
        )
        print(rows[-1], flush=True)
    best8 = next(r for r in rows if r.method == "best_of_8")
    cheap = [
        r
        for r in rows
        if r.method.startswith(("prune", "fk")) and r.evaluations_vs_best_of_8 <= 0.25
    ]
    reached = [r.method for r in cheap if r.joint >= best8.joint]
    print_table(
        f"Search on the built-in model ({SAMPLER}, {STEPS} steps, CFG {CFG:g}; "
        f"{len(texts)} prompts x {args.seeds} seeds; the judge's joint accuracy, never the "
        "steering verifier's)",
        ["method", "joint", "denoiser evals", "x best-of-8", "verifier calls", "decodes",
         "s/prompt med [q1, q3]", "PSNR to full run", "SSIM", "noise"],
        [
            [r.method, f"{100 * r.joint:.1f}%", f"{r.evaluations_mean:.1f}",
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
            "prompts": len(texts), "seeds": args.seeds, "steps": STEPS, "cfg": CFG,
            "sampler": SAMPLER, "rows": [asdict(r) for r in rows], "target": target,
        },
    )  # fmt: skip
    print(path)


if __name__ == "__main__":
    main()
