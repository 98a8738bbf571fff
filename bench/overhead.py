"""What monitoring costs on the built-in model.

In one process on the CPU: the bare pipeline (the same scheduler, prompt and seed, its image
PNG-encoded as the engine does) against :func:`run_monitored` with checks every 1, 5 and 10
steps, for every preview decoder that applies and both the model's verifier and ``simple``.
Policy actions are switched off (threshold 0, no early stop) so every configuration does the same
denoising work. Configurations are interleaved round-robin (rotated each repeat) so machine load
drifts hit all of them alike; each ratio is median(monitored) / median(bare), for wall time and
for this process's CPU time (steadier on a shared machine), plus the CPU-time ratio of the
fastest runs (the least disturbed) and the median, with quartiles, of each repeat's CPU time over
the bare run's in the same repeat (paired). Targets: <= 1.03x at interval 5, <= 1.10x at
interval 1.

What early stopping and the other actions do to the image, judged by the held-out judge and by
fidelity to the full run, is ``bench/policy.py``'s to say.

Strict against overlapped checks (``--part overlap``; :mod:`stepwatch.server.engine.checking`):
wall time of the monitored run with checks every 1 and 5 steps in ``strict`` and ``overlapped``
mode, against the same run with no checks (``check_interval`` beyond the last step), measured in
the same repeats, on a tiny SD 1.x pipeline at 512 px (the tests' tiny UNet on 64×64 latents, a
small 8× VAE as the full decoder, a random-weight ``AutoencoderTiny`` of TAESD's own architecture
as the tiny one) and on the built-in model. Wall time, not CPU time: overlap moves work onto a
second core, it does not remove it. The gain is bounded by the free cores: on a machine shared
with other sessions the worker thread competes with them. Targets: <= 1.02x at interval 1 with a
TAESD-class decoder, <= 1.01x at interval 5.

Prints tables and writes ``bench/results/overhead.json``::

    .venv/bin/python bench/overhead.py [--repeats 25] [--threads 1] [--part all|monitor|overlap]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from _overlap import measure_overlap, print_overlap

from stepwatch.server.engine.control import RunControl
from stepwatch.server.engine.events import EngineEvent
from stepwatch.server.engine.model import LoadedModel
from stepwatch.server.engine.monitor import run_monitored
from stepwatch.server.engine.params import RequestedParams, ResolvedParams
from stepwatch.server.engine.previews import encode_png, to_uint8
from stepwatch.server.engine.verifiers import SIMPLE, VerifierRegistry
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


def bare_run(model: LoadedModel, resolved: ResolvedParams) -> None:
    """The pipeline alone, as a user of diffusers would call it, PNG-encoded like a result."""
    params = resolved.parameters
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
    base = RequestedParams(OVERHEAD_PROMPT, seed=0, quality_threshold=0.0, early_stop=False)
    configs = [Config("bare")]
    for interval in INTERVALS:
        for decoder in model.decoders:
            for verifier in dict.fromkeys([model.defaults.verifier, SIMPLE]):
                name = f"interval {interval:>2} {decoder}/{verifier}"
                configs.append(Config(name, interval, decoder, verifier))

    def action(config: Config) -> Callable[[], object]:
        if config.interval is None:
            bare = model.resolve(base)
            return lambda: bare_run(model, bare)
        params = model.resolve(
            replace(
                base,
                check_interval=config.interval,
                preview_decoder=config.decoder,
                verifier=config.verifier,
            )
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


def print_report(overhead: dict[str, Any]) -> None:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--part", choices=["all", "monitor", "overlap"], default="all")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(ModelSpec.parse("shapes=builtin:shapes,device=cpu"))
    registry = VerifierRegistry()
    registry.register_model_verifiers(model.verifiers)
    report: dict[str, Any] = {}
    load = {"before": os.getloadavg()}
    if args.part in ("all", "monitor"):
        report["overhead"] = measure_overhead(model, registry, args.repeats)
        print_report(report["overhead"])
    if args.part in ("all", "overlap"):
        partial = args.out.with_name(args.out.stem + "-partial.json")
        partial.parent.mkdir(parents=True, exist_ok=True)
        report["overlap"] = measure_overlap(
            model, registry, args.repeats,
            lambda now: partial.write_text(json.dumps({"overlap": now}, indent=2)),
        )  # fmt: skip
        print_overlap(report["overlap"])
    load["after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "threads": args.threads, "torch": torch.__version__,
               "load_average_1_5_15": load}  # fmt: skip
    args.out.write_text(json.dumps({"machine": machine, **report}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
