"""What outlives the process: runs, their parameters, quality history, events and images.

One SQLite file (``stepwatch.sqlite3``) and an ``images/`` folder under the data directory::

    runs      one row per accepted run: parameters (JSON), state, and when finished the reason,
              steps, score, error and image file
    checks    the quality history: one row per check of each finished run
    events    each run's event log as protocol frames (superseded progress left out;
              the ``finished`` frame without its image, which lives in images/RUN.png)
    previews  each check's thumbnail (a running run's too), for ``GET /api/runs/{id}/previews``

The final image is written atomically (a temporary file, then a rename) before its run's row
says it exists, and both happen before the run's ``finished`` is sent. A running run is kept as
it goes (:meth:`Store.mark_running`, :meth:`Store.keep_event`): its row says ``running`` and each
of its events but progress is stored (a check with its history entry and thumbnail) before it is
sent, so a crash loses at most what came after the last of them. A run the process left
unfinished (it was killed) is marked failed when the store is next opened; what was kept of it
stays, followed by a ``finished`` that carries its history.

:class:`Store` does its SQLite work in worker threads (one at a time), never on the event loop;
its methods are coroutines. :class:`RunRecord` and :class:`RunSummary` are what the HTTP API
serves.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import anyio

from stepwatch.protocol import (
    Check,
    ErrorCode,
    Finished,
    HistoryEntry,
    Image,
    Preview,
    RunError,
    RunParameters,
    decode_server,
    encode,
    stamp,
)
from stepwatch.server.eventlog import LoggedEvent

__all__ = ["RunRecord", "RunSummary", "Store", "StoreError", "StoredPreview", "probe_writable"]

P = ParamSpec("P")
T = TypeVar("T")

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    number        INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id        TEXT NOT NULL UNIQUE,
    created_at    REAL NOT NULL,
    finished_at   REAL,
    state         TEXT NOT NULL,
    model         TEXT NOT NULL,
    prompt        TEXT NOT NULL,
    parameters    TEXT NOT NULL,
    reason        TEXT,
    steps_run     INTEGER,
    elapsed       REAL,
    final_score   REAL,
    error_code    TEXT,
    error_message TEXT,
    image_file    TEXT,
    image_width   INTEGER,
    image_height  INTEGER
);
CREATE TABLE IF NOT EXISTS checks (
    run_id     TEXT NOT NULL,
    position   INTEGER NOT NULL,
    step       INTEGER NOT NULL,
    score      REAL NOT NULL,
    components TEXT NOT NULL,
    decision   TEXT NOT NULL,
    cfg        REAL NOT NULL,
    threshold  REAL NOT NULL,
    elapsed    REAL NOT NULL,
    PRIMARY KEY (run_id, position)
);
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL,
    seq    INTEGER NOT NULL,
    type   TEXT NOT NULL,
    frame  BLOB NOT NULL,
    PRIMARY KEY (run_id, seq)
);
"""
#: What a running run keeps as it goes: each check's thumbnail (its check is in ``checks``).
LIVE_SCHEMA = """
CREATE TABLE IF NOT EXISTS previews (
    run_id TEXT NOT NULL,
    step   INTEGER NOT NULL,
    seq    INTEGER NOT NULL,
    format TEXT NOT NULL,
    width  INTEGER NOT NULL,
    height INTEGER NOT NULL,
    data   BLOB NOT NULL,
    PRIMARY KEY (run_id, step)
);
"""
INTERRUPTED = "the server stopped before the run finished"
#: Completed runs an expected-score curve is learned from (the latest ones).
HISTORY_RUNS = 200


class StoreError(Exception):
    """The store cannot be opened or written (a translated ``sqlite3`` or ``OSError``)."""


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
class StoredPreview:
    """The thumbnail of one check of a run (``GET /api/runs/{id}/previews``), without its bytes."""

    step: int
    seq: int
    format: str
    width: int
    height: int


@dataclass(frozen=True)
class RunRecord:
    """Everything the store knows about one run (``GET /api/runs/{id}``)."""

    summary: RunSummary
    parameters: RunParameters
    elapsed: float | None
    error: RunError | None
    history: tuple[HistoryEntry, ...]


