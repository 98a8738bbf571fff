"""What monitoring costs, and what early stopping saves, on the built-in model.

Two measurements, both in one process on the CPU:

1. **Overhead.** The bare pipeline (the same scheduler, prompt and seed, its image PNG-encoded as
   the engine does) against :func:`run_monitored` with checks every 1, 5 and 10 steps, for every
   preview decoder that applies and both the model's verifier and ``simple``. Policy actions are
   switched off (threshold 0, no early stop) so every configuration does the same denoising work.
   Configurations are interleaved round-robin (rotated each repeat) so machine load drifts hit all
   of them alike; each ratio is median(monitored) / median(bare), for wall time and for this
   process's CPU time (steadier on a shared machine), plus the CPU-time ratio of the fastest runs
   (the least disturbed) and the median, with quartiles, of each repeat's CPU time over the bare
   run's in the same repeat (paired). Targets: <= 1.03x at interval 5, <= 1.10x at interval 1.
2. **Early stopping.** A fixed prompt set, several seeds, run to completion without actions and
   again with the default policy (early stop, and early stop plus CFG raises). Reports the steps
   and seconds saved and the held-out **judge's** score and joint accuracy for each, so a quality
   claim never rests on the steering verifier grading its own homework.

Prints tables and writes ``bench/results/overhead.json``::

    .venv/bin/python bench/overhead.py [--repeats 25] [--threads 1] [--seeds 3]
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from stepwatch.server.engine.control import RunControl
from stepwatch.server.engine.events import EngineEvent, RunResult
from stepwatch.server.engine.model import LoadedModel
from stepwatch.server.engine.monitor import run_monitored
from stepwatch.server.engine.params import RunParams
from stepwatch.server.engine.previews import encode_png, to_uint8
from stepwatch.server.engine.verifiers import SIMPLE, VerifierRegistry
from stepwatch.server.models.builtin import Judge, vocabulary
from stepwatch.server.models.loading import ModelSpec, load_model

RESULTS = Path(__file__).parent / "results" / "overhead.json"
OVERHEAD_PROMPT = "small red triangle on a dark background"
INTERVALS = (1, 5, 10)


@dataclass(frozen=True)
class Config:
    """One timed configuration: ``interval`` None is the bare pipeline."""

    name: str
    interval: int | None = None
    decoder: str | None = None
    verifier: str | None = None


def _discard(event: EngineEvent) -> None:
    """A sink as cheap as a server's non-blocking hand-off."""


def bare_run(model: LoadedModel, params: RunParams) -> None:
    """The pipeline alone, as a user of diffusers would call it, PNG-encoded like a result."""
    assert params.sampler and params.scheduler and params.seed is not None
    pipeline = model.pipeline
    pipeline.scheduler = model.build_scheduler(params.sampler, params.scheduler)
    images = pipeline(
        params.prompt,
        num_inference_steps=params.steps,
        guidance_scale=params.cfg,
        generator=torch.Generator("cpu").manual_seed(params.seed),
        output_type="pt",
    ).images
    encode_png(to_uint8(images[:1])[0])


