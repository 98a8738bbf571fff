"""Finished and running runs read back from the store (:class:`RunArchive`): the lists, the
search and the records the HTTP API serves, a finished run's frames for a replay, and deleting
a finished run.

:class:`RunRecord` and :class:`RunSummary` are what the HTTP API serves.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stepwatch.protocol import (
    ErrorCode,
    Finished,
    HistoryEntry,
    Image,
    RunError,
    RunParameters,
    SearchSettings,
    decode_server,
    encode,
)
from stepwatch.server.store.database import Database, StoreError
from stepwatch.server.store.history import run_history

__all__ = ["RunArchive", "RunRecord", "RunSummary"]


@dataclass(frozen=True)
class RunSummary:
    """One run in the list ``GET /api/runs`` serves."""

    number: int
    run_id: str
    created_at: float
    finished_at: float | None
    state: str
    model: str
    prompt: str
    reason: str | None
    steps_run: int | None
    final_score: float | None
    has_image: bool


@dataclass(frozen=True)
class RunRecord:
    """Everything the store knows about one run (``GET /api/runs/{id}``)."""

    summary: RunSummary
    parameters: RunParameters
    elapsed: float | None
    error: RunError | None
    history: tuple[HistoryEntry, ...]


class RunArchive(Database):
    """The runs the store holds, read back (and a finished one deleted)."""

    async def list_runs(self, limit: int, before: int | None) -> list[RunSummary]:
        """Up to ``limit`` runs, newest first, older than run number ``before`` when given."""
        return await self._call(self._list_runs, limit, before)

    def _list_runs(self, limit: int, before: int | None) -> list[RunSummary]:
        cursor = self._db.execute(
            f"SELECT {_SUMMARY_COLUMNS} FROM runs WHERE number < ? ORDER BY number DESC LIMIT ?",
            (before if before is not None else 2**62, limit),
        )
        return [_summary(row) for row in cursor.fetchall()]

    async def search_runs(self, words: str, limit: int, before: int | None) -> list[RunSummary]:
        """Like :meth:`list_runs`, only runs whose prompt holds every word of ``words``."""
        return await self._call(self._search_runs, words, limit, before)

    def _search_runs(self, words: str, limit: int, before: int | None) -> list[RunSummary]:
        terms = words.split()
        where = "".join(" AND prompt LIKE ? ESCAPE '\\'" for _ in terms)
        cursor = self._db.execute(
            f"SELECT {_SUMMARY_COLUMNS} FROM runs WHERE number < ?{where} "
            "ORDER BY number DESC LIMIT ?",
            (
                before if before is not None else 2**62,
                *(f"%{_like_escaped(term)}%" for term in terms),
                limit,
            ),
        )
        return [_summary(row) for row in cursor.fetchall()]

    async def run_record(self, run_id: str) -> RunRecord | None:
        """Everything about run ``run_id``, or ``None`` when the store does not know it."""
        return await self._call(self._run_record, run_id)

    def _run_record(self, run_id: str) -> RunRecord | None:
        row = self._db.execute(
            f"SELECT {_SUMMARY_COLUMNS}, parameters, elapsed, error_code, error_message "
            "FROM runs WHERE run_id=?",
            (run_id,),
        ).fetchone()
        if row is None:
            return None
        summary = _summary(row[:11])
        stored = json.loads(row[11])
        if isinstance(stored.get("search"), dict):  # a search run's settings, a record of them
            stored["search"] = SearchSettings(**stored["search"])
        parameters = RunParameters(**stored)
        error = None if row[13] is None else RunError(ErrorCode(row[13]), row[14] or "")
        return RunRecord(summary, parameters, row[12], error, run_history(self._db, run_id))

    def image_path(self, run_id: str) -> Path | None:
        """The final image of run ``run_id`` when it has one (a cheap file check)."""
        if not run_id.isalnum():
            return None
        path = self.images / f"{run_id}.png"
        return path if path.is_file() else None

    async def finished_events(self, run_id: str, after_seq: int) -> list[bytes] | None:
        """The frames of a finished run after ``after_seq`` (the image put back into
        ``finished``); ``None`` when the store has no finished run ``run_id``."""
        return await self._call(self._finished_events, run_id, after_seq)

    def _finished_events(self, run_id: str, after_seq: int) -> list[bytes] | None:
        row = self._db.execute(
            "SELECT state, image_file, image_width, image_height FROM runs WHERE run_id=?",
            (run_id,),
        ).fetchone()
        if row is None or row[0] != "finished":
            return None
        rows = self._db.execute(
            "SELECT type, frame FROM events WHERE run_id=? AND seq>? ORDER BY seq",
            (run_id, after_seq),
        ).fetchall()
        frames = [bytes(frame) for _type, frame in rows]
        if rows and rows[-1][0] == "finished" and row[1] is not None:
            frames[-1] = self._with_image(frames[-1], row[1], row[2], row[3])
        return frames

    def _with_image(self, frame: bytes, name: str, width: int, height: int) -> bytes:
        try:
            data = (self.images / name).read_bytes()
        except OSError:
            return frame  # the image was removed by hand; the rest of the result stands
        finished = decode_server(frame)
        assert isinstance(finished, Finished)
        return encode(dataclasses.replace(finished, image=Image(width, height, data)))

    async def last_seq(self, run_id: str) -> int | None:
        """The last ``seq`` of a finished run, or ``None`` when it is not a finished run."""
        return await self._call(self._last_seq, run_id)

    def _last_seq(self, run_id: str) -> int | None:
        row = self._db.execute(
            "SELECT r.state, MAX(e.seq) FROM runs r LEFT JOIN events e ON e.run_id = r.run_id "
            "WHERE r.run_id=? GROUP BY r.run_id",
            (run_id,),
        ).fetchone()
        if row is None or row[0] != "finished":
            return None
        return int(row[1] or 0)

    async def delete_run(self, run_id: str) -> bool:
        """Forget finished run ``run_id``: its row, checks, events, thumbnails and image.

        Returns whether there was such a run (a run that has not finished is not deleted).
        """
        return await self._call(self._delete_run, run_id)

    def _delete_run(self, run_id: str) -> bool:
        row = self._db.execute(
            "SELECT image_file FROM runs WHERE run_id=? AND state='finished'", (run_id,)
        ).fetchone()
        if row is None:
            return False
        with self._db:
            self._db.execute("BEGIN")
            for table in ("runs", "checks", "events", "previews"):
                self._db.execute(f"DELETE FROM {table} WHERE run_id=?", (run_id,))
        if row[0] is not None:
            try:
                (self.images / row[0]).unlink(missing_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot delete {self.images / row[0]}: {exc}") from exc
        return True


_SUMMARY_COLUMNS = (
    "number, run_id, created_at, finished_at, state, model, prompt, reason, steps_run, "
    "final_score, image_file"
)


def _summary(row: Sequence[Any]) -> RunSummary:
    return RunSummary(
        number=row[0],
        run_id=row[1],
        created_at=row[2],
        finished_at=row[3],
        state=row[4],
        model=row[5],
        prompt=row[6],
        reason=row[7],
        steps_run=row[8],
        final_score=row[9],
        has_image=row[10] is not None,
    )


def _like_escaped(term: str) -> str:
    return term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
