"""The client's sub-commands of the ``stepwatch`` command line: ``generate``, ``watch``, ``runs``.

Registered through the ``stepwatch.commands`` entry point group like every other command (see
:mod:`stepwatch.client.cli`). Each handler runs one event loop and turns every failure a user
can cause (an unreachable server, a refused token, an unknown model, a bad value) into one line
on standard error and exit status 1, never a traceback. Ctrl-C exits with status 130, except
during ``generate``'s run: there the first Ctrl-C stops the run and keeps its image.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final, cast, get_args

from rich.console import Console

from stepwatch.protocol import (
    ErrorCode,
    SearchSettings,
    SearchStrategy,
    SelectRule,
    Welcome,
    to_json,
)

from .errors import Refused, RunFailed, StepwatchError
from .history import MAX_PAGE, list_runs
from .render import JsonView, LiveView, RunView, runs_table
from .runs import Result, Run, RunHandle, RunOptions
from .session import Session, connect
from .transport import DEFAULT_URL

__all__ = [
    "CommandError",
    "Interrupted",
    "explain",
    "generate",
    "option_name",
    "run_options",
    "runs",
    "watch",
]

#: Environment variables that hold the defaults of ``--server`` and ``--token``.
SERVER_VARIABLE: Final = "STEPWATCH_SERVER"
TOKEN_VARIABLE: Final = "STEPWATCH_TOKEN"
#: The exit status after Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED: Final = 130
#: Reasons a run ends well: the command exits 0 for these.
GOOD_ENDINGS: Final = frozenset({"completed", "early_stop", "stopped"})

#: ``generate`` options whose names differ from the ``start`` fields they set.
OPTION_FOR_FIELD: Final = {"quality_threshold": "--threshold"}


class CommandError(Exception):
    """A failure the command reports as one line (the exception's text), exit status 1."""


class Interrupted(Exception):
    """The user pressed Ctrl-C where it ends the command (exit status 130)."""


# Shared options and plumbing.


def _connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        default=os.environ.get(SERVER_VARIABLE, DEFAULT_URL),
        metavar="URL",
        help=f"the server's WebSocket URL (default: ${SERVER_VARIABLE} or {DEFAULT_URL})",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get(TOKEN_VARIABLE),
        help=f"the server's API token, if it requires one (default: ${TOKEN_VARIABLE})",
    )


def _handler(
    name: str, body: Callable[[argparse.Namespace], Coroutine[None, None, int]]
) -> Callable[[argparse.Namespace], int]:
    def handle(args: argparse.Namespace) -> int:
        try:
            return asyncio.run(body(args))
        except (CommandError, StepwatchError) as exc:
            print(f"stepwatch {name}: {explain(exc, args)}", file=sys.stderr)
            return 1
        except (Interrupted, KeyboardInterrupt):
            print(f"stepwatch {name}: interrupted", file=sys.stderr)
            return INTERRUPTED

    return handle


def option_name(field: str) -> str:
    """The command-line option that sets the ``start`` field ``field``."""
    return OPTION_FOR_FIELD.get(field, "--" + field.replace("_", "-"))


def explain(exc: BaseException, args: argparse.Namespace) -> str:
    """One line that tells a person what went wrong and, where it helps, what to do."""
    if isinstance(exc, Refused):
        if exc.code is ErrorCode.UNAUTHORIZED:
            if getattr(args, "token", None) is None:
                return f"the server requires an API token (--token or ${TOKEN_VARIABLE})"
            return "the server refused the API token"
        if exc.field == "prompt" or exc.code is ErrorCode.INVALID_PROMPT:
            return f"invalid prompt: {exc.message}"
        if exc.field is not None and exc.code in _VALUE_CODES:
            return f"invalid {option_name(exc.field)}: {exc.message}"
        return f"refused ({exc.code.value}): {exc.message}"
    return str(exc)


_VALUE_CODES: Final = frozenset(
    {ErrorCode.INVALID_VALUE, ErrorCode.MISSING_FIELD, ErrorCode.UNKNOWN_FIELD}
)


