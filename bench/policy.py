"""Does the policy help? Judge accuracy, fidelity and compute of each action on the built-in model.

For each sampler (DPM-Solver++ 2M, DDIM, Euler; 20 steps) and each setting

- ``default``: CFG 3 (the model's default), full four-attribute prompts;
- ``hard``: CFG 1.5, full four-attribute prompts (guidance is what limits these runs),

it runs every prompt and seed under four modes through :func:`run_monitored` (the real policy,
with the model's shipped expected-score curves):

- ``none``: no actions (``scale_factor`` 1, no early stop) — the full run;
- ``cfg``: CFG raises only; ``early_stop``: early stop only; ``both``: the defaults.

Per mode it reports the held-out **judge**'s joint accuracy (the judge never steers), the
**fidelity** of each result to the ``none`` run from the same noise and settings (PSNR and SSIM;
the change an action made to the image), a no-reference **noise** level (Immerkær 1996) of the
result beside that of the full run, and the **steps** (denoiser calls; each is two evaluations
with CFG on) against the full run's. For ``hard`` it also runs ``none`` at CFG 3 to report what
share of the gap to the default CFG the policy closes. Prints tables, writes
``bench/results/policy.json``::

    .venv/bin/python bench/policy.py [--prompts 48] [--seeds 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import io
import itertools
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from _service import Machine, percentile, print_table, write_results
from PIL import Image

from stepwatch.protocol import Finished
from stepwatch.server.engine.control import RunControl
from stepwatch.server.engine.fidelity import noise_level, psnr, ssim
from stepwatch.server.engine.monitor import run_monitored
from stepwatch.server.engine.params import RequestedParams
from stepwatch.server.engine.verifiers import VerifierRegistry
from stepwatch.server.models.builtin import Judge
from stepwatch.server.models.builtin.vocabulary import ATTRIBUTES, ParsedPrompt
from stepwatch.server.models.loading import DEFAULT_MODEL, ModelSpec, load_model

SAMPLERS = ("dpmpp_2m", "ddim", "euler")
SETTINGS = {"default": 3.0, "hard": 1.5}
MODES: dict[str, dict[str, Any]] = {
    "none": {"scale_factor": 1.0, "early_stop": False},
    "cfg": {"early_stop": False},
    "early_stop": {"scale_factor": 1.0},
    "both": {},
}
STEPS = 20
#: PSNR of a result identical to the full run (8-bit PNGs: no difference at all).
PSNR_CAP = 60.0


@dataclass(frozen=True)
class Row:
    """One (sampler, setting, mode) over every prompt and seed."""

    sampler: str
    setting: str
    cfg: float
    mode: str
    runs: int
    joint: float
    psnr_median: float | None
    psnr_q1: float | None
    psnr_q3: float | None
    ssim_median: float | None
    noise_median: float
    noise_full_median: float
    steps_mean: float
    steps_saved: float
    early_stops: int
    raised: int
    seconds: float


def prompts(count: int) -> list[str]:
    """``count`` full four-attribute prompts spread evenly over all 96."""
    every = [ParsedPrompt(*v).text() for v in itertools.product(*(a.values for a in ATTRIBUTES))]
    stride = max(1, len(every) // count)
    return every[::stride][:count]


def as_tensor(result: Finished) -> torch.Tensor:
    assert result.image is not None
    pixels = np.asarray(Image.open(io.BytesIO(result.image.data)).convert("RGB"))
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float()[None] / 255


def sweep(
    model: Any, registry: VerifierRegistry, judge: Judge, sampler: str, cfg: float, mode: str,
    texts: list[str], seeds: int,
) -> tuple[list[Finished], float]:  # fmt: skip
    results = []
    started = time.perf_counter()
    for text, seed in itertools.product(texts, range(seeds)):
        requested = RequestedParams(
            text, seed=seed, sampler=sampler, steps=STEPS, cfg=cfg, **MODES[mode]
        )
        params = model.resolve(requested)
        result = run_monitored(model, params, registry, RunControl(), lambda event: None)
        if result.reason == "failed":
            raise RuntimeError(f"{text!r} seed {seed} failed: {result.error}")
        results.append(result)
    return results, time.perf_counter() - started


def judged(judge: Judge, results: list[Finished], texts: list[str]) -> list[bool]:
    """Whether the judge sees every attribute asked for; ``results`` are :func:`sweep`'s, in the
    order of its prompts and seeds."""
    seeds = len(results) // len(texts)
    asked = [text for text in texts for _ in range(seeds)]
    return [
        all(judge.matches(as_tensor(r), text)[0].values())
        for r, text in zip(results, asked, strict=True)
    ]


def row(
    sampler: str, setting: str, cfg: float, mode: str, results: list[Finished],
    full: list[Finished], judge: Judge, texts: list[str], seconds: float,
) -> Row:  # fmt: skip
    images = torch.cat([as_tensor(r) for r in results])
    reference = torch.cat([as_tensor(r) for r in full])
    same = mode == "none"
    # 8-bit results identical to the full run have an infinite PSNR: count them at the cap.
    psnrs = [] if same else [min(PSNR_CAP, float(v)) for v in psnr(images, reference)]
    ssims = [] if same else [float(v) for v in ssim(images, reference)]
    steps = [r.steps_run for r in results]
    return Row(
        sampler=sampler, setting=setting, cfg=cfg, mode=mode, runs=len(results),
        joint=statistics.mean(judged(judge, results, texts)),
        psnr_median=None if same else statistics.median(psnrs),
        psnr_q1=None if same else percentile(psnrs, 25),
        psnr_q3=None if same else percentile(psnrs, 75),
        ssim_median=None if same else statistics.median(ssims),
        noise_median=statistics.median(float(v) for v in noise_level(images)),
        noise_full_median=statistics.median(float(v) for v in noise_level(reference)),
        steps_mean=statistics.mean(steps),
        steps_saved=1 - statistics.mean(steps) / statistics.mean(r.steps_run for r in full),
        early_stops=sum(r.reason == "early_stop" for r in results),
        raised=sum(any(h.decision == "raise_cfg" for h in r.history) for r in results),
        seconds=seconds,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(ModelSpec.parse(DEFAULT_MODEL))
    registry = VerifierRegistry()
    registry.register_model_verifiers(model.verifiers)
    judge = Judge.load("cpu")
    texts = prompts(args.prompts)
    rows: list[Row] = []
    gaps: dict[str, dict[str, float]] = {}
    for sampler in args.samplers.split(","):
        for setting, cfg in SETTINGS.items():
            full, seconds = sweep(model, registry, judge, sampler, cfg, "none", texts, args.seeds)
            for mode in MODES:
                results, took = (
                    (full, seconds) if mode == "none"
                    else sweep(model, registry, judge, sampler, cfg, mode, texts, args.seeds)
                )  # fmt: skip
                rows.append(row(sampler, setting, cfg, mode, results, full, judge, texts, took))
                print(rows[-1], flush=True)
        default_none = next(
            r for r in rows if (r.sampler, r.setting, r.mode) == (sampler, "default", "none")
        )
        hard = {r.mode: r.joint for r in rows if (r.sampler, r.setting) == (sampler, "hard")}
        gap = default_none.joint - hard["none"]
        gaps[sampler] = {
            "default_cfg_joint": default_none.joint,
            "hard_none_joint": hard["none"],
            "hard_cfg_joint": hard["cfg"],
            "hard_both_joint": hard["both"],
            "gap_closed_by_cfg": (hard["cfg"] - hard["none"]) / gap if gap > 0 else float("nan"),
        }
    print_table(
        "Policy on the built-in model (judge joint %, PSNR/SSIM to the full run, steps)",
        ["sampler", "setting", "mode", "joint", "PSNR med [q1, q3]", "SSIM", "noise (full)",
         "steps", "saved", "stops", "raised"],
        [
            [r.sampler, f"{r.setting} cfg {r.cfg:g}", r.mode, f"{100 * r.joint:.1f}%",
             "-" if r.psnr_median is None
             else f"{r.psnr_median:.1f} [{r.psnr_q1:.1f}, {r.psnr_q3:.1f}]",
             "-" if r.ssim_median is None else f"{r.ssim_median:.3f}",
             f"{r.noise_median:.4f} ({r.noise_full_median:.4f})", f"{r.steps_mean:.1f}",
             f"{100 * r.steps_saved:.0f}%", r.early_stops, r.raised]
            for r in rows
        ],
    )  # fmt: skip
    for sampler, gap in gaps.items():
        closed = gap["gap_closed_by_cfg"]
        print(f"{sampler}: the gap of CFG 1.5 to CFG 3 closed by CFG raises: {closed:.0%}")
    path = write_results(
        "policy",
        {
            "machine": asdict(Machine.here()),
            "prompts": len(texts), "seeds": args.seeds, "steps": STEPS,
            "rows": [asdict(r) for r in rows], "gaps": gaps,
        },
    )  # fmt: skip
    print(path)


if __name__ == "__main__":
    main()
