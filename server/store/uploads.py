"""Uploaded input images (:class:`UploadArchive`), kept in the ``uploads`` table.

An upload is addressed by the SHA-256 of its bytes, so keeping the same bytes twice is one row;
its bytes live in the row itself, written in one statement, so a refused or failed upload leaves
neither a row nor a file behind. Runs name their uploads in their parameters (``image``,
``mask``, ``control_image``); deleting a run leaves the uploads other runs may share.
"""

from __future__ import annotations

import time

from stepwatch.server.store.database import Database
from stepwatch.server.uploads import CheckedUpload

__all__ = ["UploadArchive"]


class UploadArchive(Database):
    """Keeps and reads back uploaded images."""

    async def keep_upload(self, upload: CheckedUpload) -> bool:
        """Keep ``upload`` unless it is kept already; return whether it was new."""
        return await self._call(self._keep_upload, upload, time.time())

    def _keep_upload(self, upload: CheckedUpload, now: float) -> bool:
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO uploads (id, created_at, format, width, height, data) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (upload.id, now, upload.format, upload.width, upload.height, upload.data),
        )
        return cursor.rowcount == 1

    async def upload(self, upload_id: str, *, data: bool = True) -> CheckedUpload | None:
        """The kept upload ``upload_id`` (without its bytes unless ``data``), or ``None``."""
        return await self._call(self._upload, upload_id, data)

    def _upload(self, upload_id: str, data: bool) -> CheckedUpload | None:
        columns = "format, width, height, " + ("data" if data else "x''")
        row = self._db.execute(f"SELECT {columns} FROM uploads WHERE id=?", (upload_id,)).fetchone()
        if row is None:
            return None
        return CheckedUpload(upload_id, row[0], row[1], row[2], bytes(row[3]))
