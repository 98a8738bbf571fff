"""Fan-out through the real service on either send path: every watcher of a run gets its events
whole and in order, written straight to its socket when nothing waits for it (the default) or
sent by its connection's task (``write_through`` off)."""

from __future__ import annotations

import threading
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pytest
from scripted_engine import ScriptedEngine
from servertools import Client, collect, connect, running_server

from stepwatch.protocol import Check, Finished, Progress, RunEvent, Subscribe, Subscribed
from stepwatch.server.config import ServerConfig, ServiceLimits
from stepwatch.server.engine.model import LoadedModel

pytestmark = pytest.mark.anyio

WATCHERS = 6


def without_progress(events: list[RunEvent]) -> list[RunEvent]:
    return [event for event in events if not isinstance(event, Progress)]


@pytest.mark.parametrize("write_through", [True, False], ids=["write-through", "asgi"])
async def test_every_watcher_gets_every_event_in_order(
    tmp_path: Path, served_model: LoadedModel, write_through: bool
) -> None:
    gate = threading.Event()
    engine = ScriptedEngine(scores=(0.4, 0.6, 0.8), gate=gate)
    config = ServerConfig(data_dir=tmp_path, limits=ServiceLimits(write_through=write_through))
    async with (
        running_server(config, lambda _config: [served_model], sampler=engine) as server,
        AsyncExitStack() as held,
    ):
        owner = await held.enter_async_context(connect(server.url))
        watchers: list[Client] = [
            await held.enter_async_context(connect(server.url)) for _ in range(WATCHERS)
        ]
        accepted = await owner.start(
            prompt="red circle", steps=30, check_interval=2, early_stop=False
        )
        for watcher in watchers:
            await watcher.send(Subscribe(accepted.run_id))
            await watcher.expect(Subscribed)
        writers = [session.writer for session in server.service.sessions]
        assert len(writers) == WATCHERS + 1
        assert all((writer is not None) is write_through for writer in writers)
        gate.set()
        with anyio.fail_after(60):
            owned, *watched = await collect(
                (owner, accepted.run_id), *((watcher, accepted.run_id) for watcher in watchers)
            )
    assert isinstance(owned[-1], Finished) and owned[-1].steps_run == 30
    checks = [event for event in owned if isinstance(event, Check)]
    assert len(checks) == 15 and all(check.preview is not None for check in checks)
    for events in watched:
        seqs = [event.seq for event in events]
        assert seqs == sorted(set(seqs))  # in order, none twice
        # Only progress that a newer progress superseded may be missing; nothing else is.
        assert without_progress(events) == [
            event for event in without_progress(owned) if event.seq >= seqs[0]
        ]
        assert events[-1] == owned[-1]
