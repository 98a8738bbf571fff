"""How the command line shows runs: a live rich progress display, or one JSON object per line.

Both views take the same calls (:class:`RunView`): :meth:`~RunView.accepted` once the server
took the run, :meth:`~RunView.show` for each run event, :meth:`~RunView.note` for the
command's own remarks ("stopping..."). The live view draws on standard error, so standard
output keeps only results (the run id, the summary line); the JSON view writes its objects to
standard output and its notes to standard error.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from types import TracebackType
from typing import IO, Protocol, Self, assert_never

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.table import Table

from stepwatch.protocol import (
    Adjusted,
    Applied,
    Check,
    Finished,
    RunEvent,
    Started,
    to_json,
)
from stepwatch.protocol import (
    Progress as StepProgress,
)

from .history import RunSummary
from .runs import RunHandle

__all__ = ["JsonView", "LiveView", "RunView", "candidate_table", "runs_table"]


class RunView(Protocol):
    """What a command shows while it follows a run."""

    def accepted(self, run: RunHandle, queue_position: int | None) -> None:
        """The run exists (generate) or is watched (watch)."""
        ...

    def show(self, event: RunEvent) -> None:
        """One event of the run."""
        ...

    def note(self, text: str) -> None:
        """A remark of the command itself."""
        ...


class JsonView:
    """One JSON object per line on ``out``: the ``accepted`` run, then each event as is."""

    def __init__(self, out: IO[str], notes: Console) -> None:
        self._out = out
        self._notes = notes

    def _write(self, data: object) -> None:
        self._out.write(json.dumps(data, separators=(",", ":")) + "\n")
        self._out.flush()

    def accepted(self, run: RunHandle, queue_position: int | None) -> None:
        # The control token stays out: JSON lines end up in logs.
        self._write({"type": "accepted", "run_id": run.run_id, "queue_position": queue_position})

    def show(self, event: RunEvent) -> None:
        self._write(to_json(event))

    def note(self, text: str) -> None:
        self._notes.print(text, highlight=False)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-:--"
    minutes, seconds = divmod(int(round(value)), 60)
    return f"{minutes}:{seconds:02d}"


class LiveView:
    """A live progress bar (step, ETA, latest score against the threshold, CFG, decision) with
    a log line above it for each check, adjustment and acknowledgement.

    Use it as a context manager: the display runs from ``__enter__`` to ``__exit__``.
    """

    def __init__(self, console: Console) -> None:
        self._console = console
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=24),
            TextColumn("{task.fields[steps]}"),
            TextColumn("ETA {task.fields[eta]}"),
            TextColumn("{task.fields[score]}"),
            TextColumn("cfg {task.fields[cfg]}"),
            TextColumn("{task.fields[decision]}"),
            console=console,
        )
        self._task: TaskID = self._progress.add_task(
            "queued",
            total=None,
            steps="step -",
            eta=_seconds(None),
            score="score -",
            cfg="-",
            decision="",
        )

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def _log(self, text: str) -> None:
        self._progress.console.print(text, highlight=False)

    def accepted(self, run: RunHandle, queue_position: int | None) -> None:
        where = "" if not queue_position else f" (queue position {queue_position})"
        self._log(f"run [bold]{escape(run.run_id)}[/]{where}")

    def note(self, text: str) -> None:
        self._log(f"[yellow]{escape(text)}[/]")

    def show(self, event: RunEvent) -> None:
        update = self._progress.update
        match event:
            case Started(parameters=p):
                prompt = p.prompt if len(p.prompt) <= 24 else p.prompt[:23] + "…"
                update(
                    self._task,
                    description=escape(prompt),
                    total=p.steps,
                    steps=f"step 0/{p.steps}",
                    cfg=f"{p.cfg:.2f}",
                )
            case StepProgress(step=step, total=total, eta=eta):
                update(
                    self._task,
                    completed=step,
                    total=total,
                    steps=f"step {step}/{total}",
                    eta=_seconds(eta),
                )
            case Check():
                self._check(event)
            case Adjusted(step=step, setting=setting, old=old, new=new):
                # The check just before says why; the line shows what changed.
                if setting == "cfg":
                    update(self._task, cfg=f"{new:.2f}")
                self._log(f"step {step:>4}  {setting} {old:.4g} → {new:.4g}")
            case Applied(step=step, changes=changes, stop=stop):
                what = (
                    f"stop ({stop})"
                    if stop is not None
                    else ", ".join(
                        f"{change.setting} {change.old:.4g} → {change.new:.4g}"
                        for change in changes
                    )
                )
                self._log(f"step {step:>4}  applied: {what}")
            case Finished():
                self._finished(event)
            case _:
                assert_never(event)

    def _check(self, check: Check) -> None:
        holds = check.score >= check.threshold
        colour = "green" if holds else "yellow"
        against = "≥" if holds else "<"
        score = f"score [{colour}]{check.score:.3f}[/] {against} {check.threshold:.2f}"
        self._progress.update(
            self._task, score=score, cfg=f"{check.cfg:.2f}", decision=check.decision
        )
        self._log(f"step {check.step:>4}  {score}  cfg {check.cfg:.2f}  {check.decision}")
        for line in candidate_table(check):
            self._log(escape(line))

    def _finished(self, finished: Finished) -> None:
        if finished.compute is not None:
            self._log(escape(compute_line(finished)))
        steps = finished.steps_run
        self._progress.update(
            self._task, completed=steps, total=steps, steps=f"step {steps}/{steps}", eta="0:00"
        )
        score = "-" if finished.final_score is None else f"{finished.final_score:.3f}"
        colour = "red" if finished.reason in ("failed", "abandoned", "shutdown") else "green"
        self._log(
            f"[{colour}]{finished.reason}[/] after {finished.steps_run} steps, "
            f"{finished.elapsed:.1f} s, final score {score}"
        )


def candidate_table(check: Check) -> list[str]:
    """A search's candidates at ``check`` as a compact text table (none for a single run):
    one row per candidate, best first, with its score and fate."""
    if not check.candidates:
        return []
    rows = ["      cand  score  fate"]
    for c in sorted(check.candidates, key=lambda c: (-c.score, c.candidate)):
        fate = c.fate if c.parent is None else f"{c.fate} from {c.parent}"
        rows.append(f"      {c.candidate:>4}  {c.score:.3f}  {fate}")
    return rows


def compute_line(finished: Finished) -> str:
    """What a search spent, against one run alone, as one line."""
    compute = finished.compute
    if compute is None:
        return ""
    ratio = compute.denoiser_evaluations / max(compute.single_run_evaluations, 1)
    chosen = next((c.candidate for c in finished.candidates if c.fate == "chosen"), None)
    return (
        f"search: candidate {chosen} chosen; {compute.denoiser_evaluations} denoiser "
        f"evaluations ({ratio:.2f}x one run), {compute.verifier_calls} verifier calls, "
        f"{compute.preview_decodes} preview decodes"
    )


def runs_table(summaries: Sequence[RunSummary]) -> Table:
    """The run history as a table: id, when, prompt, reason (or state), steps, final score."""
    table = Table(show_edge=False, pad_edge=False)
    widest_id = max((len(summary.run_id) for summary in summaries), default=2)
    table.add_column("id", no_wrap=True, min_width=widest_id)
    table.add_column("created", no_wrap=True)
    table.add_column("prompt", overflow="ellipsis", no_wrap=True, max_width=40)
    table.add_column("reason", no_wrap=True)
    table.add_column("steps", justify="right")
    table.add_column("score", justify="right")
    for summary in summaries:
        created = (
            ""
            if summary.created_at is None
            else datetime.fromtimestamp(summary.created_at).strftime("%Y-%m-%d %H:%M")
        )
        table.add_row(
            summary.run_id,
            created,
            escape(summary.prompt),
            summary.reason or summary.state,
            "" if summary.steps_run is None else str(summary.steps_run),
            "" if summary.final_score is None else f"{summary.final_score:.3f}",
        )
    return table
