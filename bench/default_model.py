"""Benchmark the built-in model: prompt adherence by the held-out judge, and seconds per image.

For every full attribute combination (4 shapes × 6 colours × 2 sizes × 2 backgrounds = 96
prompts) it samples ``--default-seeds`` images per prompt at the default settings, then
``--seeds`` per prompt at each CFG value with each scheduler and at other step counts, and
reports the judge's per-attribute and joint argmax accuracy (the steering verifier's mean score is
listed too, but the judge is the number to quote). It also scores the 24 shape+colour prompts that
leave size and background to the model, and times single-image sampling (batch 1, CFG on) per
scheduler. Every sweep setting starts from the same noise, so settings are compared on paired
samples.

Prints a table, writes JSON (``--out``) and two PNG grids of samples (``--grid``, ``--cfg-grid``).

    .venv/bin/python bench/default_model.py            # about 10-20 minutes on 2 CPU cores
    .venv/bin/python bench/default_model.py --quick    # a smoke run of every section
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler
from PIL import Image

from stepwatch.server.models.builtin import AdherenceScorer, Judge, ShapesPipeline, load_builtin
from stepwatch.server.models.builtin.pipeline import DEFAULT_GUIDANCE, DEFAULT_STEPS, weights_dir
from stepwatch.server.models.builtin.vocabulary import ATTRIBUTES, ParsedPrompt

SCHEDULERS = {
    "dpm++": DPMSolverMultistepScheduler,
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
}
DEFAULT_SCHEDULER = "dpm++"
CFG_GRID = (1.0, 2.0, 3.0, 5.0)  # rows of the CFG grid, one image per prompt and row


@dataclass(frozen=True)
class AdherenceRow:
    """Judge accuracy of one (scheduler, cfg, steps) setting over a prompt set."""

    prompts: str
    scheduler: str
    cfg: float
    steps: int
    images: int
    per_attribute: dict[str, float]
    joint: float
    verifier_mean: float
    seconds: float


@dataclass(frozen=True)
class TimingRow:
    """Median wall time of single-image generations."""

    scheduler: str
    cfg: float
    steps: int
    seconds_per_image: float
    runs: int


def full_prompts() -> list[ParsedPrompt]:
    """Every combination of all four attributes, in vocabulary order."""
    return [ParsedPrompt(*values) for values in itertools.product(*(a.values for a in ATTRIBUTES))]


def colour_shape_prompts() -> list[ParsedPrompt]:
    """Every shape+colour pair, leaving size and background to the model."""
    shapes, colours = ATTRIBUTES[0].values, ATTRIBUTES[1].values
    return [ParsedPrompt(shape=s, colour=c) for s in shapes for c in colours]


def starting_noise(count: int, seeds: int) -> torch.Tensor:
    """Noise for ``count`` prompts × ``seeds``, image ``p * seeds + s`` seeded by (p, s)."""
    rows = [
        torch.randn((3, 32, 32), generator=torch.Generator().manual_seed(10_000 * p + s))
        for p in range(count)
        for s in range(seeds)
    ]
    return torch.stack(rows)


def use_scheduler(pipe: ShapesPipeline, name: str, shipped: dict[str, object]) -> None:
    pipe.scheduler = SCHEDULERS[name].from_config(shipped)


def sample(
    pipe: ShapesPipeline,
    prompts: list[ParsedPrompt],
    noise: torch.Tensor,
    cfg: float,
    steps: int,
    chunk: int = 192,
) -> torch.Tensor:
    """Generate one image per noise row; prompt ``i`` repeats for its ``seeds`` rows."""
    seeds = noise.shape[0] // len(prompts)
    texts = [p.text() for p in prompts for _ in range(seeds)]
    out = []
    for start in range(0, len(texts), chunk):
        batch = texts[start : start + chunk]
        result = pipe(
            batch,
            num_inference_steps=steps,
            guidance_scale=cfg,
            latents=noise[start : start + len(batch)],
            output_type="pt",
        )
        out.append(result.images)
    return torch.cat(out)


def judge_row(
    label: str,
    setting: tuple[str, float, int],
    prompts: list[ParsedPrompt],
    images: torch.Tensor,
    judge: Judge,
    scorer: AdherenceScorer,
    seconds: float,
) -> AdherenceRow:
    seeds = images.shape[0] // len(prompts)
    matches: list[dict[str, bool]] = []
    verifier: list[float] = []
    for index, prompt in enumerate(prompts):
        chunk = images[index * seeds : (index + 1) * seeds]
        matches += judge.matches(chunk, prompt.text())
        verifier += [score for score, _ in scorer.score(chunk, prompt.text())]
    names = [a.name for a in ATTRIBUTES if any(a.name in m for m in matches)]
    per_attribute = {n: statistics.fmean(m[n] for m in matches if n in m) for n in names}
    scheduler, cfg, steps = setting
    return AdherenceRow(
        prompts=label,
        scheduler=scheduler,
        cfg=cfg,
        steps=steps,
        images=len(matches),
        per_attribute=per_attribute,
        joint=statistics.fmean(all(m.values()) for m in matches),
        verifier_mean=statistics.fmean(verifier),
        seconds=seconds,
    )


def print_row(row: AdherenceRow) -> None:
    attributes = "  ".join(f"{k} {v:6.1%}" for k, v in row.per_attribute.items())
    print(
        f"{row.prompts:12s} {row.scheduler:6s} cfg {row.cfg:3.1f} steps {row.steps:3d}  "
        f"n {row.images:4d}  joint {row.joint:6.1%}  {attributes}  "
        f"verifier {row.verifier_mean:.3f}  {row.seconds:6.1f}s",
        flush=True,
    )


def time_single_images(
    pipe: ShapesPipeline, scheduler: str, shipped: dict[str, object], cfg: float, runs: int
) -> TimingRow:
    use_scheduler(pipe, scheduler, shipped)
    pipe("red circle", num_inference_steps=DEFAULT_STEPS, guidance_scale=cfg)  # warm-up
    durations = []
    for run in range(runs):
        generator = torch.Generator().manual_seed(run)
        started = time.perf_counter()
        pipe(
            "small red triangle on a dark background",
            num_inference_steps=DEFAULT_STEPS,
            guidance_scale=cfg,
            generator=generator,
        )
        durations.append(time.perf_counter() - started)
    return TimingRow(scheduler, cfg, DEFAULT_STEPS, statistics.median(durations), runs)


def save_grid(images: torch.Tensor, columns: int, path: Path, scale: int = 3) -> None:
    """Tile N×3×32×32 images in [0, 1] into one PNG, upscaled ``scale``× without smoothing."""
    rows = images.shape[0] // columns
    array = (images[: rows * columns].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    tiles = array.reshape(rows, columns, 3, 32, 32).transpose(0, 3, 1, 4, 2)
    picture = Image.fromarray(np.ascontiguousarray(tiles.reshape(rows * 32, columns * 32, 3)))
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.resize((columns * 32 * scale, rows * 32 * scale), Image.Resampling.NEAREST).save(path)


def weights_bytes() -> int:
    return sum(p.stat().st_size for p in weights_dir().rglob("*.safetensors"))


def grid_prompts() -> list[ParsedPrompt]:
    """Eight prompts that cover every shape, six colours, both sizes and both backgrounds."""
    picks = [
        (0, 0, 1, 0),
        (1, 2, 0, 1),
        (2, 3, 1, 0),
        (3, 4, 0, 1),
        (0, 5, 0, 1),
        (1, 1, 1, 0),
        (2, 4, 1, 1),
        (3, 0, 1, 0),
    ]
    return [
        ParsedPrompt(*(a.values[i] for a, i in zip(ATTRIBUTES, pick, strict=True)))
        for pick in picks
    ]


class Bench:
    """The loaded model, judge and verifier, and the rows measured so far."""

    def __init__(self) -> None:
        self.pipe = load_builtin()
        self.pipe.set_progress_bar_config(disable=True)
        self.judge, self.scorer = Judge.load(), AdherenceScorer.load()
        self.shipped = dict(self.pipe.scheduler.config)
        self.rows: list[AdherenceRow] = []

    def measure(
        self,
        label: str,
        prompts: list[ParsedPrompt],
        noise: torch.Tensor,
        setting: tuple[str, float, int],
    ) -> None:
        """Sample every (prompt, noise) pair at one setting and record the judge's verdict."""
        scheduler, cfg, steps = setting
        use_scheduler(self.pipe, scheduler, self.shipped)
        started = time.perf_counter()
        images = sample(self.pipe, prompts, noise, cfg, steps)
        elapsed = time.perf_counter() - started
        row = judge_row(label, setting, prompts, images, self.judge, self.scorer, elapsed)
        self.rows.append(row)
        print_row(row)

    def grids(self, samples_path: Path, cfg_path: Path) -> None:
        """Write the 8×8 sample grid (rows: prompts) and the CFG grid (rows: CFG values)."""
        shown = grid_prompts()
        noise = starting_noise(len(shown), 8)
        use_scheduler(self.pipe, DEFAULT_SCHEDULER, self.shipped)
        save_grid(sample(self.pipe, shown, noise, DEFAULT_GUIDANCE, DEFAULT_STEPS), 8, samples_path)
        sweep = [sample(self.pipe, shown, noise[::8], cfg, DEFAULT_STEPS) for cfg in CFG_GRID]
        save_grid(torch.cat(sweep), 8, cfg_path)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1, help="noises per prompt in the sweeps")
    parser.add_argument(
        "--default-seeds", type=int, default=4, help="noises per prompt at the default settings"
    )
    parser.add_argument("--cfg", type=float, nargs="+", default=[1.0, 2.0, 3.0, 5.0])
    parser.add_argument("--schedulers", nargs="+", default=list(SCHEDULERS), choices=SCHEDULERS)
    parser.add_argument("--step-sweep", type=int, nargs="+", default=[5, 10, 30])
    parser.add_argument("--timing-runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=Path("bench/results/default_model.json"))
    parser.add_argument("--grid", type=Path, default=Path("docs/default_model_samples.png"))
    parser.add_argument("--cfg-grid", type=Path, default=Path("docs/default_model_cfg.png"))
    parser.add_argument("--quick", action="store_true", help="tiny smoke run of every section")
    args = parser.parse_args()
    if args.quick:
        args.default_seeds, args.cfg, args.step_sweep, args.timing_runs = 1, [1.0, 3.0], [5], 2
    return args


def run_adherence(bench: Bench, args: argparse.Namespace) -> None:
    prompts = full_prompts()
    default = (DEFAULT_SCHEDULER, DEFAULT_GUIDANCE, DEFAULT_STEPS)
    print(f"judge accuracy, {len(prompts)} full prompts; defaults {default}", flush=True)
    bench.measure("defaults", prompts, starting_noise(len(prompts), args.default_seeds), default)
    sweep_noise = starting_noise(len(prompts), args.seeds)
    for scheduler, cfg in itertools.product(args.schedulers, args.cfg):
        bench.measure("full", prompts, sweep_noise, (scheduler, cfg, DEFAULT_STEPS))
    for steps in args.step_sweep:
        bench.measure("full", prompts, sweep_noise, (DEFAULT_SCHEDULER, DEFAULT_GUIDANCE, steps))
    pairs = colour_shape_prompts()
    bench.measure("shape+colour", pairs, starting_noise(len(pairs), args.default_seeds), default)


def run_timing(bench: Bench, args: argparse.Namespace) -> list[TimingRow]:
    print("\nseconds per image (batch 1, 20 steps, CFG on), median", flush=True)
    timings = []
    for scheduler in args.schedulers:
        timing = time_single_images(
            bench.pipe, scheduler, bench.shipped, DEFAULT_GUIDANCE, args.timing_runs
        )
        timings.append(timing)
        print(f"  {scheduler:6s} {timing.seconds_per_image:.3f} s", flush=True)
    return timings


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    bench = Bench()
    run_adherence(bench, args)
    bench.grids(args.grid, args.cfg_grid)
    timings = run_timing(bench, args)
    report = {
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "defaults": {
            "scheduler": DEFAULT_SCHEDULER,
            "steps": DEFAULT_STEPS,
            "cfg": DEFAULT_GUIDANCE,
            "scheduler_config": {k: v for k, v in bench.shipped.items() if not k.startswith("_")},
        },
        "seeds_per_prompt": {"defaults": args.default_seeds, "sweeps": args.seeds},
        "weights_bytes": weights_bytes(),
        "adherence": [asdict(r) for r in bench.rows],
        "timing": [asdict(t) for t in timings],
        "grids": [str(args.grid), str(args.cfg_grid)],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nweights {weights_bytes() / 1e6:.2f} MB")
    print(f"wrote {args.out}, {args.grid}, {args.cfg_grid}")


if __name__ == "__main__":
    main()
