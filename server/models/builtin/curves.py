"""The built-in model's expected-score curves: what it usually scores at each point of a run.

:func:`compute_curves` samples the shipped model with every sampler it offers at its default
settings (20 steps, CFG 3, the ``normal`` schedule) over half the full four-attribute prompts and
every shape+colour prompt (72 runs per sampler), scores the x0 estimate of every step with the
model's own verifier and the weight-free ``structure``, and keeps each (verifier, sampler)'s
median and low band by fraction of the run (an
:class:`~stepwatch.server.engine.curves.ExpectedCurve`), then what raising CFG at the middle of
the run did to the runs that were behind there (:func:`with_raise_gains`). The result ships as
``weights/curves.json``; :func:`load_curves` reads it. Deterministic for a given torch build:

    python -m stepwatch.server.models.builtin.curves          # rewrites weights/curves.json
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from stepwatch.server.engine.curves import ExpectedCurve, curve_key
from stepwatch.server.engine.model import LoadedModel
from stepwatch.server.engine.verifiers import VerifierRegistry, score_batch
from stepwatch.server.engine.x0 import StepCapture
from stepwatch.server.models.builtin.pipeline import weights_dir
from stepwatch.server.models.builtin.vocabulary import ATTRIBUTES, ParsedPrompt

CURVES_FILE = "curves.json"
SEEDS = 1
#: The verifiers curves are shipped for: the model's own and the weight-free default.
VERIFIERS = ("adherence", "structure")
#: Samplers computed first (the benchmarks' and the default).
FIRST = ("dpmpp_2m", "ddim", "euler")
#: Where the raise gain is measured: the check at the middle of a run, with the run defaults'
#: scale factor and threshold.
MIDDLE = 0.5
SCALE_FACTOR = 1.25
THRESHOLD = 0.7


def curves_path(folder: Path | None = None) -> Path:
    """Where the shipped curves live."""
    return (folder or weights_dir()) / CURVES_FILE


def load_curves(folder: Path | None = None) -> dict[str, ExpectedCurve]:
    """Read the shipped curves (empty when the file is missing)."""
    path = curves_path(folder)
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {key: ExpectedCurve.from_json(value, "shipped") for key, value in data.items()}


def curve_prompts() -> list[str]:
    """Every other full four-attribute prompt (48), then every shape+colour prompt (24)."""
    full = [ParsedPrompt(*v) for v in itertools.product(*(a.values for a in ATTRIBUTES))]
    shapes, colours = ATTRIBUTES[0].values, ATTRIBUTES[1].values
    pairs = [ParsedPrompt(shape=s, colour=c) for s in shapes for c in colours]
    return [p.text() for p in full[::2] + pairs]


@torch.no_grad()
def sampler_scores(
    model: LoadedModel,
    registry: VerifierRegistry,
    sampler: str,
    prompts: list[str],
    verifiers: tuple[str, ...],
    raise_at: float | None = None,
) -> dict[str, list[list[tuple[float, float]]]]:
    """Per verifier, per image: ``(progress, score)`` at every step of one batched run; with
    ``raise_at``, CFG is raised by the default ``scale_factor`` after the first step at or past
    that fraction of the run, as the policy would raise it there."""
    pipeline = model.pipeline
    scheduler = model.build_scheduler(sampler, "normal")
    texts = [p for p in prompts for _ in range(SEEDS)]
    noise = torch.stack(
        [
            torch.randn((3, 32, 32), generator=torch.Generator().manual_seed(7_000 * i + s))
            for i in range(len(prompts))
            for s in range(SEEDS)
        ]
    )
    ids = list(verifiers)
    scores: dict[str, list[list[tuple[float, float]]]] = {v: [[] for _ in texts] for v in ids}
    own, pipeline.scheduler = pipeline.scheduler, scheduler
    capture = StepCapture(scheduler)

    def on_step(pipe: Any, index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        total = len(pipe.scheduler.timesteps)
        images = model.decoders["identity"].decode(capture.x0())
        for verifier_id in ids:
            verifier = registry.get(verifier_id)
            for first in range(0, len(texts), SEEDS):
                batch = images[first : first + SEEDS]
                for row, score in enumerate(score_batch(verifier, batch, texts[first]), first):
                    scores[verifier_id][row].append(((index + 1) / total, score.value))
        if raise_at is not None and index + 1 == math.ceil(raise_at * total):
            pipe._guidance_scale = model.defaults.cfg * SCALE_FACTOR
        return {}

    try:
        pipeline(
            texts,
            num_inference_steps=model.defaults.steps,
            guidance_scale=model.defaults.cfg,
            latents=noise,
            output_type="latent",
            callback_on_step_end=on_step,
        )
    finally:
        capture.remove()
        pipeline.scheduler = own
    return scores


def compute_curves(
    model: LoadedModel,
    registry: VerifierRegistry,
    verifiers: tuple[str, ...] = VERIFIERS,
    folder: Path | None = None,
) -> dict[str, ExpectedCurve]:
    """Every (verifier, sampler) curve of the built-in model (see the module docstring),
    written to ``folder`` after each sampler when one is given."""
    prompts = curve_prompts()
    curves: dict[str, ExpectedCurve] = {}
    for sampler in sorted(model.samplers, key=lambda s: (s not in FIRST, s)):
        scores = sampler_scores(model, registry, sampler, prompts, verifiers)
        for verifier_id, runs in scores.items():
            curve = ExpectedCurve.from_runs(runs, "shipped")
            if curve is not None:
                curves[curve_key(verifier_id, sampler)] = curve
        if folder is not None:
            print(f"{sampler}: {len(prompts) * SEEDS} runs -> {write_curves(curves, folder)}")
    return curves


def with_raise_gains(
    model: LoadedModel,
    registry: VerifierRegistry,
    curves: Mapping[str, ExpectedCurve],
    verifiers: tuple[str, ...] = VERIFIERS,
    folder: Path | None = None,
) -> dict[str, ExpectedCurve]:
    """``curves`` with each one's :attr:`~ExpectedCurve.raise_gain`: the runs under the low band
    (and under the default threshold's track) at the middle of the run, sampled again with CFG
    raised there, change their final score by this much on average. Written to ``folder``
    after each sampler when one is given."""
    prompts = curve_prompts()
    measured = dict(curves)
    for sampler in sorted(model.samplers, key=lambda s: (s not in FIRST, s)):
        plain = sampler_scores(model, registry, sampler, prompts, verifiers)
        raised = sampler_scores(model, registry, sampler, prompts, verifiers, raise_at=MIDDLE)
        for verifier_id in verifiers:
            key = curve_key(verifier_id, sampler)
            if key not in measured:
                continue
            curve = measured[key]
            median, low = curve.at(MIDDLE)
            on_track = THRESHOLD * median / curve.final if curve.final > 0 else 0.0
            gains = []
            for before, after in zip(plain[verifier_id], raised[verifier_id], strict=True):
                score = min(before, key=lambda check: abs(check[0] - MIDDLE))[1]
                if score < low and score < on_track:
                    gains.append(after[-1][1] - before[-1][1])
            if gains:
                gain = sum(gains) / len(gains)
                measured[key] = dataclasses.replace(curve, raise_gain=gain, raise_runs=len(gains))
        if folder is not None:
            print(f"{sampler}: raise gains -> {write_curves(measured, folder)}", flush=True)
    return measured


def write_curves(curves: Mapping[str, ExpectedCurve], folder: Path | None = None) -> Path:
    """Write ``curves`` as the shipped file; return its path."""
    path = curves_path(folder)
    data = {key: curve.to_json() for key, curve in sorted(curves.items())}
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    """Recompute the shipped curves from the shipped model."""
    from stepwatch.server.models.loading import load_builtin_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder (default: the package's)")
    parser.add_argument(
        "--gains-only", action="store_true", help="only measure raise gains of the shipped curves"
    )
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = load_builtin_model("shapes", torch.device("cpu"))
    registry = VerifierRegistry()
    registry.register_model_verifiers(model.verifiers)
    folder = args.out or weights_dir()
    curves = load_curves(folder) if args.gains_only else compute_curves(model, registry)
    with_raise_gains(model, registry, curves, folder=folder)


if __name__ == "__main__":
    main()
