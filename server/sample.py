"""``stepwatch sample``: one monitored run in this process, no server.

Registered through the ``stepwatch.commands`` entry point group (see
:mod:`stepwatch.client.cli`). Importing this module stays cheap: torch, diffusers and the engine
load inside the handler.

In a terminal it prints a line per check (score, decision, CFG) and a progress line; with
``--json`` it prints one JSON object per engine event instead (previews as base64). It writes the
final image as PNG. Ctrl-C stops the run and keeps the current x0 estimate as the image; a second
Ctrl-C aborts.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import enum
import json
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from stepwatch.server.engine.events import EngineEvent, RunResult

DEFAULT_MODEL = "builtin:shapes"


def sample(parser: argparse.ArgumentParser) -> None:
    """Generate one image with the monitored engine, in this process."""
    parser.add_argument("prompt", help="what to draw, e.g. 'small red circle on a dark background'")
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="SOURCE[,option=value...]: builtin:shapes (default), a diffusers folder or hub id; "
        "options device=, dtype=, tiny_vae= (see stepwatch.server.models.loading)",
    )
    parser.add_argument("--steps", type=int, help="denoising steps (model default)")
    parser.add_argument("--cfg", type=float, help="classifier-free guidance scale")
    parser.add_argument("--seed", type=int, help="random seed (random by default)")
    parser.add_argument("--sampler", help="e.g. euler, euler_a, dpmpp_2m, ddim, unipc")
    parser.add_argument("--scheduler", help="noise schedule: normal, karras, exponential, ...")
    parser.add_argument("--verifier", help="verifier id (model default: adherence or structure)")
    parser.add_argument(
        "--custom-verifier",
        action="append",
        default=[],
        metavar="[ID=]MODULE:CALLABLE",
        help="register a custom verifier for this run (repeatable)",
    )
    parser.add_argument("--check-interval", type=int, default=5, help="steps between checks")
    parser.add_argument("--threshold", type=float, default=0.7, help="quality threshold in [0, 1]")
    parser.add_argument("--scale-factor", type=float, default=1.25, help="CFG raise factor")
    parser.add_argument("--cfg-max", type=float, help="cap on CFG raises (2 x cfg)")
    parser.add_argument("--patience", type=int, default=1, help="checks above threshold to stop")
    parser.add_argument("--min-steps", type=int, help="earliest early stop (half the steps)")
    parser.add_argument("--no-early-stop", action="store_true", help="never stop early")
    parser.add_argument("--preview-decoder", help="identity, linear, tiny or vae")
    parser.add_argument(
        "--preview-format", default="jpeg", choices=["jpeg", "webp", "png"], help="thumbnails"
    )
    parser.add_argument("--out", type=Path, help="image file (default stepwatch-<seed>.png)")
    parser.add_argument("--json", action="store_true", help="one JSON object per event")
    parser.set_defaults(handler=_sample)


def _model_spec_text(model: str) -> str:
    first = model.split(",", 1)[0]
    return model if "=" in first else f"cli={model}"


def _quiet_libraries() -> None:
    """Keep loading chatter (progress bars, advice to install extras) off the terminal."""
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:  # only pipelines with text encoders need transformers
        return
    transformers_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def _sample(args: argparse.Namespace) -> int:
    _quiet_libraries()
    from stepwatch.server.engine.control import RunControl
    from stepwatch.server.engine.errors import EngineError
    from stepwatch.server.engine.events import FinishReason, StopMode
    from stepwatch.server.engine.monitor import run_monitored
    from stepwatch.server.engine.params import PreviewFormat, RunParams
    from stepwatch.server.engine.verifiers import VerifierRegistry
    from stepwatch.server.models.loading import ModelSpec, load_model

    try:
        model = load_model(ModelSpec.parse(_model_spec_text(args.model)))
        registry = VerifierRegistry()
        registry.register_model_verifiers(model.verifiers)
        registry.load_entry_points()
        for spec in args.custom_verifier:
            registry.register_spec(spec)
        params = model.resolve(
            RunParams(
                prompt=args.prompt,
                seed=args.seed,
                steps=args.steps,
                cfg=args.cfg,
                sampler=args.sampler,
                scheduler=args.scheduler,
                verifier=args.verifier,
                check_interval=args.check_interval,
                quality_threshold=args.threshold,
                scale_factor=args.scale_factor,
                cfg_max=args.cfg_max,
                patience=args.patience,
                min_steps=args.min_steps,
                early_stop=not args.no_early_stop,
                preview_decoder=args.preview_decoder,
                preview_format=PreviewFormat(args.preview_format),
            )
        )
    except EngineError as exc:
        print(f"stepwatch sample: {exc}", file=sys.stderr)
        return 2
    out = args.out or Path(f"stepwatch-{params.seed}.png")
    printer: EventPrinter = JsonPrinter(sys.stdout, out) if args.json else LinePrinter(sys.stdout)
    control = RunControl()
    results: list[RunResult] = []
    worker = threading.Thread(
        target=lambda: results.append(run_monitored(model, params, registry, control, printer)),
        name="stepwatch-sample",
    )
    worker.start()
    mode = StopMode.FINISH
    while worker.is_alive():
        try:
            worker.join(0.2)
        except KeyboardInterrupt:
            control.stop(mode)
            mode = StopMode.ABORT
    [result] = results
    if result.image is not None:
        out.write_bytes(result.image.png)
    if not args.json:
        printer.summary(result, out)
    return 1 if result.reason is FinishReason.FAILED else 0


class EventPrinter:
    """An event sink that writes what a person or a program reading stdout wants to see."""

    def __call__(self, event: EngineEvent) -> None:
        raise NotImplementedError

    def summary(self, result: RunResult, out: Path) -> None:
        """Say how the run ended (terminal output only)."""


class LinePrinter(EventPrinter):
    """A line per check; on a terminal, also a progress line rewritten in place."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = stream.isatty()

    def __call__(self, event: EngineEvent) -> None:
        from stepwatch.server.engine import events

        match event:
            case events.Started(params=params, total_steps=total):
                self._line(
                    f"{params.model}: {params.prompt!r} seed {params.seed}, {total} steps, "
                    f"{params.sampler}/{params.scheduler}, cfg {params.cfg:g}, "
                    f"verifier {params.verifier} (threshold {params.quality_threshold:g})"
                )
            case events.Progress(step=step, total=total, eta=eta) if self.live:
                self.stream.write(f"\r  step {step}/{total}  eta {eta:.1f}s ")
                self.stream.flush()
            case events.Check(quality=q):
                parts = " ".join(f"{k} {v:.2f}" for k, v in q.components.items())
                self._line(
                    f"  step {q.step:>3}  score {q.score:.3f}  [{parts}]  cfg {q.cfg:g}  "
                    f"{q.decision}: {q.reason}"
                )
            case events.Adjusted(what=what, old=old, new=new, step=step):
                self._line(f"  step {step:>3}  {what} {old:g} -> {new:g}")
            case events.Applied(step=step, stop=stop) if stop is not None:
                self._line(f"  step {step:>3}  stopping ({stop})")
            case _:
                pass

    def _line(self, text: str) -> None:
        prefix = "\r\033[K" if self.live else ""
        self.stream.write(prefix + text + "\n")
        self.stream.flush()

    def summary(self, result: RunResult, out: Path) -> None:
        score = f"{result.final_score:.3f}" if result.final_score is not None else "-"
        self._line(
            f"{result.reason}: {result.steps_run}/{result.total_steps} steps in "
            f"{result.elapsed:.2f}s, final score {score}"
            + (f", image {out}" if result.image is not None else "")
            + (f" ({result.error.code}: {result.error.message})" if result.error else "")
        )


class JsonPrinter(EventPrinter):
    """One JSON object per event, ``{"event": <kind>, ...fields}``; bytes as base64. The result
    image is written to ``out`` and named there instead of inlined."""

    def __init__(self, stream: TextIO, out: Path) -> None:
        self.stream = stream
        self.out = out

    def __call__(self, event: EngineEvent) -> None:
        record = {"event": type(event).__name__.lower(), **_jsonable_fields(event)}
        if type(event).__name__ == "Finished":
            image = record["result"]["image"]
            if image is not None:
                image.pop("png")
                image["path"] = str(self.out)
        self.stream.write(json.dumps(record) + "\n")
        self.stream.flush()


def _jsonable_fields(value: Any) -> dict[str, Any]:
    return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable_fields(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)  # an initial latent array: named, not dumped
