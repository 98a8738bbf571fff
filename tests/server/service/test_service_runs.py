"""Runs through the real service: event order and numbering, several runs, many watchers,
steering with and without the control token, the queue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from scripted_engine import ScriptedEngine
from servertools import connect, running_server
from websockets.exceptions import ConnectionClosed

from stepwatch.protocol import (
    Adjusted,
    Applied,
    Check,
    Error,
    ErrorCode,
    Finished,
    Progress,
    RunEvent,
    Set,
    Start,
    Started,
    Stop,
    Subscribe,
    Subscribed,
)
from stepwatch.server.config import ServerConfig, ServiceLimits
from stepwatch.server.engine.finish import tail_length
from stepwatch.server.engine.model import LoadedModel

pytestmark = pytest.mark.anyio

#: Parameters every run raises CFG with (the threshold is out of reach) and runs to the end.
RAISING: dict[str, Any] = {
    "prompt": "red circle",
    "seed": 5,
    "cfg": 3.0,
    "cfg_max": 12.0,
    "quality_threshold": 1.0,
    "early_stop": False,
    "check_interval": 3,
}
LONG = 400  # steps of a run that a test stops long before its end


def loader(model: LoadedModel):  # type: ignore[no-untyped-def]
    return lambda config: [model]


def assert_numbered(events: list[RunEvent]) -> None:
    """seq runs 1, 2, 3, ... with no gap, starting with started and ending with finished."""
    assert [event.seq for event in events] == list(range(1, len(events) + 1))
    assert isinstance(events[0], Started)
    assert isinstance(events[-1], Finished)
    assert not any(isinstance(event, Started | Finished) for event in events[1:-1])


def small_start(request_id: str) -> Start:
    return Start(request_id=request_id, prompt="red circle", steps=3)


async def test_a_run_reports_every_kind_of_event_in_order(
    tmp_path: Path, served_model: LoadedModel
) -> None:
    async with running_server(ServerConfig(data_dir=tmp_path), loader(served_model)) as server:
        async with connect(server.url) as client:
            accepted = await client.start(steps=40, **RAISING)
            assert accepted.queue_position == 0
            await client.event(accepted.run_id, Check)
            await client.send(
                Set("q2", accepted.run_id, accepted.control_token, quality_threshold=0.99)
            )
            events = await client.run_events(accepted.run_id)
    assert_numbered(events)
    kinds = {type(event) for event in events}
    assert kinds == {Started, Progress, Check, Adjusted, Applied, Finished}
    started = events[0]
    assert isinstance(started, Started) and started.parameters.steps == 40
    steps_done = 0
    for before, event in zip(events, events[1:], strict=False):
        if isinstance(event, Progress):
            assert event.step == steps_done + 1 and event.total == 40
            steps_done = event.step
        if isinstance(event, Check):
            assert event.step == steps_done and event.step % 3 == 0
            assert event.preview is not None and event.preview.format == "jpeg"
        if isinstance(event, Adjusted):
            assert isinstance(before, Check) and before.decision == "raise_cfg"
            assert (event.setting, event.old, event.step) == ("cfg", before.cfg, before.step)
    applied = next(event for event in events if isinstance(event, Applied))
    assert applied.request_id == "q2" and applied.stop is None
    assert [(c.setting, c.old, c.new) for c in applied.changes] == [
        ("quality_threshold", 1.0, 0.99)
    ]
    checks = [event for event in events if isinstance(event, Check)]
    later = [check for check in checks if check.step > applied.step]
    assert later and all(check.threshold == 0.99 for check in later)
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert (finished.reason, finished.steps_run, finished.error) == ("completed", 40, None)
    assert [(h.step, h.score, h.decision) for h in finished.history] == [
        (c.step, c.score, c.decision) for c in checks
    ]
    assert finished.image is not None and finished.image.data.startswith(b"\x89PNG")


async def test_one_connection_runs_two_runs_and_keeps_them_apart(
    tmp_path: Path,
    served_model: LoadedModel,
    scripted: ScriptedEngine,
) -> None:
    async with running_server(
        ServerConfig(data_dir=tmp_path), loader(served_model), sampler=scripted
    ) as server:
        async with connect(server.url) as client:
            one = await client.start("a", prompt="red circle", steps=6, seed=1)
            two = await client.start("b", prompt="blue square", steps=9, seed=2)
            assert two.queue_position == 1  # one sampler: the second waits for the first
            events_two = await client.run_events(two.run_id)
            events_one = await client.run_events(one.run_id)
    assert_numbered(events_one)
    assert_numbered(events_two)
    started_one, started_two = events_one[0], events_two[0]
    assert isinstance(started_one, Started) and isinstance(started_two, Started)
    assert (started_one.parameters.prompt, started_two.parameters.prompt) == (
        "red circle",
        "blue square",
    )
    finished_one, finished_two = events_one[-1], events_two[-1]
    assert isinstance(finished_one, Finished) and isinstance(finished_two, Finished)
    assert finished_one.steps_run <= 6 and finished_two.steps_run <= 9


async def test_twenty_watchers_see_the_same_checks(
    tmp_path: Path, served_model: LoadedModel
) -> None:
    async with running_server(ServerConfig(data_dir=tmp_path), loader(served_model)) as server:
        async with connect(server.url) as owner:
            # A first run holds the sampler, so every watcher subscribes while the run waits.
            blocker = await owner.start("block", prompt="green circle", steps=30)
            accepted = await owner.start(steps=24, **RAISING)
            sequences: list[list[tuple[int, int, float, str]]] = []

            async def watch() -> None:
                async with connect(server.url) as watcher:
                    await watcher.send(Subscribe(accepted.run_id))
                    subscribed = await watcher.expect(Subscribed)
                    assert subscribed.state == "queued" and subscribed.last_seq == 0
                    events = await watcher.run_events(accepted.run_id)
                    assert_numbered(events)
                    sequences.append(
                        [
                            (e.seq, e.step, e.score, e.decision)
                            for e in events
                            if isinstance(e, Check)
                        ]
                    )

            async with anyio.create_task_group() as watchers:
                for _ in range(20):
                    watchers.start_soon(watch)
            own = await owner.run_events(accepted.run_id)
            await owner.run_events(blocker.run_id)
    expected = [(e.seq, e.step, e.score, e.decision) for e in own if isinstance(e, Check)]
    assert len(expected) == 8
    assert sequences == [expected] * 20


async def test_only_the_control_token_steers_and_stop_finishes_with_a_clean_tail(
    tmp_path: Path, served_model: LoadedModel
) -> None:
    async with running_server(ServerConfig(data_dir=tmp_path), loader(served_model)) as server:
        async with connect(server.url) as owner, connect(server.url) as stranger:
            accepted = await owner.start(steps=LONG, **RAISING)
            run_id = accepted.run_id
            await stranger.send(Subscribe(run_id))
            await stranger.expect(Subscribed)
            await owner.event(run_id, Progress)
            wrong = "x" * 32
            await stranger.send(Stop("s1", run_id, wrong))
            await stranger.send(Set("s2", run_id, wrong, cfg=5.0))
            refusals = [await stranger.reply_to("s1"), await stranger.reply_to("s2")]
            for refusal in refusals:
                assert isinstance(refusal, Error)
                assert (refusal.code, refusal.run_id) == (ErrorCode.FORBIDDEN, run_id)
            await owner.send(Set("q2", run_id, accepted.control_token, cfg=5.0))
            changed = await owner.reply_to("q2")
            await owner.send(Stop("q3", run_id, accepted.control_token))
            stopped = await owner.reply_to("q3")
            events = await owner.run_events(run_id)
            seen_by_stranger = await stranger.run_events(run_id)
            await owner.send(Stop("q4", run_id, accepted.control_token))
            too_late = await owner.reply_to("q4")
    assert isinstance(changed, Applied) and changed.changes[0].new == 5.0
    assert isinstance(stopped, Applied) and stopped.stop == "finish"
    assert 1 <= changed.step <= stopped.step < LONG
    finished = events[-1]
    assert isinstance(finished, Finished)
    # A stop in mode finish ends with a short tail of steps to zero noise, and nothing more.
    tail = tail_length(LONG - stopped.step)
    assert finished.reason == "stopped" and finished.steps_run == stopped.step + tail
    assert finished.image is not None
    progress = [event.step for event in events if isinstance(event, Progress)]
    assert progress[-1] == stopped.step + tail
    assert [e.seq for e in seen_by_stranger if isinstance(e, Applied)] == [changed.seq, stopped.seq]
    assert isinstance(too_late, Error) and too_late.code is ErrorCode.RUN_FINISHED


async def test_a_connection_that_steers_without_watching_gets_its_acknowledgement(
    tmp_path: Path,
    served_model: LoadedModel,
    scripted: ScriptedEngine,
) -> None:
    async with running_server(
        ServerConfig(data_dir=tmp_path), loader(served_model), sampler=scripted
    ) as server:
        async with connect(server.url) as owner, connect(server.url) as remote:
            accepted = await owner.start(steps=LONG, **RAISING)
            await owner.event(accepted.run_id, Progress)
            # The token travelled out of band; ``remote`` never subscribed to the run.
            await remote.send(Set("r1", accepted.run_id, accepted.control_token, cfg=4.0))
            changed = await remote.reply_to("r1")
            await remote.send(Stop("r2", accepted.run_id, accepted.control_token))
            stopped = await remote.reply_to("r2")
            events = await owner.run_events(accepted.run_id)
    assert isinstance(changed, Applied) and changed.changes[0].new == 4.0
    assert isinstance(stopped, Applied) and stopped.stop == "finish"
    assert [e.seq for e in events if isinstance(e, Applied)] == [changed.seq, stopped.seq]


async def test_a_full_queue_refuses_and_a_queued_run_stops_without_starting(
    tmp_path: Path,
    served_model: LoadedModel,
    scripted: ScriptedEngine,
) -> None:
    config = ServerConfig(data_dir=tmp_path, limits=ServiceLimits(max_queue=1))
    async with running_server(config, loader(served_model), sampler=scripted) as server:
        async with connect(server.url) as client:
            running = await client.start("a", prompt="red circle", steps=LONG)
            waiting = await client.start("b", prompt="red circle", steps=5)
            assert (running.queue_position, waiting.queue_position) == (0, 1)
            await client.send(small_start("c"))
            refused = await client.reply_to("c")
            assert isinstance(refused, Error) and refused.code is ErrorCode.QUEUE_FULL
            await client.send(Stop("stop-b", waiting.run_id, waiting.control_token, "abort"))
            queued_events = await client.run_events(waiting.run_id)
            await client.send(Stop("stop-a", running.run_id, running.control_token, "abort"))
            running_events = await client.run_events(running.run_id)
    applied, finished = queued_events
    assert isinstance(applied, Applied) and (applied.seq, applied.step) == (1, 0)
    assert applied.request_id == "stop-b" and applied.stop == "abort"
    assert isinstance(finished, Finished) and finished.seq == 2
    assert (finished.reason, finished.steps_run, finished.image) == ("stopped", 0, None)
    last = running_events[-1]
    assert isinstance(last, Finished) and last.reason == "stopped" and last.image is None


async def test_a_connection_may_own_only_so_many_unfinished_runs(
    tmp_path: Path,
    served_model: LoadedModel,
    scripted: ScriptedEngine,
) -> None:
    config = ServerConfig(data_dir=tmp_path, limits=ServiceLimits(max_runs_per_connection=1))
    async with running_server(config, loader(served_model), sampler=scripted) as server:
        async with connect(server.url) as client, connect(server.url) as other:
            accepted = await client.start("a", prompt="red circle", steps=LONG)
            await client.send(small_start("b"))
            refused = await client.reply_to("b")
            assert isinstance(refused, Error) and refused.code is ErrorCode.TOO_MANY_RUNS
            await other.start("c", prompt="red circle", steps=3)  # another connection may
            await client.send(Stop("s", accepted.run_id, accepted.control_token, "abort"))
            await client.run_events(accepted.run_id)
            await client.start("d", prompt="red circle", steps=3)  # and so may this one again


async def test_shutting_down_finishes_running_and_queued_runs_as_shutdown(
    tmp_path: Path,
    served_model: LoadedModel,
    scripted: ScriptedEngine,
) -> None:
    async with running_server(
        ServerConfig(data_dir=tmp_path), loader(served_model), sampler=scripted
    ) as server:
        async with connect(server.url) as client:
            running = await client.start("a", prompt="red circle", steps=LONG)
            queued = await client.start("b", prompt="red circle", steps=5)
            await client.event(running.run_id, Progress)
            server.stop.set()  # what SIGTERM does
            running_events = await client.run_events(running.run_id)
            queued_events = await client.run_events(queued.run_id)
            with pytest.raises(ConnectionClosed) as closed:
                await client.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    last = running_events[-1]
    assert isinstance(last, Finished) and last.reason == "shutdown" and last.image is not None
    (only,) = queued_events
    assert isinstance(only, Finished) and (only.reason, only.seq, only.image) == (
        "shutdown",
        1,
        None,
    )


async def test_the_service_reaches_the_engine_only_through_its_declared_interface(
    tmp_path: Path, served_model: LoadedModel
) -> None:
    engine = ScriptedEngine(scores=(0.25, 0.5, 0.9))
    async with running_server(
        ServerConfig(data_dir=tmp_path), loader(served_model), sampler=engine
    ) as server:
        async with connect(server.url) as client:
            accepted = await client.start(
                "s", prompt="red circle", steps=9, check_interval=3, quality_threshold=0.8,
                min_steps=0, scale_factor=1.0,
            )  # fmt: skip
            events = await client.run_events(accepted.run_id)
    assert engine.runs == 1
    assert [event.seq for event in events] == list(range(1, len(events) + 1))
    assert all(event.run_id == accepted.run_id for event in events)
    checks = [event for event in events if isinstance(event, Check)]
    assert [(c.step, c.score, c.components) for c in checks] == [
        (3, 0.25, {"scripted": 0.25}),
        (6, 0.5, {"scripted": 0.5}),
        (9, 0.9, {"scripted": 0.9}),
    ]
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.reason == "early_stop"
    assert [h.score for h in finished.history] == [0.25, 0.5, 0.9]
