"""Each check's thumbnail in the store (the ``previews`` table): kept while its run goes on,
served by ``GET /api/runs/{id}/previews`` (:class:`PreviewArchive`)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from stepwatch.protocol import Check, Preview
from stepwatch.server.store.database import Database

__all__ = ["PreviewArchive", "StoredPreview", "insert_preview"]


@dataclass(frozen=True)
class StoredPreview:
    """The thumbnail of one check of a run (``GET /api/runs/{id}/previews``), without its bytes."""

    step: int
    seq: int
    format: str
    width: int
    height: int


def insert_preview(db: sqlite3.Connection, check: Check, preview: Preview) -> None:
    """Keep ``preview``, the thumbnail of ``check`` (in the caller's transaction)."""
    db.execute(
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


class PreviewArchive(Database):
    """The thumbnails kept of runs' checks, read back."""

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