def timed(action: Callable[[], object]) -> tuple[float, float]:
    """Wall seconds and this process's CPU seconds for one call.

    On a shared machine other processes stretch wall time at random; CPU time counts only the
    work this process did, so its ratios are the steadier measure of what monitoring adds.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    action()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure_overhead(
    model: LoadedModel, registry: VerifierRegistry, repeats: int
) -> dict[str, Any]:
    base = model.resolve(
        RunParams(OVERHEAD_PROMPT, seed=0, quality_threshold=0.0, early_stop=False)
    )
    configs = [Config("bare")]
    for interval in INTERVALS:
        for decoder in model.decoders:
            for verifier in dict.fromkeys([model.defaults.verifier, SIMPLE]):
                name = f"interval {interval:>2} {decoder}/{verifier}"
                configs.append(Config(name, interval, decoder, verifier))

    def action(config: Config) -> Callable[[], object]:
        if config.interval is None:
            return lambda: bare_run(model, base)
        params = replace(
            base,
            check_interval=config.interval,
            preview_decoder=config.decoder,
            verifier=config.verifier,
        )
        return lambda: run_monitored(model, params, registry, RunControl(), _discard)

    actions = [action(c) for c in configs]
    for run in actions:  # warm up: first calls load verifiers and allocate
        run()
    wall: list[list[float]] = [[] for _ in configs]
    cpu: list[list[float]] = [[] for _ in configs]
    for repeat in range(repeats):
        offset = repeat % len(configs)
        for index in [*range(offset, len(configs)), *range(offset)]:
            took, worked = timed(actions[index])
            wall[index].append(took)
            cpu[index].append(worked)
    bare_wall, bare_cpu = statistics.median(wall[0]), statistics.median(cpu[0])
    rows = []
    for config, walls, cpus in zip(configs, wall, cpu, strict=True):
        # Each repeat's run against the bare run of the same repeat: drifts slower than one
        # round cancel out, and the quartiles show how far this machine's noise reaches.
        paired = statistics.quantiles([c / b for c, b in zip(cpus, cpu[0], strict=True)], n=4)
        rows.append(
            {
                "config": config.name,
                "check_interval": config.interval,
                "preview_decoder": config.decoder,
                "verifier": config.verifier,
                "median_wall_s": statistics.median(walls),
                "median_cpu_s": statistics.median(cpus),
                "wall_ratio": statistics.median(walls) / bare_wall,
                "cpu_ratio": statistics.median(cpus) / bare_cpu,
                "min_cpu_ratio": min(cpus) / min(cpu[0]),
                "paired_cpu_ratio": paired[1],
                "paired_cpu_ratio_quartiles": [paired[0], paired[2]],
                "runs": len(walls),
            }
        )
    return {"steps": base.steps, "sampler": base.sampler, "cfg": base.cfg, "rows": rows}


def judge_readings(judge: Judge, result: RunResult) -> tuple[float, bool]:
    assert result.image is not None
    pixels = np.array(Image.open(io.BytesIO(result.image.png)).convert("RGB"))
    images = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
    [(score, _components)] = judge.score(images, result.params.prompt)
    [matches] = judge.matches(images, result.params.prompt)
    return score, all(matches.values())


def prompt_set() -> list[str]:
    """Every colour with every shape: the attributes a prompt always names."""
    attributes = {a.name: a.values for a in vocabulary().attributes}
    return [f"{colour} {shape}" for shape in attributes["shape"] for colour in attributes["colour"]]


def measure_early_stopping(
    model: LoadedModel, registry: VerifierRegistry, judge: Judge, seeds: int
) -> dict[str, Any]:
    modes = {
        "full run, no actions": {"early_stop": False, "quality_threshold": 0.0},
        "early stop": {"early_stop": True, "scale_factor": 1.0},
        "early stop + CFG raise": {"early_stop": True},
        "early stop, checks every 2": {"early_stop": True, "check_interval": 2},
    }
    report: dict[str, Any] = {"prompts": prompt_set(), "seeds": seeds, "modes": {}}
    for mode, settings in modes.items():
        steps, seconds, scores, joint, reasons = [], [], [], [], []
        for prompt in report["prompts"]:
            for seed in range(seeds):
                params = RunParams(prompt, seed=seed, **settings)
                result = run_monitored(model, params, registry, RunControl(), _discard)
                score, matched = judge_readings(judge, result)
                steps.append(result.steps_run)
                seconds.append(result.elapsed)
                scores.append(score)
                joint.append(matched)
                reasons.append(str(result.reason))
        report["modes"][mode] = {
            "settings": settings,
            "mean_steps": statistics.fmean(steps),
            "total_steps": result.total_steps,
            "mean_seconds": statistics.fmean(seconds),
            "judge_mean_score": statistics.fmean(scores),
            "judge_joint_accuracy": statistics.fmean(joint),
            "early_stopped": reasons.count("early_stop") / len(reasons),
        }
    baseline = report["modes"]["full run, no actions"]
    for values in report["modes"].values():
        values["steps_saved"] = 1 - values["mean_steps"] / baseline["mean_steps"]
        values["judge_score_change"] = values["judge_mean_score"] - baseline["judge_mean_score"]
    return report


def print_report(overhead: dict[str, Any], early: dict[str, Any]) -> None:
    print(
        f"\nMonitoring overhead, {overhead['steps']} steps {overhead['sampler']}, cfg "
        f"{overhead['cfg']:g} (median of {overhead['rows'][0]['runs']} interleaved runs)"
    )
    header = f"{'configuration':<34} {'wall s':>8} {'ratio':>7} {'cpu s':>8} {'ratio':>7}"
    print(header + f" {'fastest':>8} {'paired (quartiles)':>24}")
    for row in overhead["rows"]:
        low, high = row["paired_cpu_ratio_quartiles"]
        print(
            f"{row['config']:<34} {row['median_wall_s']:>8.4f} {row['wall_ratio']:>6.3f}x "
            f"{row['median_cpu_s']:>8.4f} {row['cpu_ratio']:>6.3f}x {row['min_cpu_ratio']:>7.3f}x "
            f"{row['paired_cpu_ratio']:>7.3f}x ({low:.3f}-{high:.3f})"
        )
    print(
        f"\nEarly stopping, {len(early['prompts'])} prompts x {early['seeds']} seeds "
        "(judge = held-out classifier)"
    )
    print(
        f"{'mode':<28} {'steps':>6} {'saved':>6} {'stopped':>8} {'s/run':>6} "
        f"{'judge':>6} {'change':>7} {'joint':>6}"
    )
    for mode, v in early["modes"].items():
        print(
            f"{mode:<28} {v['mean_steps']:>6.1f} {v['steps_saved']:>6.1%} "
            f"{v['early_stopped']:>8.0%} {v['mean_seconds']:>6.3f} {v['judge_mean_score']:>6.3f} "
            f"{v['judge_score_change']:>+7.3f} {v['judge_joint_accuracy']:>6.1%}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per prompt, early stopping")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(ModelSpec.parse("shapes=builtin:shapes,device=cpu"))
    registry = VerifierRegistry()
    registry.register_model_verifiers(model.verifiers)
    overhead = measure_overhead(model, registry, args.repeats)
    early = measure_early_stopping(model, registry, Judge.load("cpu"), args.seeds)
    print_report(overhead, early)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
               "torch": torch.__version__}  # fmt: skip
    args.out.write_text(
        json.dumps({"machine": machine, "overhead": overhead, "early": early}, indent=2)
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
