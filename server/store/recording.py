"""Writing a run into the store as it goes (:class:`RunRecorder`): accepted, running, each event
kept before it is sent, the result; and, on opening, the runs a killed process left unfinished.

A running run's row says ``running`` and each of its events but progress is stored (a check with
its history entry and thumbnail) before it is sent, so a crash loses at most what came after the
last of them. The final image is written atomically (a temporary file, then a rename) before its
run's row says it exists, and both happen before the run's ``finished`` is sent. A run left
unfinished is marked failed when the store is next opened; what was kept of it stays, followed
by a ``finished`` that carries its history.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence

from stepwatch.protocol import (
    Check,
    ErrorCode,
    Finished,
    HistoryEntry,
    RunError,
    RunParameters,
    encode,
    stamp,
)
from stepwatch.server.eventlog import LoggedEvent
from stepwatch.server.store.database import Database, StoreError
from stepwatch.server.store.history import check_row, run_history
from stepwatch.server.store.previews import insert_preview

__all__ = ["INTERRUPTED", "RunRecorder", "parameters_json"]

#: The error of a run the process left unfinished (it was killed).
INTERRUPTED = "the server stopped before the run finished"


def parameters_json(parameters: RunParameters) -> str:
    """How the ``runs`` table keeps a run's parameters."""
    return json.dumps(dataclasses.asdict(parameters))


class RunRecorder(Database):
    """Writes runs into the store, from their acceptance to their result."""

    async def add_run(self, run_id: str, parameters: RunParameters) -> None:
        """Record an accepted run and its parameters."""
        await self._call(self._add_run, run_id, parameters, time.time())

    def _add_run(self, run_id: str, parameters: RunParameters, now: float) -> None:
        self._db.execute(
            "INSERT INTO runs (run_id, created_at, state, model, prompt, parameters) "
            "VALUES (?, ?, 'queued', ?, ?, ?)",
            (run_id, now, parameters.model, parameters.prompt, parameters_json(parameters)),
        )

    async def mark_running(self, run_id: str, parameters: RunParameters) -> None:
        """Record that run ``run_id`` left the queue with ``parameters`` (a ``set`` while it
        was queued changes them)."""
        await self._call(
            self._db.execute,
            "UPDATE runs SET state='running', parameters=? WHERE run_id=?",
            (parameters_json(parameters), run_id),
        )

    async def keep_event(
        self, event: LoggedEvent, check: tuple[int, HistoryEntry] | None = None
    ) -> None:
        """Keep one event of a running run (not progress) before it is sent.

        A check comes with its place in the run's history and its history entry; it is kept as
        that entry, its frame without the thumbnail, and the thumbnail in ``previews``.
        """
        await self._call(self._keep_event, event, check)

    def _keep_event(self, event: LoggedEvent, check: tuple[int, HistoryEntry] | None) -> None:
        message = event.message
        frame = event.frame
        with self._db:
            self._db.execute("BEGIN")
            if isinstance(message, Check) and message.preview is not None:
                frame = encode(dataclasses.replace(message, preview=None))
                insert_preview(self._db, message, message.preview)
            if check is not None:
                position, entry = check
                self._db.execute(
                    "INSERT OR REPLACE INTO checks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    check_row(message.run_id, position, entry),
                )
            self._db.execute(
                "INSERT OR REPLACE INTO events VALUES (?, ?, ?, ?)",
                (message.run_id, message.seq, message.TYPE, frame),
            )

    async def save_result(self, finished: Finished, events: Sequence[LoggedEvent]) -> None:
        """Keep a finished run: its image (atomically), result, history and event log.

        ``events`` is the run's kept log, ending with ``finished``.
        """
        await self._call(self._save_result, finished, events, time.time())

    def _save_result(self, finished: Finished, events: Sequence[LoggedEvent], now: float) -> None:
        image_file = None
        if finished.image is not None:
            image_file = f"{finished.run_id}.png"
            self._write_image(image_file, finished.image.data)
        without_image = encode(dataclasses.replace(finished, image=None))
        with self._db:  # one transaction
            self._db.execute("BEGIN")
            self._db.execute(
                "UPDATE runs SET state='finished', finished_at=?, reason=?, steps_run=?, "
                "elapsed=?, final_score=?, error_code=?, error_message=?, image_file=?, "
                "image_width=?, image_height=? WHERE run_id=?",
                (
                    now,
                    finished.reason,
                    finished.steps_run,
                    finished.elapsed,
                    finished.final_score,
                    None if finished.error is None else finished.error.code.value,
                    None if finished.error is None else finished.error.message,
                    image_file,
                    None if finished.image is None else finished.image.width,
                    None if finished.image is None else finished.image.height,
                    finished.run_id,
                ),
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO checks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    check_row(finished.run_id, position, entry)
                    for position, entry in enumerate(finished.history)
                ],
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO events VALUES (?, ?, ?, ?)",
                [
                    (
                        finished.run_id,
                        event.seq,
                        event.message.TYPE,
                        without_image if event.message is finished else event.frame,
                    )
                    for event in events
                ],
            )

    def _write_image(self, name: str, data: bytes) -> None:
        target = self.images / name
        partial = target.with_suffix(".png.partial")
        try:
            with open(partial, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, target)
        except OSError as exc:
            raise StoreError(f"cannot write {target}: {exc}") from exc

    def _recover(self) -> None:
        """Mark every run a killed process left unfinished failed, with a ``finished`` that
        carries what was kept of its history."""
        super()._recover()
        rows = self._db.execute("SELECT run_id FROM runs WHERE state != 'finished'").fetchall()
        for (run_id,) in rows:
            history = run_history(self._db, run_id)
            (last_seq,) = self._db.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM events WHERE run_id=?", (run_id,)
            ).fetchone()
            steps = history[-1].step if history else 0
            elapsed = history[-1].elapsed if history else 0.0
            error = RunError(ErrorCode.INTERNAL, INTERRUPTED)
            finished = Finished("failed", steps, elapsed, None, history, None, error)
            finished = stamp(finished, run_id, last_seq + 1)
            with self._db:
                self._db.execute("BEGIN")
                self._db.execute(
                    "UPDATE runs SET state='finished', finished_at=?, reason='failed', "
                    "steps_run=?, elapsed=?, error_code=?, error_message=? WHERE run_id=?",
                    (time.time(), steps, elapsed, error.code.value, INTERRUPTED, run_id),
                )
                self._db.execute(
                    "INSERT INTO events VALUES (?, ?, 'finished', ?)",
                    (run_id, finished.seq, encode(finished)),
                )
