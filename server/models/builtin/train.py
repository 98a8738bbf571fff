"""Train every weight of the built-in model from one seed: the diffusion model and both classifiers.

Run it as ``stepwatch train-builtin --out DIR`` (:mod:`stepwatch.server.models.builtin.command`).
It trains, in order, the adherence classifier, the judge and the diffusion model (DDPM, epsilon
prediction, offset noise in its last steps, an EMA of the weights), each on its own split of the
procedural data, and writes into ``DIR`` a diffusers pipeline folder plus ``adherence/``,
``judge/`` and ``training/`` (loss curves as JSON, the run's settings and timings, and a
resumable checkpoint that is not shipped).

Determinism: every random draw comes from generators seeded from ``--seed``, torch runs with
deterministic algorithms and a fixed thread count (``--threads``, 1 for the shipped weights). The
same seed, step counts and thread count on the same torch build reproduce the weights bit for bit;
a different thread count may change float summation order and so the last bits.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
from torch import nn

from stepwatch.server.models.builtin import data
from stepwatch.server.models.builtin.classifier import (
    AttributeClassifier,
    JudgeClassifier,
    split_logits,
)
from stepwatch.server.models.builtin.encoder import AttributeEncoder

# Each split of the procedural data is its own seed stream, so no image is shared between them.
SPLIT_DIFFUSION, SPLIT_ADHERENCE, SPLIT_JUDGE, SPLIT_VALIDATION = 1, 2, 3, 4


@dataclass(frozen=True)
class DiffusionSettings:
    """The UNet's shape and how the diffusion model is trained."""

    steps: int = 4600
    batch_size: int = 48
    data_size: int = 60_000
    learning_rate: float = 8e-4
    warmup_steps: int = 100
    ema_decay: float = 0.999
    attribute_dropout: float = 0.1
    all_dropout: float = 0.1
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    attention_levels: tuple[bool, ...] = (False, False, True)
    # FiLM-style conditioning: the time + attribute embedding scales and shifts every ResNet
    # block's features, rather than only adding a bias; shapes follow the prompt much sooner.
    time_scale_shift: str = "scale_shift"
    # Forward and backward in bfloat16 (weights, optimiser and EMA stay float32): about 1.4x
    # faster on CPUs with AMX or AVX512-BF16.
    bfloat16: bool = True
    # What the UNet predicts: "epsilon" (the noise) or "v_prediction".
    prediction_type: str = "epsilon"
    # Offset noise: from step ``offset_noise_from`` on, every training noise gets a random
    # per-image, per-channel constant (this many standard deviations) added. Without it an
    # epsilon model cannot move an image's mean brightness at high noise levels, and about a
    # quarter of the backgrounds came out mid-grey instead of dark or light (Guttenberg,
    # "Diffusion with offset noise", Crosslabs 2023, proposes 0.1). The shipped run fine-tunes
    # with it after the main run, which keeps the first 4000 steps identical to that run.
    offset_noise: float = 0.1
    offset_noise_from: int = 4000
    checkpoint_every: int = 200


@dataclass(frozen=True)
class ClassifierSettings:
    """How one attribute classifier is trained."""

    steps: int = 600
    batch_size: int = 128
    data_size: int = 30_000
    learning_rate: float = 2e-3
    validation_size: int = 2000


@dataclass(frozen=True)
class TrainSettings:
    """Everything that determines the trained weights."""

    seed: int = 0
    threads: int = 1
    diffusion: DiffusionSettings = field(default_factory=DiffusionSettings)
    adherence: ClassifierSettings = field(default_factory=ClassifierSettings)
    judge: ClassifierSettings = field(default_factory=ClassifierSettings)


def tiny_settings(seed: int = 0) -> TrainSettings:
    """Settings for a seconds-long run of every loop, for tests (the weights are useless)."""
    diffusion = DiffusionSettings(
        steps=3,
        batch_size=4,
        data_size=16,
        warmup_steps=1,
        block_out_channels=(16, 32),
        attention_levels=(False, True),
        offset_noise_from=1,
        checkpoint_every=2,
    )
    classifier = ClassifierSettings(steps=2, batch_size=4, data_size=16, validation_size=8)
    return TrainSettings(
        seed=seed, diffusion=diffusion, adherence=classifier, judge=replace(classifier)
    )


def make_unet(settings: DiffusionSettings) -> UNet2DModel:
    """Build the untrained UNet: 32×32 RGB in and out, conditioned through ``class_labels``."""
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in settings.attention_levels)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(settings.attention_levels))
    return UNet2DModel(
        sample_size=data.IMAGE_SIZE,
        in_channels=3,
        out_channels=3,
        block_out_channels=settings.block_out_channels,
        down_block_types=down,
        up_block_types=up,
        layers_per_block=settings.layers_per_block,
        norm_num_groups=8,
        attention_head_dim=32,
        class_embed_type="identity",
        resnet_time_scale_shift=settings.time_scale_shift,
    )


