"""A store file written by an earlier version opens and reads back as it was written.

The file is made here with raw SQL in the first schema (``user_version`` 1) as it was shipped,
frozen in this test: a change to the store's code that could no longer read what a running
service has on disk fails here.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from stepwatch.protocol import (
    ErrorCode,
    Finished,
    HistoryEntry,
    Progress,
    decode_server,
    encode,
)
from stepwatch.server.store import INTERRUPTED, Store

pytestmark = pytest.mark.anyio

SCHEMA_V1 = """
CREATE TABLE runs (
    number INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL, finished_at REAL, state TEXT NOT NULL, model TEXT NOT NULL,
    prompt TEXT NOT NULL, parameters TEXT NOT NULL, reason TEXT, steps_run INTEGER,
    elapsed REAL, final_score REAL, error_code TEXT, error_message TEXT, image_file TEXT,
    image_width INTEGER, image_height INTEGER
);
CREATE TABLE checks (
    run_id TEXT NOT NULL, position INTEGER NOT NULL, step INTEGER NOT NULL,
    score REAL NOT NULL, components TEXT NOT NULL, decision TEXT NOT NULL, cfg REAL NOT NULL,
    threshold REAL NOT NULL, elapsed REAL NOT NULL, PRIMARY KEY (run_id, position)
);
CREATE TABLE events (
    run_id TEXT NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL, frame BLOB NOT NULL,
    PRIMARY KEY (run_id, seq)
);
PRAGMA user_version=1;
"""
PARAMETERS = {
    "model": "tiny",
    "prompt": "red circle",
    "negative_prompt": "",
    "seed": 1,
    "steps": 10,
    "cfg": 3.0,
    "sampler": "euler",
    "scheduler": "normal",
    "width": 32,
    "height": 32,
    "verifier": "simple",
    "check_interval": 5,
    "quality_threshold": 0.7,
    "scale_factor": 1.25,
    "cfg_max": 6.0,
    "early_stop": True,
    "patience": 2,
    "min_steps": 5,
    "preview_size": 128,
    "preview_format": "webp",
}
DONE, LEFT = "00000000000000aa", "00000000000000bb"
HISTORY = (
    HistoryEntry(5, 0.25, {"variance": 0.5}, "continue", 3.0, 0.7, 0.5),
    HistoryEntry(10, 0.5, {"variance": 0.75}, "continue", 3.0, 0.7, 1.0),
)


def write_v1_store(data_dir: Path) -> Finished:
    """A finished run (two checks, its events) and one a killed server left running."""
    finished = Finished("completed", 10, 1.0, 0.5, HISTORY, None, None, run_id=DONE, seq=3)
    progress = Progress(1, 10, 0.1, None, run_id=DONE, seq=1)
    (data_dir / "images").mkdir()
    with sqlite3.connect(data_dir / "stepwatch.sqlite3") as db:
        db.executescript(SCHEMA_V1)
        for run_id, state in ((DONE, "finished"), (LEFT, "running")):
            db.execute(
                "INSERT INTO runs (run_id, created_at, state, model, prompt, parameters) "
                "VALUES (?, 1.0, ?, 'tiny', 'red circle', ?)",
                (run_id, state, json.dumps(PARAMETERS)),
            )
        db.execute(
            "UPDATE runs SET finished_at=2.0, reason='completed', steps_run=10, elapsed=1.0, "
            "final_score=0.5 WHERE run_id=?",
            (DONE,),
        )
        for run_id in (DONE, LEFT):
            for position, entry in enumerate(HISTORY):
                db.execute(
                    "INSERT INTO checks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (run_id, position, entry.step, entry.score, json.dumps(entry.components),
                     entry.decision, entry.cfg, entry.threshold, entry.elapsed),
                )  # fmt: skip
        db.executemany(
            "INSERT INTO events VALUES (?, ?, ?, ?)",
            [(DONE, 1, "progress", encode(progress)), (DONE, 3, "finished", encode(finished)),
             (LEFT, 1, "progress", encode(Progress(1, 10, 0.1, None, run_id=LEFT, seq=1)))],
        )  # fmt: skip
    db.close()
    return finished


async def test_a_first_schema_store_opens_and_reads_back_as_written(tmp_path: Path) -> None:
    finished = write_v1_store(tmp_path)
    store = await Store.open(tmp_path)
    try:
        record = await store.run_record(DONE)
        listed = await store.list_runs(10, None)
        found = await store.search_runs("circle", 10, None)
        frames = await store.finished_events(DONE, 0)
        curves = await store.quality_history("tiny", "simple", "euler")
        left = await store.run_record(LEFT)
        left_frames = await store.finished_events(LEFT, 1)
        previews = await store.previews(DONE)
    finally:
        await store.close()
    assert record is not None and record.history == HISTORY and record.error is None
    assert record.parameters.prompt == "red circle" and record.parameters.steps == 10
    assert (record.summary.reason, record.summary.steps_run) == ("completed", 10)
    assert [summary.run_id for summary in listed] == [LEFT, DONE]
    assert [summary.run_id for summary in found] == [LEFT, DONE]
    assert frames is not None and decode_server(frames[-1]) == finished
    assert curves == [[(0.5, 0.25), (1.0, 0.5)]]
    assert previews == []
    # The run the killed server left is failed, its checks kept, and it ends with a finished.
    assert left is not None and left.summary.reason == "failed" and left.history == HISTORY
    assert left.error is not None and (left.error.code, left.error.message) == (
        ErrorCode.INTERNAL,
        INTERRUPTED,
    )
    assert left_frames is not None
    (last,) = [decode_server(frame) for frame in left_frames]
    assert isinstance(last, Finished) and last.seq == 2 and last.history == HISTORY