def _unknown_name(exc: Refused, welcome: Welcome, model_id: str | None) -> str | None:
    """The line for a name the server does not know, listing the ones it does."""
    model = next((m for m in welcome.models if m.id == model_id), None)
    if model is None and welcome.models:
        model = welcome.models[0]
    choices: dict[ErrorCode, tuple[str, tuple[str, ...]]] = {
        ErrorCode.UNKNOWN_MODEL: ("model", tuple(m.id for m in welcome.models)),
        ErrorCode.UNKNOWN_VERIFIER: ("verifier", tuple(v.id for v in welcome.verifiers)),
        ErrorCode.UNKNOWN_SAMPLER: ("sampler", model.samplers if model else ()),
        ErrorCode.UNKNOWN_SCHEDULER: ("scheduler", model.schedulers if model else ()),
    }
    if exc.code not in choices:
        return None
    what, names = choices[exc.code]
    valid = ", ".join(names) if names else "none"
    return f"unknown {what}: {exc.message} (this server has: {valid})"


def _console() -> Console:
    return Console(stderr=True, highlight=False)


def save_candidates(result: Result, out: Path) -> list[Path]:
    """Write every finished candidate's image but the chosen one's (that is ``out``) next to
    ``out``, as ``OUT-candidate-N.png``; the paths written, in candidate order."""
    chosen = next((c.candidate for c in result.candidates if c.fate == "chosen"), None)
    written = []
    for number, png in result.candidate_pngs().items():
        if number != chosen:
            path = out.with_name(f"{out.stem}-candidate-{number}{out.suffix}")
            path.write_bytes(png)
            written.append(path)
    return written


def _finish(result: Result, out: Path | None, args: argparse.Namespace) -> int:
    """Save the image, print the summary line on standard output, return the exit status."""
    saved = out is not None and result.save(out)
    if saved and out is not None:
        for path in save_candidates(result, out):
            print(f"candidate image saved to {path}", file=sys.stderr)
    score = "-" if result.final_score is None else f"{result.final_score:.3f}"
    where = f", image {out}" if saved else ", no image"
    if not args.json:
        print(f"{result.run_id} {result.reason} steps={result.steps_run} score={score}{where}")
    elif saved:
        print(f"image saved to {out}", file=sys.stderr)
    if result.reason not in GOOD_ENDINGS:
        raise CommandError(f"run {result.run_id} ended: {result.reason}")
    return 0


async def _follow(handle: RunHandle, view: RunView) -> None:
    async for event in handle:
        view.show(event)


# stepwatch generate


def generate(parser: argparse.ArgumentParser) -> None:
    """Generate an image, watching and steering it live; Ctrl-C stops it and keeps the image."""
    parser.add_argument("prompt", help="what to draw")
    _connection_options(parser)
    group = parser.add_argument_group("run parameters (the server's defaults when left out)")
    group.add_argument("--model", help="a model id the server lists")
    group.add_argument("--negative-prompt", default=None, help="what to steer away from")
    group.add_argument("--steps", type=int, help="denoising steps")
    group.add_argument("--cfg", type=float, help="classifier-free guidance at the start")
    group.add_argument("--seed", type=int, help="random seed")
    group.add_argument("--sampler", help="one of the model's samplers")
    group.add_argument("--scheduler", help="one of the model's schedulers")
    group.add_argument("--width", type=int, help="image width in pixels")
    group.add_argument("--height", type=int, help="image height in pixels")
    group.add_argument("--verifier", help="a verifier id the server lists")
    group.add_argument("--preview-decoder", help="one of the model's preview decoders")
    group.add_argument("--check-interval", type=int, help="score the estimate every N steps")
    group.add_argument(
        "--checks",
        choices=["strict", "overlapped"],
        help="overlapped: checks run beside the sampler, each decision one step later",
    )
    group.add_argument(
        "--threshold",
        dest="quality_threshold",
        type=float,
        metavar="SCORE",
        help="the score to reach, 0-1",
    )
    group.add_argument("--scale-factor", type=float, help="multiply CFG by this when low")
    group.add_argument("--patience", type=int, help="checks above the threshold before a stop")
    group.add_argument("--cfg-max", type=float, help="the cap on CFG raises")
    group.add_argument("--min-steps", type=int, help="no early stop before this step")
    group.add_argument(
        "--no-early-stop",
        dest="early_stop",
        action="store_const",
        const=False,
        help="run every step, however good the image is early",
    )
    input_arguments(parser)
    search_arguments(parser)
    parser.add_argument("--out", type=Path, help="where to write the PNG (default: RUN_ID.png)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per event")
    parser.set_defaults(handler=_handler("generate", _generate))


