"""The ``stepwatch train-builtin`` command: retrain the built-in model's weights from a seed.

Registered through the ``stepwatch.commands`` entry point group. torch is imported only when the
command runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path


def train_builtin(parser: argparse.ArgumentParser) -> None:
    """Train the built-in shapes model, its classifiers and its cleanliness regressor from a seed
    (CPU, about an hour and a half)."""
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("builtin-model"),
        help="folder to write the pipeline, classifiers and loss curves into "
        "(server/models/builtin/weights reproduces the shipped files)",
    )
    parser.add_argument("--seed", type=int, default=0, help="the one seed every draw derives from")
    parser.add_argument(
        "--steps", type=int, default=None, help="diffusion optimisation steps (default: shipped)"
    )
    parser.add_argument(
        "--classifier-steps", type=int, default=None, help="steps for each classifier"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (part of what fixes the bits)"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=("adherence", "judge", "diffusion", "cleanliness"),
        help="train only this part (repeatable); parts are independent, so two processes can "
        "train them side by side, except cleanliness, which samples with the pipeline in --out "
        "(the shipped one when --out holds none) and so runs after diffusion",
    )
    parser.set_defaults(handler=_train_builtin)


def _train_builtin(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from stepwatch.server.models.builtin.train import PARTS, TrainSettings, train_all

    settings = TrainSettings(seed=args.seed, threads=args.threads)
    if args.steps is not None:
        settings = replace(settings, diffusion=replace(settings.diffusion, steps=args.steps))
    if args.classifier_steps is not None:
        settings = replace(
            settings,
            adherence=replace(settings.adherence, steps=args.classifier_steps),
            judge=replace(settings.judge, steps=args.classifier_steps),
        )
    parts = tuple(args.only) if args.only else (*PARTS, "cleanliness")
    trained = [p for p in parts if p in PARTS]
    if trained:
        train_all(settings, args.out, log=_log, parts=tuple(trained))
    if "cleanliness" in parts:
        _train_cleanliness(args.out, args.seed, args.threads, _log)
    print(f"weights written to {args.out}")
    return 0


def _log(line: str) -> None:
    print(line, flush=True)


def _train_cleanliness(out: Path, seed: int, threads: int, log: Callable[[str], None]) -> None:
    import torch

    from stepwatch.server.models.builtin.train_cleanliness import (
        CleanlinessSettings,
        train_cleanliness,
    )

    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    pipeline = out if (out / "model_index.json").exists() else None
    train_cleanliness(CleanlinessSettings(), seed, out, pipeline, log)
