"""The quality history in the store: each run's checks (the ``checks`` table), and the scores of
past runs an expected-score curve is learned from (:class:`QualityArchive`).

A check is written as a row by :func:`check_row` (while its run goes on, and again with the
result) and read back as the protocol's :class:`~stepwatch.protocol.HistoryEntry` by
:func:`run_history`.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from stepwatch.protocol import HistoryEntry
from stepwatch.server.store.database import Database

__all__ = ["HISTORY_RUNS", "QualityArchive", "check_row", "run_history"]

#: Completed runs an expected-score curve is learned from (the latest ones).
HISTORY_RUNS = 200


def check_row(run_id: str, position: int, entry: HistoryEntry) -> tuple[Any, ...]:
    """The ``checks`` row of the ``position``-th check of run ``run_id``."""
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


def run_history(db: sqlite3.Connection, run_id: str) -> tuple[HistoryEntry, ...]:
    """Every check kept of run ``run_id``, in order."""
    checks = db.execute(
        "SELECT step, score, components, decision, cfg, threshold, elapsed FROM checks "
        "WHERE run_id=? ORDER BY position",
        (run_id,),
    ).fetchall()
    return tuple(
        HistoryEntry(step, score, json.loads(components), decision, cfg, threshold, elapsed)
        for step, score, components, decision, cfg, threshold, elapsed in checks
    )


class QualityArchive(Database):
    """What past runs scored, read for the expected-score curves."""

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
