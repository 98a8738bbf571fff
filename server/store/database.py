"""The store's SQLite file: its schema, the connection, and how work on it runs (:class:`Database`).

Every table of the store is created here, so that a store written by any version opens (the
tables are created ``IF NOT EXISTS``; ``PRAGMA user_version`` says which schema wrote them).
:class:`Database` does its SQLite work in worker threads, one at a time, never on the event
loop; the modules beside this one add the store's reads and writes to it.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, Self, TypeVar

import anyio

__all__ = ["Database", "StoreError", "probe_writable"]

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
#: Uploaded input images, by the SHA-256 of their bytes (see :mod:`.uploads`).
UPLOADS_SCHEMA = """
CREATE TABLE IF NOT EXISTS uploads (
    id         TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    format     TEXT NOT NULL,
    width      INTEGER NOT NULL,
    height     INTEGER NOT NULL,
    data       BLOB NOT NULL
);
"""


class StoreError(Exception):
    """The store cannot be opened or written (a translated ``sqlite3`` or ``OSError``)."""


class Database:
    """The SQLite file and image folder under ``data_dir``, and the one worker that uses them.

    Open it with :meth:`open` (a coroutine) and close it with :meth:`close`.
    """

    def __init__(self, data_dir: Path, connection: sqlite3.Connection) -> None:
        self.data_dir = data_dir
        self.images = data_dir / "images"
        self._db = connection
        self._lock = threading.Lock()
        self._limiter = anyio.CapacityLimiter(1)

    @classmethod
    async def open(cls, data_dir: Path) -> Self:
        """Open (creating if needed) the store under ``data_dir``, then :meth:`_recover`."""
        return await anyio.to_thread.run_sync(cls._open_sync, data_dir)

    @classmethod
    def _open_sync(cls, data_dir: Path) -> Self:
        try:
            (data_dir / "images").mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(
                data_dir / "stepwatch.sqlite3", check_same_thread=False, isolation_level=None
            )
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.executescript(SCHEMA)
            connection.executescript(LIVE_SCHEMA)
            connection.executescript(UPLOADS_SCHEMA)
            connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the store under {data_dir}: {exc}") from exc
        store = cls(data_dir, connection)
        store._recover()
        return store

    def _recover(self) -> None:
        """Called once when the store has been opened, before anyone uses it (in its worker
        thread): put right what a process that was killed left behind."""

    async def close(self) -> None:
        await self._call(self._db.close)

    async def _call(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``function(*args, **kwargs)`` in the store's worker thread; ``sqlite3`` errors
        become :class:`StoreError`."""

        def locked() -> T:
            with self._lock:
                try:
                    return function(*args, **kwargs)
                except sqlite3.Error as exc:
                    raise StoreError(f"store: {exc}") from exc

        return await anyio.to_thread.run_sync(locked, limiter=self._limiter)

    async def check_writable(self) -> None:
        """Raise :class:`StoreError` unless both the database and the image folder take a write."""
        await self._call(self._check_writable)

    def _check_writable(self) -> None:
        probe_writable(self.data_dir)
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


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
