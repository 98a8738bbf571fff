"""The nodes' quality history, from which they learn what a model usually scores.

The policy judges a score against an expected-score curve for the verifier and sampler
(:mod:`stepwatch.server.engine.curves`); a server learns its curves from the SQLite store of its
completed runs, and the nodes learn theirs the same way from a JSON-lines file in ComfyUI's user
directory (``user/stepwatch/quality_history.jsonl``): one line per sampling run that ran to its
end or stopped early, with its verifier, sampler and ``(step / steps, score)`` checks up to its
first CFG raise. Until :data:`~stepwatch.server.engine.curves.MIN_RUNS` such runs exist for a
verifier and sampler, the policy leaves CFG alone (and says so in each check's reason).

This module imports neither ComfyUI nor torch.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path

from stepwatch.protocol import Check
from stepwatch.server.engine.curves import MIN_RUNS, ExpectedCurve

__all__ = ["HISTORY_FILE", "QualityHistory"]

HISTORY_FILE = Path("stepwatch") / "quality_history.jsonl"
#: The latest runs a curve is learned from (as the server's store does).
HISTORY_RUNS = 200

_LOCK = threading.Lock()


class QualityHistory:
    """Read and append the nodes' quality history at ``path`` (made on first write)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def curve(self, verifier: str, sampler: str) -> ExpectedCurve | None:
        """The curve the recorded runs of ``verifier`` and ``sampler`` make, once it rests on at
        least ``MIN_RUNS`` runs; an unreadable line is skipped."""
        runs: list[list[tuple[float, float]]] = []
        try:
            lines = self.path.read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            try:
                entry = json.loads(line)
                if entry["verifier"] == verifier and entry["sampler"] == sampler:
                    runs.append([(float(p), float(s)) for p, s in entry["checks"]])
            except (ValueError, KeyError, TypeError):
                continue
        learned = ExpectedCurve.from_runs(runs[-HISTORY_RUNS:])
        return learned if learned is not None and learned.runs >= MIN_RUNS else None

    def record(self, verifier: str, sampler: str, steps: int, history: Sequence[Check]) -> None:
        """Append one finished run's checks (up to and including its first CFG raise)."""
        checks: list[tuple[float, float]] = []
        for record in history:
            checks.append((round(record.step / steps, 4), round(record.score, 4)))
            if record.decision == "raise_cfg":
                break
        if not checks:
            return
        line = json.dumps({"verifier": verifier, "sampler": sampler, "checks": checks})
        with _LOCK:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as file:
                file.write(line + "\n")
