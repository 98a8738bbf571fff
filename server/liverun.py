"""A run the service holds in memory: :class:`LiveRun`.

A live run has its resolved parameters, its batch key (runs of one key may be sampled as lanes
of one batch), its control (what the sampler reads at every step
boundary), its event log, the connections that watch it and the one that owns it. It fans each
logged event out to its watchers (:meth:`LiveRun.publish`): putting into an outbox never waits,
so neither a slow watcher nor many of them slow the sampler or each other.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Hashable
from dataclasses import dataclass

import anyio

from stepwatch.protocol import Check, HistoryEntry, RunState, Started
from stepwatch.server.catalog import ResolvedRun
from stepwatch.server.engine.control import RunControl
from stepwatch.server.eventlog import EventLog, LoggedEvent
from stepwatch.server.outbox import Outbox

__all__ = ["ControlRequest", "LiveRun"]


@dataclass(frozen=True)
class ControlRequest:
    """A ``stop`` or ``set`` passed to the engine: who asked, under which request id."""

    outbox: Outbox
    request_id: str


class LiveRun:
    """A run the service holds in memory: its parameters, control, event log and watchers."""

    def __init__(self, resolved: ResolvedRun, owner: Outbox) -> None:
        self.run_id = secrets.token_hex(8)
        self.token = secrets.token_urlsafe(24)
        self.resolved = resolved
        self.control = RunControl()
        self.log = EventLog()
        self.state: RunState = "queued"
        #: The engine has reported the end; the result is being stored.
        self.ending = False
        self.watchers: set[Outbox] = {owner}
        self.owner: Outbox | None = owner
        self.starter = owner
        #: The requests handed to the engine, by the id the engine knows them under.
        self.requests: dict[str, ControlRequest] = {}
        self.done = anyio.Event()
        self.abandon_timer: anyio.CancelScope | None = None
        #: Keeping the running run's events in the store failed once (logged once).
        self.keep_failed = False
        #: Runs of one key may share a batch (``None``: this run is always sampled alone).
        self.batch_key: Hashable | None = None
        self._entries: list[HistoryEntry] = []

    @property
    def finished(self) -> bool:
        return self.state == "finished"

    @property
    def attached(self) -> bool:
        """Whether a connection watches or owns the run."""
        return bool(self.watchers) or self.owner is not None

    def token_matches(self, token: str) -> bool:
        return hmac.compare_digest(token.encode(), self.token.encode())

    @property
    def history(self) -> tuple[HistoryEntry, ...]:
        """The run's checks so far, read from its log (each made into an entry once: the
        service reads the history at every check)."""
        checks = self.log.checks
        while len(self._entries) < len(checks):
            self._entries.append(self.entry(checks[len(self._entries)]))
        return tuple(self._entries)

    def entry(self, event: LoggedEvent) -> HistoryEntry:
        """A logged check as the quality history keeps it; ``elapsed`` counts from when the
        engine emitted ``started`` (the engine's own history, in ``finished``, is exact)."""
        assert isinstance(event.message, Check)
        started = next((e for e in self.log if isinstance(e.message, Started)), event)
        return event.message.entry(max((event.emitted_ns - started.emitted_ns) / 1e9, 0.0))

    def publish(self, event: LoggedEvent, request: ControlRequest | None = None) -> None:
        """Send ``event`` to every watcher, and to a steering connection that does not watch.

        A connection may steer a run it does not watch (it holds the token from elsewhere); the
        ``applied`` that answers it still reaches it.
        """
        for outbox in self.watchers:
            outbox.event(self.run_id, event)
        if request is not None and request.outbox not in self.watchers:
            request.outbox.event(self.run_id, event)
