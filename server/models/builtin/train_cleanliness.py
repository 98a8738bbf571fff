"""Train the ``clean`` regressor (:mod:`.cleanliness`) on the built-in model's own trajectories.

Run it as ``stepwatch train-builtin --only cleanliness --out DIR``: it samples with the pipeline in
``DIR`` (the shipped one when ``DIR`` holds none), so it follows whatever diffusion model it
scores. Data, all drawn from one seed:

- **trajectories**: batches of images through the real pipeline, each batch with one of the
  engine's samplers (:data:`SAMPLERS`, cycled), a step count in [10, 40], a guidance scale in
  [1, 5] and prompts drawn from the vocabulary (each attribute named with probability 0.6, so
  partial and empty prompts occur). The engine's :class:`~stepwatch.server.engine.x0.StepCapture`
  gives the x0 estimate after every step; its target is :func:`~.cleanliness.clean_target`
  against the trajectory's finished image.
- **off-trajectory** images per batch, with the same target: uniform and Gaussian noise
  (``clean`` 0), and each finished image blurred or noised by a random amount.

The last of every five groups of five batches (one per sampler) is held out whole for validation;
the summary reports the mean absolute error in dB (target units × 30 dB) and the mean ``clean`` at
steps 5, 10 and 15 and on the finished image, per sampler, on those held-out trajectories.

Determinism: seeded generators, deterministic algorithms, the thread count given (1 for the
shipped weights); the same seed and settings on the same torch build give the same bits.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from stepwatch.server.engine.samplers import build_scheduler
from stepwatch.server.engine.x0 import StepCapture
from stepwatch.server.models.builtin.cleanliness import (
    PSNR_SPAN_DB,
    SUBFOLDER,
    CleanlinessRegressor,
    clean_target,
)
from stepwatch.server.models.builtin.vocabulary import ATTRIBUTES, ParsedPrompt

#: The engine's samplers the trajectories are drawn with, cycled batch by batch.
SAMPLERS = ("dpmpp_2m", "ddim", "euler", "euler_a", "unipc")
#: The steps (1-based, after that many denoising steps) the summary reports ``clean`` at.
REPORTED_STEPS = (5, 10, 15)

Log = Callable[[str], None]


@dataclass(frozen=True)
class CleanlinessSettings:
    """What the trajectories are and how the regressor is trained on them."""

    batches: int = 50
    batch_size: int = 12
    min_steps: int = 10
    max_steps: int = 40
    min_guidance: float = 1.0
    max_guidance: float = 5.0
    attribute_probability: float = 0.6
    # Every this-many-th group of batches (one batch per sampler) is held out for validation.
    holdout_every: int = 5
    steps: int = 2000
    training_batch: int = 64
    learning_rate: float = 3e-3
    widths: tuple[int, ...] = (16, 32, 48)
    hidden: int = 32


def tiny_cleanliness_settings() -> CleanlinessSettings:
    """Seconds-long settings for tests (the regressor they train is useless)."""
    return CleanlinessSettings(
        batches=2 * len(SAMPLERS),
        batch_size=2,
        min_steps=3,
        max_steps=4,
        holdout_every=2,
        steps=3,
        training_batch=8,
        widths=(4, 8),
        hidden=4,
    )


@dataclass
class Examples:
    """Images in [0, 1] (N×3×32×32, float16), their targets, and where each one came from.

    ``step`` is the number of denoising steps run (0 for off-trajectory images), ``steps`` the
    trajectory's length (0 off-trajectory), ``sampler`` an index into :data:`SAMPLERS`.
    """

    images: torch.Tensor
    targets: torch.Tensor
    step: torch.Tensor
    steps: torch.Tensor
    sampler: torch.Tensor


def random_prompt(generator: torch.Generator, probability: float) -> str:
    """Draw a prompt from the vocabulary, naming each attribute with ``probability``."""
    values: list[str | None] = []
    for attribute in ATTRIBUTES:
        named = float(torch.rand((), generator=generator)) < probability
        index = int(torch.randint(len(attribute.values), (), generator=generator))
        values.append(attribute.values[index] if named else None)
    return ParsedPrompt(*values).text()


@torch.no_grad()
def sample_trajectories(
    pipeline: Any,
    sampler: str,
    steps: int,
    guidance: float,
    prompts: list[str],
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``pipeline`` once on ``prompts``; return the x0 estimate after every step
    (steps×N×3×H×W) and the finished images (N×3×H×W), both in [0, 1].

    The scheduler is the engine's (``build_scheduler`` on the pipeline's own config, schedule
    "normal") and x0 comes from the engine's :class:`StepCapture`.
    """
    original = pipeline.scheduler
    pipeline.scheduler = build_scheduler(original.config, sampler, "normal", flow=False)
    capture = StepCapture(pipeline.scheduler)
    estimates: list[torch.Tensor] = []

    def on_step(pipe: Any, index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        estimates.append((capture.x0().float().clamp(-1, 1) + 1) / 2)
        return {}

    try:
        finals = pipeline(
            prompts,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generator,
            output_type="pt",
            callback_on_step_end=on_step,
        ).images
    finally:
        capture.remove()
        pipeline.scheduler = original
    return torch.stack(estimates), finals.float()


def off_trajectory(finals: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Noise and degraded finished images: uniform and Gaussian noise, a random blur and a
    random additive noise of each finished image (4N images; targets from the finals)."""
    n = finals.shape[0]
    uniform = torch.rand(finals.shape, generator=generator)
    gaussian = (0.5 + 0.5 * torch.randn(finals.shape, generator=generator)).clamp(0, 1)
    radius = torch.randint(1, 4, (), generator=generator).item()
    size = 2 * int(radius) + 1
    padded = F.pad(finals, (size // 2,) * 4, mode="replicate")
    blurred = F.avg_pool2d(padded, size, stride=1)
    amount = torch.rand(n, 1, 1, 1, generator=generator)
    blurred = finals + amount * (blurred - finals)
    sigma = 0.25 * torch.rand(n, 1, 1, 1, generator=generator) ** 2
    noised = (finals + sigma * torch.randn(finals.shape, generator=generator)).clamp(0, 1)
    return torch.cat([uniform, gaussian, blurred, noised])


def _batch_plan(settings: CleanlinessSettings, seed: int, batch: int) -> tuple[str, int, float]:
    generator = torch.Generator().manual_seed(seed * 100_003 + batch)
    steps = int(torch.randint(settings.min_steps, settings.max_steps + 1, (), generator=generator))
    span = settings.max_guidance - settings.min_guidance
    guidance = settings.min_guidance + span * float(torch.rand((), generator=generator))
    return SAMPLERS[batch % len(SAMPLERS)], steps, round(guidance, 2)


def is_validation(batch: int, holdout_every: int) -> bool:
    """Whether a batch's trajectories are held out: the last of every ``holdout_every`` groups
    of :data:`SAMPLERS` batches (so every sampler is held out alike)."""
    return (batch // len(SAMPLERS)) % holdout_every == holdout_every - 1


def make_examples(
    pipeline: Any, settings: CleanlinessSettings, seed: int, log: Log
) -> tuple[Examples, Examples]:
    """Sample every batch's trajectories and off-trajectory images; return (train, validation)."""
    parts: dict[bool, list[Examples]] = {False: [], True: []}
    for batch in range(settings.batches):
        sampler, steps, guidance = _batch_plan(settings, seed, batch)
        generator = torch.Generator().manual_seed(seed * 100_003 + 50_000 + batch)
        prompts = [
            random_prompt(generator, settings.attribute_probability)
            for _ in range(settings.batch_size)
        ]
        estimates, finals = sample_trajectories(
            pipeline, sampler, steps, guidance, prompts, generator
        )
        extra = off_trajectory(finals, generator)
        n = finals.shape[0]
        images = torch.cat([estimates.flatten(0, 1), extra])
        references = torch.cat([finals.repeat(steps, 1, 1, 1), finals.repeat(4, 1, 1, 1)])
        step = torch.arange(1, steps + 1).repeat_interleave(n)
        parts[is_validation(batch, settings.holdout_every)].append(
            Examples(
                images=images.half(),
                targets=clean_target(images, references),
                step=torch.cat([step, torch.zeros(4 * n, dtype=torch.long)]),
                steps=torch.cat(
                    [torch.full((steps * n,), steps), torch.zeros(4 * n, dtype=torch.long)]
                ),
                sampler=torch.full((len(images),), SAMPLERS.index(sampler)),
            )
        )
        log(f"  batch {batch:3d}  {sampler:9s} {steps:2d} steps  cfg {guidance:.2f}")
    return _concat(parts[False]), _concat(parts[True])


def _concat(parts: list[Examples]) -> Examples:
    if not parts:
        empty = torch.zeros(0, dtype=torch.long)
        return Examples(torch.zeros(0, 3, 32, 32).half(), torch.zeros(0), empty, empty, empty)
    return Examples(
        *(torch.cat([getattr(p, name) for p in parts]) for name in Examples.__dataclass_fields__)
    )


def _rate(step: int, total: int, peak: float) -> float:
    """Linear warm-up over 50 steps, then linear decay to a twentieth of the peak."""
    warmup = min(50, max(1, total // 10))
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (1 - 0.95 * (step - warmup) / max(1, total - warmup))


def fit(
    model: CleanlinessRegressor,
    train: Examples,
    settings: CleanlinessSettings,
    seed: int,
    log: Log,
) -> list[dict[str, float]]:
    """Train ``model`` on ``train`` (binary cross-entropy on the soft targets, random horizontal
    flips, which keep PSNR); return the loss curve."""
    generator = torch.Generator().manual_seed(seed + 1)
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=1e-4)
    curve: list[dict[str, float]] = []
    model.train()
    window: list[float] = []
    for step in range(settings.steps):
        for group in optimiser.param_groups:
            group["lr"] = _rate(step, settings.steps, settings.learning_rate)
        index = torch.randint(len(train.targets), (settings.training_batch,), generator=generator)
        images = train.images[index].float() * 2 - 1
        flip = torch.rand(len(index), generator=generator) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(3), images)
        loss = F.binary_cross_entropy_with_logits(model(images), train.targets[index])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        window.append(loss.item())
        if (step + 1) % 50 == 0 or step == settings.steps - 1:
            curve.append({"step": step + 1, "loss": sum(window) / len(window)})
            log(f"  step {step + 1:5d}  loss {curve[-1]['loss']:.4f}")
            window = []
    model.eval()
    return curve


@torch.no_grad()
def predict(model: CleanlinessRegressor, images: torch.Tensor) -> torch.Tensor:
    """``clean`` for images in [0, 1], in chunks."""
    model.eval()
    if not len(images):
        return torch.zeros(0)
    return torch.cat([model(chunk.float() * 2 - 1).sigmoid() for chunk in images.split(512)])


def evaluate(model: CleanlinessRegressor, examples: Examples) -> dict[str, Any]:
    """Validation figures: MAE in dB overall, on and off trajectory, and mean ``clean`` (with the
    target beside it) at :data:`REPORTED_STEPS` and on the finished image, per sampler."""
    predicted = predict(model, examples.images)
    error = (predicted - examples.targets).abs() * PSNR_SPAN_DB
    on = examples.steps > 0

    def mean(values: torch.Tensor) -> float | None:
        return float(values.mean()) if len(values) else None

    per_sampler: dict[str, dict[str, dict[str, float | None]]] = {}
    for index, name in enumerate(SAMPLERS):
        rows: dict[str, dict[str, float | None]] = {}
        of_sampler = on & (examples.sampler == index)
        for label, mask in [
            *((f"step {s}", of_sampler & (examples.step == s)) for s in REPORTED_STEPS),
            ("final", of_sampler & (examples.step == examples.steps)),
        ]:
            rows[label] = {
                "clean": mean(predicted[mask]),
                "target": mean(examples.targets[mask]),
                "count": float(mask.sum()),
            }
        per_sampler[name] = rows
    return {
        "examples": len(predicted),
        "mae_db": mean(error),
        "mae_db_on_trajectory": mean(error[on]),
        "mae_db_off_trajectory": mean(error[~on]),
        "per_sampler": per_sampler,
    }


def train_cleanliness(
    settings: CleanlinessSettings,
    seed: int,
    out: Path,
    pipeline_folder: Path | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """Sample the data with the pipeline in ``pipeline_folder`` (default: the shipped model),
    train the regressor, and write ``out/cleanliness/`` (fp16) and its ``out/training/`` records.

    Call after ``torch.set_num_threads`` and ``torch.use_deterministic_algorithms(True)``.
    """
    from stepwatch.server.models.builtin.pipeline import ShapesPipeline, weights_dir

    started, cpu_started = time.perf_counter(), time.process_time()
    pipeline = ShapesPipeline.from_pretrained(
        pipeline_folder or weights_dir(), low_cpu_mem_usage=False
    )
    pipeline.set_progress_bar_config(disable=True)
    log("cleanliness: sampling trajectories")
    train, validation = make_examples(pipeline, settings, seed, log)
    sampled = time.perf_counter()
    log(f"cleanliness: {len(train.targets)} training, {len(validation.targets)} held-out images")
    torch.manual_seed(seed)
    model = CleanlinessRegressor(widths=settings.widths, hidden=settings.hidden)
    curve = fit(model, train, settings, seed, log)
    summary = {
        "seconds_sampling": sampled - started,
        "seconds_training": time.perf_counter() - sampled,
        # CPU time of this process: the wall-clock figures grow when other work shares the core.
        "cpu_seconds": time.process_time() - cpu_started,
        "training_examples": len(train.targets),
        "parameters": sum(p.numel() for p in model.parameters()),
        "validation": evaluate(model, validation),
    }
    model.half()
    model.save_pretrained(out / SUBFOLDER, safe_serialization=True)
    records = out / "training"
    records.mkdir(parents=True, exist_ok=True)
    for name, payload in (
        ("cleanliness_loss.json", curve),
        ("cleanliness_summary.json", summary),
        ("cleanliness_settings.json", {"seed": seed, **asdict(settings)}),
    ):
        (records / name).write_text(json.dumps(payload, indent=1) + "\n")
    log(f"cleanliness: validation MAE {summary['validation']['mae_db']:.2f} dB")
    return summary
