"""Delivery through the real service: slow watchers are dropped without hurting the others,
a client resumes where it left off, and a run nobody attaches to is abandoned."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path
from typing import Any

import pytest
from scripted_engine import ScriptedEngine
from servertools import collect, connect, running_server
from websockets.exceptions import ConnectionClosed

from stepwatch.protocol import (
    Check,
    Error,
    ErrorCode,
    Finished,
    Progress,
    ResumePoint,
    RunEvent,
    ServerMessage,
    Stop,
    Subscribe,
    Subscribed,
)
from stepwatch.server.config import ServerConfig, ServiceLimits
from stepwatch.server.engine.model import LoadedModel

pytestmark = pytest.mark.anyio

LARGE_FRAMES: dict[str, Any] = {
    "model": "tiny-vae",
    "prompt": "red circle",
    "steps": 40,
    "width": 64,
    "height": 64,
    "check_interval": 1,
    "preview_format": "png",
    "early_stop": False,
}


def assert_resumed(resumed: list[RunEvent], reference: list[RunEvent], after_seq: int) -> None:
    """``resumed`` holds every event of ``reference`` after ``after_seq`` exactly once, in
    order; only progress that a later progress superseded may be missing, and a check's
    preview only when a later check's superseded it."""
    seqs = [event.seq for event in resumed]
    assert seqs == sorted(set(seqs)) and seqs[0] > after_seq
    expected = {event.seq: event for event in reference if event.seq > after_seq}
    for event in resumed:
        original = expected[event.seq]
        if isinstance(original, Check) and isinstance(event, Check) and event.preview is None:
            original = dataclasses.replace(original, preview=None)
        assert event == original
    last_check = [event for event in resumed if isinstance(event, Check)][-1]
    assert last_check.preview is not None
    missing = [event for seq, event in expected.items() if seq not in seqs]
    assert all(isinstance(event, Progress) for event in missing)
    assert isinstance(resumed[-1], Finished)


@pytest.mark.parametrize(
    "limits",
    [
        ServiceLimits(outbox_size=8, send_timeout=60.0),  # its outbox overflows
        ServiceLimits(outbox_size=4096, send_timeout=0.5),  # a send waits too long
        # The same two on the ASGI send path (every frame through the connection's task).
        ServiceLimits(outbox_size=8, send_timeout=60.0, write_through=False),
        ServiceLimits(outbox_size=4096, send_timeout=0.5, write_through=False),
    ],
    ids=["overflow", "send_timeout", "overflow-asgi", "send_timeout-asgi"],
)
async def test_a_watcher_that_stops_reading_is_dropped_and_can_resume(
    tmp_path: Path,
    served_model: LoadedModel,
    large_preview_model: LoadedModel,
    limits: ServiceLimits,
) -> None:
    config = ServerConfig(data_dir=tmp_path, limits=limits)
    models = [served_model, large_preview_model]
    async with running_server(config, lambda c: models, send_buffer=4096) as server:
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", server.port))
        async with (
            connect(server.url) as owner,
            connect(server.url) as watcher,
            connect(server.url, sock=stalled, max_queue=1) as slow,
        ):
            accepted = await owner.start(**LARGE_FRAMES)
            for client in (watcher, slow):
                await client.send(Subscribe(accepted.run_id))
            reference, watched = await collect((owner, accepted.run_id), (watcher, accepted.run_id))
            # Only now does the slow client read: what reached it, then the reason it was cut.
            received: list[ServerMessage] = []
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    received.append(await slow.recv())
    assert reference == watched
    assert isinstance(reference[-1], Finished) and reference[-1].steps_run == 40
    # The close frame and the error reach the client only if its connection can still take
    # them by the time the server gives up on it (a second); either way it is cut off.
    close = closed.value.rcvd
    assert close is None or (close.code, close.reason) == (1008, "slow_consumer")
    errors = [message for message in received if isinstance(message, Error)]
    assert all(error.code is ErrorCode.SLOW_CONSUMER for error in errors)
    seen = [message for message in received if isinstance(message, RunEvent)]
    assert seen and not isinstance(seen[-1], Finished)
    async with running_server(config, lambda c: models) as server:
        resume = ResumePoint(accepted.run_id, seen[-1].seq)
        async with connect(server.url, resume=[resume]) as back:
            subscribed = await back.expect(Subscribed)
            resumed = await back.run_events(accepted.run_id)
    assert (subscribed.state, subscribed.last_seq) == ("finished", reference[-1].seq)
    assert_resumed(resumed, reference, seen[-1].seq)
    assert resumed[-1] == reference[-1]  # the image came back from the store


