"""``stepwatch sample``: one monitored run in this process, no server.

Registered through the ``stepwatch.commands`` entry point group (see
:mod:`stepwatch.client.cli`). Importing this module stays cheap: torch, diffusers and the engine
load inside the handler.

In a terminal it prints a line per check (score, decision, CFG) and a progress line; with
``--json`` it prints one JSON object per event instead, exactly as ``stepwatch generate --json``
prints the same event of a served run (:func:`stepwatch.protocol.to_json`; the events are
stamped with a run id made here). It writes the final image as PNG. Ctrl-C finishes the run with
its clean tail; a second Ctrl-C aborts.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

# The client's words for a search on the command line and its table, so that ``sample`` and
# ``generate`` take the same options and print the same rows.
from stepwatch.client.commands import (
    input_arguments,
    save_candidates,
    search_arguments,
    search_settings,
)
from stepwatch.client.render import candidate_table, compute_line
from stepwatch.client.runs import Result
from stepwatch.protocol import (
    Adjusted,
    Applied,
    Check,
    Error,
    ErrorCode,
    Finished,
    Progress,
    ProtocolError,
    Started,
    StopMode,
    stamp,
    to_json,
)

if TYPE_CHECKING:
    from stepwatch.server.engine.events import EngineEvent
    from stepwatch.server.engine.inputs import InputImages

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
    parser.add_argument("--width", type=int, help="image width in pixels (model default)")
    parser.add_argument("--height", type=int, help="image height in pixels (model default)")
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
    parser.add_argument(
        "--checks",
        choices=["strict", "overlapped"],
        help="overlapped: checks run beside the sampler, each decision one step later",
    )
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
    input_arguments(parser)
    search_arguments(parser)
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


def _read_inputs(args: argparse.Namespace) -> tuple[InputImages | None, dict[str, str]]:
    """The input images the command line names, checked as an upload is (raises
    :class:`~stepwatch.protocol.ProtocolError` with the upload's code), and their ids."""
    from stepwatch.server.engine.inputs import InputImages
    from stepwatch.server.uploads import CONTENT_TYPES, check_upload, open_for_use

    images: dict[str, Any] = {}
    ids: dict[str, str] = {}
    for role in ("image", "mask", "control_image"):
        path: Path | None = getattr(args, role)
        if path is None:
            continue
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ProtocolError(ErrorCode.INVALID_UPLOAD, f"cannot read {path}: {exc}") from exc
        kind = {"jpg": "jpeg"}.get(path.suffix.lower()[1:], path.suffix.lower()[1:])
        checked = check_upload(data, f"image/{kind}" if f"image/{kind}" in CONTENT_TYPES else "")
        images[role], ids[role] = open_for_use(data, role), checked.id
    return (InputImages(**images) if images else None), ids


def _sample(args: argparse.Namespace) -> int:
    _quiet_libraries()
    from stepwatch.server.engine.control import RunControl
    from stepwatch.server.engine.errors import EngineError
    from stepwatch.server.engine.monitor import run_monitored
    from stepwatch.server.engine.params import RequestedParams
    from stepwatch.server.engine.verifiers import VerifierRegistry
    from stepwatch.server.models.loading import ModelSpec, load_model

    try:
        inputs, ids = _read_inputs(args)
        model = load_model(ModelSpec.parse(_model_spec_text(args.model)))
        registry = VerifierRegistry()
        registry.register_model_verifiers(model.verifiers)
        registry.load_entry_points()
        for spec in args.custom_verifier:
            registry.register_spec(spec)
        params = model.resolve(
            RequestedParams(
                prompt=args.prompt,
                seed=args.seed,
                steps=args.steps,
                cfg=args.cfg,
                width=args.width,
                height=args.height,
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
                preview_format=args.preview_format,
                candidates=args.candidates,
                search=search_settings(args),
                checks=args.checks,
                strength=args.strength,
                control_scale=args.control_scale,
                inputs=inputs,
                **ids,
            )
        )
    except (EngineError, ProtocolError) as exc:
        print(f"stepwatch sample: {exc}", file=sys.stderr)
        return 2
    out = args.out or Path(f"stepwatch-{params.parameters.seed}.png")
    printer: EventPrinter = JsonPrinter(sys.stdout) if args.json else LinePrinter(sys.stdout)
    control = RunControl()
    results: list[Finished] = []
    worker = threading.Thread(
        target=lambda: results.append(run_monitored(model, params, registry, control, printer)),
        name="stepwatch-sample",
    )
    worker.start()
    mode: StopMode = "finish"
    while worker.is_alive():
        try:
            worker.join(0.2)
        except KeyboardInterrupt:
            control.stop(mode)
            mode = "abort"
    [result] = results
    if result.image is not None:
        out.write_bytes(result.image.data)
        for path in save_candidates(Result.from_finished(result, params.parameters), out):
            print(f"candidate image saved to {path}", file=sys.stderr)
    if not args.json:
        printer.summary(result, out)
    return 1 if result.reason == "failed" else 0


class EventPrinter:
    """An event sink that writes what a person or a program reading stdout wants to see."""

    def __call__(self, event: EngineEvent) -> None:
        raise NotImplementedError

    def summary(self, result: Finished, out: Path) -> None:
        """Say how the run ended (terminal output only)."""


class LinePrinter(EventPrinter):
    """A line per check; on a terminal, also a progress line rewritten in place."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self.total = 0

    def __call__(self, event: EngineEvent) -> None:
        match event:
            case Started(parameters=p):
                self.total = p.steps
                self._line(
                    f"{p.model}: {p.prompt!r} seed {p.seed}, {p.steps} steps, "
                    f"{p.sampler}/{p.scheduler}, cfg {p.cfg:g}, "
                    f"verifier {p.verifier} (threshold {p.quality_threshold:g})"
                )
            case Progress(step=step, total=total, eta=eta):
                if step == 1:  # the planned steps (a finishing tail re-plans the rest)
                    self.total = total
                if self.live:
                    self.stream.write(f"\r  step {step}/{total}  eta {eta or 0:.1f}s ")
                    self.stream.flush()
            case Check() as q:
                parts = " ".join(f"{k} {v:.2f}" for k, v in q.components.items())
                later = "" if q.applied_step is None else f" (applied at step {q.applied_step})"
                self._line(
                    f"  step {q.step:>3}  score {q.score:.3f}  [{parts}]  cfg {q.cfg:g}  "
                    f"{q.decision}{later}: {q.reason}"
                )
                for line in candidate_table(q):
                    self._line(line)
            case Adjusted(setting=setting, old=old, new=new, step=step):
                self._line(f"  step {step:>3}  {setting} {old:g} -> {new:g}")
            case Applied(step=step, stop=stop) if stop is not None:
                self._line(f"  step {step:>3}  stopping ({stop})")
            case Error(message=message):
                self._line(f"  refused: {message}")
            case _:
                pass

    def _line(self, text: str) -> None:
        prefix = "\r\033[K" if self.live else ""
        self.stream.write(prefix + text + "\n")
        self.stream.flush()

    def summary(self, result: Finished, out: Path) -> None:
        if result.compute is not None:
            self._line(compute_line(result))
        score = f"{result.final_score:.3f}" if result.final_score is not None else "-"
        self._line(
            f"{result.reason}: {result.steps_run}/{self.total} steps in "
            f"{result.elapsed:.2f}s, final score {score}"
            + (f", image {out}" if result.image is not None else "")
            + (f" ({result.error.code}: {result.error.message})" if result.error else "")
        )


class JsonPrinter(EventPrinter):
    """One JSON object per line, each event as ``stepwatch generate --json`` prints a served
    run's: stamped with this run's id and its ``seq``, binary data as base64."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.run_id = secrets.token_hex(8)
        self.seq = 0

    def __call__(self, event: EngineEvent) -> None:
        if isinstance(event, Error):
            record = to_json(event)
        else:
            self.seq += 1
            record = to_json(stamp(event, self.run_id, self.seq))
        self.stream.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.stream.flush()