def make_training_scheduler(prediction_type: str = "epsilon") -> DDPMScheduler:
    """The noise schedule the model is trained on (DDPM's linear betas, 1000 steps).

    Not the cosine schedule: its last beta is capped at 0.999, so its largest sigma is about
    2e4, and sigma-space samplers without clipping (Euler) then blow the first step's error up.
    The linear schedule's largest sigma is about 157, which every diffusers scheduler handles.
    """
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        prediction_type=prediction_type,
        clip_sample=True,
    )


def make_default_sampler(prediction_type: str = "epsilon") -> DPMSolverMultistepScheduler:
    """The scheduler the shipped pipeline samples with unless the caller swaps it."""
    return DPMSolverMultistepScheduler.from_config(
        make_training_scheduler(prediction_type).config,
        algorithm_type="dpmsolver++",
        solver_order=2,
        thresholding=True,
        sample_max_value=1.0,
    )


def _constant_rate(step: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then constant.

    The diffusion model's rate does not depend on the total step count, so the EMA weights at
    step k of any run are exactly those of a run with ``--steps k``: a run can be judged while
    it trains and stopped once it is good enough, and stays reproducible.
    """
    return peak * min(1.0, (step + 1) / warmup)


def _learning_rate(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def _augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Blur, noise, flip and shift contrast so a classifier also reads half-denoised previews."""
    n = images.shape[0]
    flip = torch.rand(n, generator=generator) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(3), images)
    blurred = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    blur = torch.rand(n, 1, 1, 1, generator=generator)
    blur = blur * (torch.rand(n, 1, 1, 1, generator=generator) < 0.5)
    images = images + blur * (blurred - images)
    contrast = 1 + 0.2 * (torch.rand(n, 1, 1, 1, generator=generator) - 0.5)
    noise_level = 0.15 * torch.rand(n, 1, 1, 1, generator=generator)
    noise = torch.randn(images.shape, generator=generator) * noise_level
    return (images * contrast + noise).clamp(-1, 1)


