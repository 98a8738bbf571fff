"""What outlives the process: runs, their parameters, quality history, events and images.

One SQLite file (``stepwatch.sqlite3``) and an ``images/`` folder under the data directory::

    runs      one row per accepted run: parameters (JSON), state, and when finished the reason,
              steps, score, error and image file
    checks    the quality history: one row per check of each finished run
    events    each run's event log as protocol frames (superseded progress left out;
              the ``finished`` frame without its image, which lives in images/RUN.png)
    previews  each check's thumbnail (a running run's too), for ``GET /api/runs/{id}/previews``
    uploads   uploaded input images (init images, masks, control images) that runs name

A module per concept, each adding its part to :class:`Store`:

    database    the schema, the connection and its worker thread; :class:`StoreError`
    recording   a run written as it goes, its result, and the runs a killed process left
    archive     runs read back: lists, search, records, a finished run's frames; deleting one
    previews    each check's thumbnail
    history     each run's checks, and the scores curves are learned from
    uploads     uploaded input images, by the SHA-256 of their bytes
"""

from __future__ import annotations

from stepwatch.server.store.archive import RunArchive, RunRecord, RunSummary
from stepwatch.server.store.database import StoreError, probe_writable
from stepwatch.server.store.history import HISTORY_RUNS, QualityArchive
from stepwatch.server.store.previews import PreviewArchive, StoredPreview
from stepwatch.server.store.recording import INTERRUPTED, RunRecorder
from stepwatch.server.store.uploads import UploadArchive

__all__ = [
    "HISTORY_RUNS",
    "INTERRUPTED",
    "RunRecord",
    "RunSummary",
    "Store",
    "StoreError",
    "StoredPreview",
    "probe_writable",
]


class Store(RunRecorder, RunArchive, PreviewArchive, QualityArchive, UploadArchive):
    """The service's SQLite store and image folder under ``data_dir``.

    Open it with :meth:`open` (a coroutine) and close it with :meth:`close`; its methods are
    coroutines that do their SQLite work in a worker thread, one at a time.

    It has as many methods as its parts together (about thirty, half of them the worker-thread
    halves of the other half) because it is the one handle the run manager and the HTTP API
    hold on the one SQLite connection; each part is a class of its own, in a module of its own,
    with a handful of methods.
    """
