"""What the image verifiers read, and what a check costs: the calibration of ``structure``.

Four measurements, in one process on the CPU, none of them timed assertions:

1. **Synthetic pictures.** One scene (a disc and a square on a shaded background) at 32, 64, 256
   and 512 px, clean, blurred (a Gaussian of 6% of the width), with grey noise of σ 0.1, and
   uniform noise; ``structure`` and ``variance_edges`` scores, and the spread of each over the
   four sizes (the decoder-invariance figure: a 32 px linear preview and a 512 px VAE decode of
   one picture should score alike).
2. **The built-in model's x0 estimates** (identity decoder) at steps 5, 10, 15 and 20 of 20, every
   colour+shape prompt, DPM++, Euler and DDIM, no policy actions: median and quartiles of
   ``structure``'s score and its ``structure`` and ``clean`` components.
3. **Tiny random-weight SD and SDXL pipelines** (the tests' own, whose previews are pure noise):
   the highest score and ``clean`` any check reached, per preview decoder.
4. **Cost per check**: milliseconds to score one image of 64×64 and of 512×512, median and
   quartiles over repeats, one torch thread.

Prints tables and writes ``bench/results/verifiers.json``::

    .venv/bin/python bench/verifiers.py [--seeds 2] [--repeats 50]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "server"), str(ROOT / "tests" / "server" / "engine")]

from synthetic_pictures import grey_noise, picture, uniform_noise  # noqa: E402
from tiny_models import (  # noqa: E402
    Recorder,
    make_sd_pipeline,
    make_sdxl_pipeline,
    make_tiny_autoencoder,
)

from stepwatch.server.engine.control import RunControl  # noqa: E402
from stepwatch.server.engine.model import LoadedModel, describe_pipeline  # noqa: E402
from stepwatch.server.engine.monitor import run_monitored  # noqa: E402
from stepwatch.server.engine.params import RequestedParams  # noqa: E402
from stepwatch.server.engine.structure import gaussian_blur  # noqa: E402
from stepwatch.server.engine.verifiers import (  # noqa: E402
    STRUCTURE,
    VARIANCE_EDGES,
    Verifier,
    VerifierRegistry,
    score_batch,
)
from stepwatch.server.models.builtin import vocabulary  # noqa: E402
from stepwatch.server.models.loading import DEFAULT_MODEL, ModelSpec, load_model  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "verifiers.json"
SIDES = (32, 64, 256, 512)
STEPS = (5, 10, 15, 20)
SAMPLERS = ("dpmpp_2m", "euler", "ddim")
VERIFIERS = (STRUCTURE, VARIANCE_EDGES)
NO_ACTIONS: dict[str, Any] = {"early_stop": False, "quality_threshold": 0.0}


def quartiles(values: list[float]) -> list[float]:
    """Lower quartile, median, upper quartile (the median alone for one value)."""
    if len(values) == 1:
        return values * 3
    low, mid, high = statistics.quantiles(values, n=4, method="inclusive")
    return [low, mid, high]


def variants(side: int) -> dict[str, torch.Tensor]:
    clean = picture(side)
    return {
        "clean": clean,
        "blurred": gaussian_blur(clean, 0.06 * side),
        "noisy (σ 0.1)": (clean + grey_noise(clean.shape, 0.1)).clamp(0, 1),
        "uniform noise": uniform_noise(side),
    }


def measure_synthetic(registry: VerifierRegistry) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for verifier_id in VERIFIERS:
        verifier = registry.get(verifier_id)
        rows: dict[str, Any] = {}
        for side in SIDES:
            for name, image in variants(side).items():
                [score] = score_batch(verifier, image.float(), "")
                rows.setdefault(name, {})[str(side)] = {
                    "score": score.value,
                    **score.components,
                }
        for row in rows.values():
            values = [row[str(side)]["score"] for side in SIDES]
            row["spread"] = max(values) - min(values)
        report[verifier_id] = rows
    return report


def prompt_set() -> list[str]:
    """Every colour with every shape, as bench/overhead.py uses."""
    attributes = {a.name: a.values for a in vocabulary().attributes}
    return [f"{colour} {shape}" for shape in attributes["shape"] for colour in attributes["colour"]]


def measure_builtin(model: LoadedModel, registry: VerifierRegistry, seeds: int) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for sampler in SAMPLERS:
        readings: dict[int, dict[str, list[float]]] = {s: {} for s in STEPS}
        for prompt in prompt_set():
            for seed in range(seeds):
                recorder = Recorder()
                params = RequestedParams(
                    prompt, seed=seed, steps=20, check_interval=5, verifier=STRUCTURE,
                    sampler=sampler, **NO_ACTIONS,
                )  # fmt: skip
                run_monitored(model, model.resolve(params), registry, RunControl(), recorder)
                for check in recorder.checks:
                    values = {"score": check.score, **check.components}
                    for name, value in values.items():
                        readings[check.step].setdefault(name, []).append(value)
        report[sampler] = {
            str(step): {name: quartiles(values) for name, values in parts.items()}
            for step, parts in readings.items()
        }
    return report


def measure_tiny(registry: VerifierRegistry) -> dict[str, Any]:
    models = [
        describe_pipeline("tiny-sd", make_sd_pipeline(), tiny_autoencoder=make_tiny_autoencoder()),
        describe_pipeline("tiny-sdxl", make_sdxl_pipeline()),
    ]
    report: dict[str, Any] = {}
    for model in models:
        for decoder in model.decoders:
            recorder = Recorder()
            params = RequestedParams(
                "red circle", seed=3, steps=10, cfg=3.0, check_interval=1, preview_decoder=decoder,
                **NO_ACTIONS,
            )  # fmt: skip
            run_monitored(model, model.resolve(params), registry, RunControl(), recorder)
            report[f"{model.name} {decoder}"] = {
                "max_score": max(c.score for c in recorder.checks),
                "max_clean": max(c.components["clean"] for c in recorder.checks),
                "max_structure": max(c.components["structure"] for c in recorder.checks),
            }
    return report


def timed_ms(action: Callable[[], object], repeats: int) -> list[float]:
    action()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append((time.perf_counter() - start) * 1000)
    return quartiles(times)


def measure_cost(registry: VerifierRegistry, repeats: int) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for verifier_id in VERIFIERS:
        verifier: Verifier = registry.get(verifier_id)
        for side in (64, 512):
            image = picture(side).float()
            report.setdefault(verifier_id, {})[str(side)] = timed_ms(
                lambda v=verifier, i=image: score_batch(v, i, ""), repeats
            )
    return report


def print_report(report: dict[str, Any]) -> None:
    print("\nSynthetic pictures: score at 32 / 64 / 256 / 512 px (spread)")
    for verifier_id, rows in report["synthetic"].items():
        for name, row in rows.items():
            values = " / ".join(f"{row[str(side)]['score']:.3f}" for side in SIDES)
            print(f"  {verifier_id:15} {name:15} {values}  ({row['spread']:.3f})")
    print("\nBuilt-in model, structure: median [quartiles] of score, structure, clean")
    for sampler, steps in report["builtin"].items():
        for step, parts in steps.items():
            cells = "  ".join(
                f"{name} {q[1]:.2f} [{q[0]:.2f}–{q[2]:.2f}]" for name, q in parts.items()
            )
            print(f"  {sampler:9} step {step:>2}  {cells}")
    print("\nTiny random-weight pipelines (pure-noise previews): highest over 10 checks")
    for name, row in report["tiny"].items():
        print(
            f"  {name:18} score {row['max_score']:.3f}  clean {row['max_clean']:.3f}"
            f"  structure {row['max_structure']:.3f}"
        )
    print("\nCost per check, one image, ms: median [quartiles]")
    for verifier_id, sides in report["cost_ms"].items():
        cells = "  ".join(f"{s}px {q[1]:.2f} [{q[0]:.2f}–{q[2]:.2f}]" for s, q in sides.items())
        print(f"  {verifier_id:15} {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2, help="seeds per built-in prompt")
    parser.add_argument("--repeats", type=int, default=50, help="timed repeats per cost figure")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    registry = VerifierRegistry()
    model = load_model(ModelSpec.parse(f"{DEFAULT_MODEL},device=cpu"))
    report = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads": args.threads, "cpu": platform.processor() or platform.machine()},
        "synthetic": measure_synthetic(registry),
        "builtin": measure_builtin(model, registry, args.seeds),
        "tiny": measure_tiny(registry),
        "cost_ms": measure_cost(registry, args.repeats),
    }  # fmt: skip
    print_report(report)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