def _as_model_input(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(data.to_model_range(images))


def _write_json(path: Path, payload: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")


Log = Callable[[str], None]


def train_classifier(
    model: nn.Module, settings: ClassifierSettings, seed: int, split: int, log: Log
) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Train ``model`` on its data split; return its loss curve and validation accuracy."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    batch = data.generate(settings.data_size, seed=1000 * seed + split)
    images, labels = _as_model_input(batch.images), torch.from_numpy(batch.labels)
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=1e-4)
    curve: list[dict[str, float]] = []
    model.train()
    for step in range(settings.steps):
        for group in optimiser.param_groups:
            group["lr"] = _learning_rate(step, settings.steps, settings.learning_rate, 50)
        index = torch.randint(settings.data_size, (settings.batch_size,), generator=generator)
        logits = model(_augment(images[index], generator))
        blocks = split_logits(logits)
        loss = sum(F.cross_entropy(b, labels[index, a]) for a, b in enumerate(blocks))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step % 50 == 0 or step == settings.steps - 1:
            curve.append({"step": step, "loss": loss.item()})
            log(f"  step {step:5d}  loss {loss.item():.4f}")
    return curve, _validation_accuracy(model, seed, settings.validation_size)


@torch.no_grad()
def _validation_accuracy(model: nn.Module, seed: int, count: int) -> dict[str, float]:
    from stepwatch.server.models.builtin.vocabulary import ATTRIBUTE_NAMES

    model.eval()
    batch = data.generate(count, seed=1000 * seed + SPLIT_VALIDATION)
    blocks = split_logits(model(_as_model_input(batch.images)))
    labels = torch.from_numpy(batch.labels)
    correct = torch.stack([b.argmax(1) == labels[:, a] for a, b in enumerate(blocks)], dim=1)
    accuracy = {n: float(correct[:, a].float().mean()) for a, n in enumerate(ATTRIBUTE_NAMES)}
    accuracy["joint"] = float(correct.all(dim=1).float().mean())
    return accuracy


@dataclass
class _DiffusionState:
    """What a checkpoint holds: the live and EMA weights, optimiser, step and random state."""

    unet: UNet2DModel
    encoder: AttributeEncoder
    ema: list[torch.Tensor]
    optimiser: torch.optim.Optimizer
    generator: torch.Generator
    step: int
    curve: list[dict[str, float]]

    def parameters(self) -> list[nn.Parameter]:
        return [*self.unet.parameters(), *self.encoder.parameters()]

    def save(self, path: Path) -> None:
        payload = {
            "unet": self.unet.state_dict(),
            "encoder": self.encoder.state_dict(),
            "ema": self.ema,
            "optimiser": self.optimiser.state_dict(),
            "generator": self.generator.get_state(),
            "step": self.step,
            "curve": self.curve,
        }
        torch.save(payload, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)

    def load(self, path: Path) -> None:
        payload = torch.load(path, weights_only=True)
        self.unet.load_state_dict(payload["unet"])
        self.encoder.load_state_dict(payload["encoder"])
        self.ema = payload["ema"]
        self.optimiser.load_state_dict(payload["optimiser"])
        self.generator.set_state(payload["generator"])
        self.step = payload["step"]
        self.curve = payload["curve"]

    def ema_modules(self) -> tuple[UNet2DModel, AttributeEncoder]:
        """Return copies of the UNet and encoder holding the EMA weights."""
        unet, encoder = make_unet_like(self.unet), AttributeEncoder.from_config(self.encoder.config)
        targets = [*unet.parameters(), *encoder.parameters()]
        with torch.no_grad():
            for target, value in zip(targets, self.ema, strict=True):
                target.copy_(value)
        return unet, encoder


def make_unet_like(unet: UNet2DModel) -> UNet2DModel:
    return UNet2DModel.from_config(unet.config)


def _condition_dropout(
    labels: torch.Tensor, settings: DiffusionSettings, generator: torch.Generator
) -> torch.Tensor:
    """Turn class indices into encoder indices, dropping attributes (and whole prompts) to null.

    Dropping single attributes teaches the model prompts that omit them; dropping all of them
    teaches the unconditional model that classifier-free guidance needs.
    """
    indices = labels + 1
    keep = torch.rand(indices.shape, generator=generator) >= settings.attribute_dropout
    keep &= torch.rand(indices.shape[0], 1, generator=generator) >= settings.all_dropout
    return indices * keep


def _diffusion_step(
    state: _DiffusionState,
    images: torch.Tensor,
    labels: torch.Tensor,
    noise_schedule: DDPMScheduler,
    settings: DiffusionSettings,
) -> float:
    g = state.generator
    index = torch.randint(images.shape[0], (settings.batch_size,), generator=g)
    clean = images[index]
    flip = torch.rand(settings.batch_size, generator=g) < 0.5
    clean = torch.where(flip[:, None, None, None], clean.flip(3), clean)
    noise = torch.randn(clean.shape, generator=g)
    if settings.offset_noise and state.step >= settings.offset_noise_from:
        offset = torch.randn((*clean.shape[:2], 1, 1), generator=g)
        noise = noise + settings.offset_noise * offset
    timesteps = torch.randint(noise_schedule.config.num_train_timesteps, (len(index),), generator=g)
    noisy = noise_schedule.add_noise(clean, noise, timesteps)
    if settings.prediction_type == "v_prediction":
        target = noise_schedule.get_velocity(clean, noise, timesteps)
    else:
        target = noise
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=settings.bfloat16):
        condition = state.encoder(_condition_dropout(labels[index], settings, g))
        predicted = state.unet(noisy, timesteps, class_labels=condition).sample
    loss = F.mse_loss(predicted.float(), target)
    state.optimiser.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(state.parameters(), 1.0)
    state.optimiser.step()
    return loss.item()


def _update_ema(state: _DiffusionState, settings: DiffusionSettings) -> None:
    # Warm-up form of the decay, so early EMA weights are not dominated by the random init.
    decay = min(settings.ema_decay, (1 + state.step) / (10 + state.step))
    with torch.no_grad():
        torch._foreach_lerp_(state.ema, [p.detach() for p in state.parameters()], 1 - decay)


def _new_state(settings: DiffusionSettings, seed: int) -> _DiffusionState:
    """Build the untrained UNet, encoder, EMA copy, optimiser and generator from ``seed``."""
    torch.manual_seed(seed)
    unet = make_unet(settings)
    encoder = AttributeEncoder(embedding_dim=unet.config.block_out_channels[0] * 4)
    params = [*unet.parameters(), *encoder.parameters()]
    return _DiffusionState(
        unet=unet,
        encoder=encoder,
        ema=[p.detach().clone() for p in params],
        optimiser=torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.0),
        generator=torch.Generator().manual_seed(seed + 1),
        step=0,
        curve=[],
    )