def search_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a search run (``stepwatch generate`` and ``stepwatch sample``)."""
    group = parser.add_argument_group("search (several candidates, one batch)")
    group.add_argument("--candidates", type=int, help="candidates to denoise together")
    group.add_argument(
        "--search", choices=get_args(SearchStrategy), help="best_of_n (default), prune or fk"
    )
    group.add_argument("--keep-fraction", type=float, help="prune: share kept at each check")
    group.add_argument("--keep-top", type=int, help="prune: keep the best this many instead")
    group.add_argument(
        "--prune-steps",
        type=_steps,
        metavar="S,S,...",
        help="prune: prune at these steps only (a schedule; the search checks there)",
    )
    group.add_argument("--fk-lambda", type=float, help="fk: sharpness of the potential")
    group.add_argument("--select", choices=get_args(SelectRule), help="best (default) or first")
    group.add_argument(
        "--all-images",
        action="store_const",
        const="all",
        dest="images",
        help="also write every other finished candidate's image, as OUT-candidate-N.png",
    )


def _steps(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of steps: {text!r}") from None


#: The input-image options, by the ``start`` field each sets.
INPUT_OPTIONS: Final = {"image": "image", "mask": "mask", "control_image": "control_image"}


def input_arguments(parser: argparse.ArgumentParser) -> None:
    """The input images of img2img, inpainting and ControlNet models (``stepwatch generate``
    uploads them first; ``stepwatch sample`` reads them in process)."""
    group = parser.add_argument_group("input images (PNG, JPEG or WebP files)")
    group.add_argument("--image", type=Path, metavar="PATH", help="the init image")
    group.add_argument("--mask", type=Path, metavar="PATH", help="inpainting: white is repainted")
    group.add_argument("--control-image", type=Path, metavar="PATH", help="ControlNet's input")
    group.add_argument("--strength", type=float, help="share of the init image re-noised, 0..1")
    group.add_argument("--control-scale", type=float, help="ControlNet conditioning scale")


def search_settings(args: argparse.Namespace) -> SearchSettings | None:
    """The search settings the command line asks for; ``None`` when it names none."""
    given = {
        name: getattr(args, attribute)
        for name, attribute in (
            ("strategy", "search"),
            ("keep_fraction", "keep_fraction"),
            ("keep_top", "keep_top"),
            ("prune_steps", "prune_steps"),
            ("fk_lambda", "fk_lambda"),
            ("select", "select"),
            ("images", "images"),
        )
        if getattr(args, attribute, None) is not None
    }
    return SearchSettings(**given) if given else None


#: The ``generate`` arguments that become ``start`` fields when given.
_RUN_OPTIONS: Final = (
    "model",
    "negative_prompt",
    "steps",
    "cfg",
    "seed",
    "sampler",
    "scheduler",
    "width",
    "height",
    "verifier",
    "preview_decoder",
    "check_interval",
    "quality_threshold",
    "scale_factor",
    "patience",
    "cfg_max",
    "min_steps",
    "early_stop",
)


def run_options(args: argparse.Namespace) -> RunOptions:
    """The ``start`` fields the user gave on the command line."""
    given = {name: getattr(args, name) for name in _RUN_OPTIONS}
    given["candidates"] = getattr(args, "candidates", None)
    for name in ("strength", "control_scale"):  # the input-image options, where a command has them
        given[name] = getattr(args, name, None)
    given["checks"] = getattr(args, "checks", None)
    given["search"] = search_settings(args) if hasattr(args, "search") else None
    return cast(RunOptions, {name: value for name, value in given.items() if value is not None})


async def _start(session: Session, args: argparse.Namespace) -> Run:
    options = run_options(args)
    for field in INPUT_OPTIONS:
        path = getattr(args, field, None)
        if path is not None:
            options[field] = (await session.upload(path)).id  # type: ignore[literal-required]
    try:
        return await session.generate(args.prompt, **options)
    except Refused as exc:
        line = _unknown_name(exc, session.welcome, args.model)
        if line is not None:
            raise CommandError(line) from exc
        raise


async def _generate(args: argparse.Namespace) -> int:
    console = _console()
    async with connect(args.server, token=args.token) as session:
        run = await _start(session, args)
        out: Path = args.out or Path(f"{run.run_id}.png")
        if args.json:
            view: RunView = JsonView(sys.stdout, console)
            view.accepted(run, run.queue_position)
            with _stop_on_interrupt(run, view):
                await _follow(run, view)
        else:
            with LiveView(console) as live, _stop_on_interrupt(run, live):
                live.accepted(run, run.queue_position)
                await _follow(run, live)
        try:
            result = await run.result()
        except RunFailed as exc:
            exc.result.save(out)
            raise
    return _finish(result, out, args)


@contextmanager
def _stop_on_interrupt(run: Run, view: RunView) -> Iterator[None]:
    """While the block runs, the first Ctrl-C stops ``run`` (mode ``finish``, so the image of
    that step is kept) and the second ends the command (the run goes on without a watcher)."""
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    stopping: list[asyncio.Task[object]] = []

    def settle(task: asyncio.Task[object]) -> None:
        error = None if task.cancelled() else task.exception()
        # A run that ended before the stop reached it answers run_finished: nothing to say.
        if isinstance(error, Refused) and error.code is ErrorCode.RUN_FINISHED:
            return
        if error is not None:
            view.note(f"the stop failed: {error}")

    def interrupted() -> None:
        if stopping:
            assert main is not None
            main.cancel()
            return
        view.note("stopping the run; it keeps the image of this step (Ctrl-C again to quit)")
        task: asyncio.Task[object] = loop.create_task(run.stop("finish"))
        task.add_done_callback(settle)
        stopping.append(task)

    loop.add_signal_handler(signal.SIGINT, interrupted)
    try:
        yield
    except asyncio.CancelledError:
        if main is None or main.uncancel() > 0:
            raise  # cancelled by someone else too
        raise Interrupted from None
    finally:
        loop.remove_signal_handler(signal.SIGINT)


# stepwatch watch


def watch(parser: argparse.ArgumentParser) -> None:
    """Follow any run live, from its start or from an event number."""
    parser.add_argument("run_id", metavar="RUN_ID", help="the run to follow")
    _connection_options(parser)
    parser.add_argument(
        "--from",
        dest="after_seq",
        type=int,
        default=0,
        metavar="SEQ",
        help="show only events after this seq (default: 0, the whole run)",
    )
    parser.add_argument("--out", type=Path, help="also write the final PNG here")
    parser.add_argument("--json", action="store_true", help="print one JSON object per event")
    parser.set_defaults(handler=_handler("watch", _watch))


async def _watch(args: argparse.Namespace) -> int:
    console = _console()
    async with connect(args.server, token=args.token) as session:
        handle = await session.watch(args.run_id, args.after_seq)
        if args.json:
            view: RunView = JsonView(sys.stdout, console)
            await _follow(handle, view)
        else:
            with LiveView(console) as live:
                live.accepted(handle, None)
                await _follow(handle, live)
        result = await handle.result()
    return _finish(result, args.out, args)


# stepwatch runs


def runs(parser: argparse.ArgumentParser) -> None:
    """List the server's runs, newest first: id, prompt, reason, steps, final score."""
    _connection_options(parser)
    parser.add_argument(
        "--limit", type=int, default=50, help=f"how many runs to list, 1-{MAX_PAGE} (default 50)"
    )
    parser.add_argument("--json", action="store_true", help="print the runs as a JSON array")
    parser.set_defaults(handler=_handler("runs", _runs))


async def _runs(args: argparse.Namespace) -> int:
    summaries = await list_runs(args.server, token=args.token, limit=args.limit)
    if args.json:
        print(json.dumps(to_json(summaries), separators=(",", ":")))
        return 0
    if not summaries:
        print("no runs yet")
        return 0
    Console(highlight=False).print(runs_table(summaries))
    return 0