async def test_a_client_that_reconnects_mid_run_gets_what_it_missed_and_keeps_steering(
    tmp_path: Path,
    served_model: LoadedModel,
    scripted: ScriptedEngine,
) -> None:
    async with running_server(
        ServerConfig(data_dir=tmp_path), lambda c: [served_model], sampler=scripted
    ) as server:
        async with connect(server.url) as watcher:
            async with connect(server.url) as owner:
                accepted = await owner.start(
                    prompt="red circle", steps=400, check_interval=2, early_stop=False
                )
                await watcher.send(Subscribe(accepted.run_id))
                await owner.event(accepted.run_id, Check)
                before = owner.seen[accepted.run_id]
            # The owner's connection is gone; the run goes on.
            await watcher.event(accepted.run_id, Check)
            await watcher.event(accepted.run_id, Check)
            resume = ResumePoint(accepted.run_id, before[-1].seq)
            async with connect(server.url, resume=[resume]) as owner:
                subscribed = await owner.expect(Subscribed)
                assert subscribed.state == "running" and subscribed.last_seq > resume.after_seq
                await owner.event(accepted.run_id, Check)
                await owner.send(Stop("halt", accepted.run_id, accepted.control_token))
                resumed = await owner.run_events(accepted.run_id)
            reference = await watcher.run_events(accepted.run_id)
    assert_resumed(resumed, reference, resume.after_seq)
    finished = reference[-1]
    assert isinstance(finished, Finished) and finished.reason == "stopped"
    assert [event.seq for event in before] == list(range(1, len(before) + 1))


async def test_a_run_nobody_attaches_to_is_abandoned(
    tmp_path: Path,
    served_model: LoadedModel,
    scripted: ScriptedEngine,
) -> None:
    config = ServerConfig(data_dir=tmp_path, limits=ServiceLimits(abandon_grace=1.0))
    async with running_server(config, lambda c: [served_model], sampler=scripted) as server:
        async with connect(server.url) as owner:
            left = await owner.start("a", prompt="red circle", steps=400, early_stop=False)
            kept = await owner.start("b", prompt="red circle", steps=6)
            await owner.event(left.run_id, Progress)
        # Nobody is attached to either run now; a watcher comes back for the second in time.
        async with connect(server.url) as watcher:
            await watcher.send(Subscribe(kept.run_id))
            kept_events = await watcher.run_events(kept.run_id)
            # The second run waited for the first, which ended before it started.
            await watcher.send(Subscribe(left.run_id))
            left_events = await watcher.run_events(left.run_id)
    left_finished = left_events[-1]
    assert isinstance(left_finished, Finished)
    assert left_finished.reason == "abandoned" and 0 < left_finished.steps_run < 400
    assert left_finished.image is not None
    finished = kept_events[-1]
    assert isinstance(finished, Finished) and finished.reason in ("completed", "early_stop")


async def test_connections_send_each_event_at_once_without_nagle(
    tmp_path: Path, served_model: LoadedModel
) -> None:
    # With Nagle's algorithm on, an event written right after another waits for the client's
    # delayed ACK (about 40 ms on Linux): an applied right after a progress arrived late.
    config = ServerConfig(data_dir=tmp_path)
    async with running_server(config, lambda _config: [served_model]) as server:
        assert server.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