def train_diffusion(
    settings: DiffusionSettings, seed: int, checkpoint: Path, log: Log, stop_at: int | None = None
) -> _DiffusionState:
    """Train the UNet and attribute encoder, resuming from ``checkpoint`` when it exists.

    ``stop_at`` ends this session early at that step (with a checkpoint), to split one run
    across sessions; the finished run is the same either way.
    """
    state = _new_state(settings, seed)
    if checkpoint.exists():
        state.load(checkpoint)
        log(f"resumed from {checkpoint} at step {state.step}")
    count = sum(p.numel() for p in state.parameters())
    log(f"diffusion: {count:,} parameters, {settings.steps} steps")
    batch = data.generate(settings.data_size, seed=1000 * seed + SPLIT_DIFFUSION)
    images, labels = _as_model_input(batch.images), torch.from_numpy(batch.labels)
    noise_schedule = make_training_scheduler(settings.prediction_type)
    state.unet.train()
    window: list[float] = []
    started = time.perf_counter()
    last = settings.steps if stop_at is None else min(stop_at, settings.steps)
    while state.step < last:
        lr = _constant_rate(state.step, settings.learning_rate, settings.warmup_steps)
        for group in state.optimiser.param_groups:
            group["lr"] = lr
        window.append(_diffusion_step(state, images, labels, noise_schedule, settings))
        _update_ema(state, settings)
        state.step += 1
        if state.step % 25 == 0 or state.step == settings.steps:
            mean = sum(window) / len(window)
            state.curve.append({"step": state.step, "loss": mean, "lr": lr})
            rate = (time.perf_counter() - started) / len(window)
            log(f"  step {state.step:5d}  loss {mean:.4f}  lr {lr:.2e}  {rate:.2f} s/step")
            window, started = [], time.perf_counter()
        if state.step % settings.checkpoint_every == 0 or state.step == last:
            state.save(checkpoint)
    return state


def export_pipeline(state: _DiffusionState, settings: DiffusionSettings, out: Path) -> None:
    """Write the EMA weights as an fp16 diffusers pipeline folder (model_index.json, …)."""
    from stepwatch.server.models.builtin.pipeline import ShapesPipeline

    unet, encoder = state.ema_modules()
    # .half(), not .to(dtype=...): diffusers' to() logs a spurious fp32-modules warning.
    pipeline = ShapesPipeline(
        unet=unet.half(),
        scheduler=make_default_sampler(settings.prediction_type),
        attribute_encoder=encoder.half(),
    )
    pipeline.save_pretrained(out, safe_serialization=True)


def export_checkpoint(settings: TrainSettings, out: Path, checkpoint: Path) -> int:
    """Write ``checkpoint``'s EMA weights as a pipeline folder in ``out`` without training.

    For looking at a run while it trains. Returns the checkpoint's step.
    """
    state = _new_state(settings.diffusion, settings.seed)
    state.load(checkpoint)
    export_pipeline(state, settings.diffusion, out)
    return state.step


def _save_classifier(model: nn.Module, out: Path) -> None:
    model.half()
    model.save_pretrained(out, safe_serialization=True)  # type: ignore[operator]
    model.float()


PARTS = ("adherence", "judge", "diffusion")


def train_all(
    settings: TrainSettings,
    out: Path,
    log: Log = print,
    parts: tuple[str, ...] = PARTS,
    stop_at: int | None = None,
) -> dict[str, object]:
    """Train the chosen components into ``out`` and return the run summary (also as JSON).

    Each part draws only from its own seeds, so training the parts in separate processes (one
    thread each, side by side) gives the same weights as training them in one.
    """
    torch.set_num_threads(settings.threads)
    torch.use_deterministic_algorithms(True)
    records = out / "training"
    records.mkdir(parents=True, exist_ok=True)
    summary: dict[str, object] = {"settings": asdict(settings)}
    jobs = (
        ("adherence", AttributeClassifier, settings.adherence, SPLIT_ADHERENCE, 0),
        ("judge", JudgeClassifier, settings.judge, SPLIT_JUDGE, 7919),
    )
    for name, factory, classifier_settings, split, offset in jobs:
        if name not in parts:
            continue
        started = time.perf_counter()
        log(f"{name} classifier")
        torch.manual_seed(settings.seed + offset)
        model = factory()
        curve, accuracy = train_classifier(
            model, classifier_settings, settings.seed + offset, split, log
        )
        _save_classifier(model, out / name)
        _write_json(records / f"{name}_loss.json", curve)
        summary[name] = {"seconds": time.perf_counter() - started, "validation": accuracy}
        _write_json(records / f"{name}_summary.json", summary[name])
        log(f"{name} validation accuracy {accuracy}")
    if "diffusion" not in parts:
        return summary
    started = time.perf_counter()
    checkpoint = records / "checkpoint.pt"
    state = train_diffusion(settings.diffusion, settings.seed, checkpoint, log, stop_at)
    if state.step < settings.diffusion.steps:
        log(f"stopped at step {state.step}; run again to resume from {checkpoint}")
        return summary
    export_pipeline(state, settings.diffusion, out)
    _write_json(records / "diffusion_loss.json", state.curve)
    summary["diffusion"] = {
        "seconds_this_session": time.perf_counter() - started,
        "final_loss": state.curve[-1]["loss"] if state.curve else None,
    }
    _write_json(records / "diffusion_summary.json", summary["diffusion"])
    _write_json(records / "settings.json", summary["settings"])
    return summary
