"""The ``stepwatch train-builtin`` command: retrain the built-in model's weights from a seed.

Registered through the ``stepwatch.commands`` entry point group. torch is imported only when the
command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def train_builtin(parser: argparse.ArgumentParser) -> None:
    """Train the built-in shapes model and its classifiers from a seed (CPU, about an hour)."""
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
        choices=("adherence", "judge", "diffusion"),
        help="train only this part (repeatable); parts are independent, so two processes can "
        "train them side by side",
    )
    parser.set_defaults(handler=_train_builtin)


def _train_builtin(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from stepwatch.server.models.builtin.train import TrainSettings, train_all

    settings = TrainSettings(seed=args.seed, threads=args.threads)
    if args.steps is not None:
        settings = replace(settings, diffusion=replace(settings.diffusion, steps=args.steps))
    if args.classifier_steps is not None:
        settings = replace(
            settings,
            adherence=replace(settings.adherence, steps=args.classifier_steps),
            judge=replace(settings.judge, steps=args.classifier_steps),
        )
    parts = tuple(args.only) if args.only else ("adherence", "judge", "diffusion")
    train_all(settings, args.out, log=lambda line: print(line, flush=True), parts=parts)
    print(f"weights written to {args.out}")
    return 0