class Store:
    """The service's SQLite store and image folder under ``data_dir``.

    Open it with :meth:`open` (a coroutine) and close it with :meth:`close`.
    """

    def __init__(self, data_dir: Path, connection: sqlite3.Connection) -> None:
        self.data_dir = data_dir
        self.images = data_dir / "images"
        self._db = connection
        self._lock = threading.Lock()
        self._limiter = anyio.CapacityLimiter(1)

    @classmethod
    async def open(cls, data_dir: Path) -> Store:
        """Open (creating if needed) the store under ``data_dir``; mark interrupted runs failed."""
        return await anyio.to_thread.run_sync(cls._open_sync, data_dir)

    @classmethod
    def _open_sync(cls, data_dir: Path) -> Store:
        try:
            (data_dir / "images").mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(
                data_dir / "stepwatch.sqlite3", check_same_thread=False, isolation_level=None
            )
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.executescript(SCHEMA)
            connection.executescript(LIVE_SCHEMA)
            connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the store under {data_dir}: {exc}") from exc
        store = cls(data_dir, connection)
        store._fail_interrupted()
        return store

    async def close(self) -> None:
        await self._call(self._db.close)

    async def _call(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        def locked() -> T:
            with self._lock:
                try:
                    return function(*args, **kwargs)
                except sqlite3.Error as exc:
                    raise StoreError(f"store: {exc}") from exc

        return await anyio.to_thread.run_sync(locked, limiter=self._limiter)

    # -- writing -------------------------------------------------------------------------------

    async def check_writable(self) -> None:
        """Raise :class:`StoreError` unless both the database and the image folder take a write."""
        await self._call(self._check_writable)

    def _check_writable(self) -> None:
        probe_writable(self.data_dir)
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    async def add_run(self, run_id: str, parameters: RunParameters) -> None:
        """Record an accepted run and its parameters."""
        await self._call(self._add_run, run_id, parameters, time.time())

    def _add_run(self, run_id: str, parameters: RunParameters, now: float) -> None:
        self._db.execute(
            "INSERT INTO runs (run_id, created_at, state, model, prompt, parameters) "
            "VALUES (?, ?, 'queued', ?, ?, ?)",
            (run_id, now, parameters.model, parameters.prompt, _json(parameters)),
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
                    _check_row(finished.run_id, position, entry)
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

    def _fail_interrupted(self) -> None:
        rows = self._db.execute("SELECT run_id FROM runs WHERE state != 'finished'").fetchall()
        for (run_id,) in rows:
            history = self._history(run_id)
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

    # -- a running run, kept as it goes ----------------------------------------------------------

    async def mark_running(self, run_id: str, parameters: RunParameters) -> None:
        """Record that run ``run_id`` left the queue with ``parameters`` (a ``set`` while it
        was queued changes them)."""
        await self._call(
            self._db.execute,
            "UPDATE runs SET state='running', parameters=? WHERE run_id=?",
            (_json(parameters), run_id),
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
                self._keep_preview(message, message.preview)
            if check is not None:
                position, entry = check
                self._db.execute(
                    "INSERT OR REPLACE INTO checks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    _check_row(message.run_id, position, entry),
                )
            self._db.execute(
                "INSERT OR REPLACE INTO events VALUES (?, ?, ?, ?)",
                (message.run_id, message.seq, message.TYPE, frame),
            )

    def _keep_preview(self, check: Check, preview: Preview) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO previews VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                check.run_id,
                check.step,
                check.seq,
                preview.format,
                preview.width,
                preview.height,
                preview.data,
            ),
        )

    async def previews(self, run_id: str) -> list[StoredPreview]:
        """The thumbnails kept of run ``run_id``'s checks, in step order."""
        return await self._call(self._previews, run_id)

    def _previews(self, run_id: str) -> list[StoredPreview]:
        rows = self._db.execute(
            "SELECT step, seq, format, width, height FROM previews WHERE run_id=? ORDER BY step",
            (run_id,),
        ).fetchall()
        return [StoredPreview(*row) for row in rows]

    async def preview_image(self, run_id: str, step: int) -> tuple[str, bytes] | None:
        """The format and bytes of the thumbnail of run ``run_id``'s check at ``step``."""
        return await self._call(self._preview_image, run_id, step)

    def _preview_image(self, run_id: str, step: int) -> tuple[str, bytes] | None:
        row = self._db.execute(
            "SELECT format, data FROM previews WHERE run_id=? AND step=?", (run_id, step)
        ).fetchone()
        return None if row is None else (str(row[0]), bytes(row[1]))

    # -- searching and deleting the history ----------------------------------------------------

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

    # -- reading -------------------------------------------------------------------------------

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

    async def list_runs(self, limit: int, before: int | None) -> list[RunSummary]:
        """Up to ``limit`` runs, newest first, older than run number ``before`` when given."""
        return await self._call(self._list_runs, limit, before)

    def _list_runs(self, limit: int, before: int | None) -> list[RunSummary]:
        cursor = self._db.execute(
            f"SELECT {_SUMMARY_COLUMNS} FROM runs WHERE number < ? ORDER BY number DESC LIMIT ?",
            (before if before is not None else 2**62, limit),
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
        parameters = RunParameters(**json.loads(row[11]))
        error = None if row[13] is None else RunError(ErrorCode(row[13]), row[14] or "")
        return RunRecord(summary, parameters, row[12], error, self._history(run_id))

    def _history(self, run_id: str) -> tuple[HistoryEntry, ...]:
        checks = self._db.execute(
            "SELECT step, score, components, decision, cfg, threshold, elapsed FROM checks "
            "WHERE run_id=? ORDER BY position",
            (run_id,),
        ).fetchall()
        return tuple(
            HistoryEntry(step, score, json.loads(components), decision, cfg, threshold, elapsed)
            for step, score, components, decision, cfg, threshold, elapsed in checks
        )

    def image_path(self, run_id: str) -> Path | None:
        """The final image of run ``run_id`` when it has one (a cheap file check)."""
        if not run_id.isalnum():
            return None
        path = self.images / f"{run_id}.png"
        return path if path.is_file() else None

    async def quality_history(
        self, model: str, verifier: str, sampler: str, limit: int = HISTORY_RUNS
    ) -> list[list[tuple[float, float]]]:
        """The checks of the latest ``limit`` runs of ``model`` with ``verifier`` and ``sampler``
        that ran to their end (completed or stopped early), as ``(step / steps, score)`` per run,
        each up to its first CFG raise (later scores answer the raise, not the run)."""
        return await self._call(self._quality_history, model, verifier, sampler, limit)

    def _quality_history(
        self, model: str, verifier: str, sampler: str, limit: int
    ) -> list[list[tuple[float, float]]]:
        rows = self._db.execute(
            "SELECT c.run_id, c.step, json_extract(r.parameters, '$.steps'), c.score, c.decision "
            "FROM checks c JOIN (SELECT run_id, parameters FROM runs WHERE model = ? "
            "AND reason IN ('completed', 'early_stop') "
            "AND json_extract(parameters, '$.verifier') = ? "
            "AND json_extract(parameters, '$.sampler') = ? ORDER BY number DESC LIMIT ?) r "
            "ON c.run_id = r.run_id ORDER BY c.run_id, c.position",
            (model, verifier, sampler, limit),
        ).fetchall()
        runs: dict[str, list[tuple[float, float]]] = {}
        raised: set[str] = set()
        for run_id, step, steps, score, decision in rows:
            if run_id in raised or not steps:
                continue
            runs.setdefault(run_id, []).append((step / steps, score))
            if decision == "raise_cfg":
                raised.add(run_id)
        return list(runs.values())


def probe_writable(data_dir: Path) -> None:
    """Write, sync and remove a small file in ``data_dir``'s image folder (creating the folders
    when needed), or raise :class:`StoreError` saying why that failed."""
    images = data_dir / "images"
    probe = images / ".write-probe"
    try:
        images.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as file:
            file.write(b"stepwatch")
            file.flush()
            os.fsync(file.fileno())
        probe.unlink()
    except OSError as exc:
        raise StoreError(f"cannot write under {data_dir}: {exc}") from exc


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


def _check_row(run_id: str, position: int, entry: HistoryEntry) -> tuple[Any, ...]:
    return (
        run_id,
        position,
        entry.step,
        entry.score,
        json.dumps(dict(entry.components)),
        entry.decision,
        entry.cfg,
        entry.threshold,
        entry.elapsed,
    )


def _like_escaped(term: str) -> str:
    return term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _json(parameters: RunParameters) -> str:
    return json.dumps(dataclasses.asdict(parameters))
