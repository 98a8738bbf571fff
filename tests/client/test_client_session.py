"""The client library against a real server on loopback: runs, steering, watching, errors."""

from __future__ import annotations

import asyncio
import socket

import pytest
from conftest import API_TOKEN

from stepwatch.client import (
    Adjusted,
    Applied,
    Check,
    ConnectionFailed,
    ErrorCode,
    Finished,
    Progress,
    Refused,
    RunEvent,
    RunHandle,
    Started,
    connect,
    list_runs,
)
from stepwatch.server.harness import ServerThread

pytestmark = pytest.mark.anyio

#: A run that neither stops early nor reaches its end before a test stops it.
LONG = {"steps": 400, "check_interval": 2, "early_stop": False, "seed": 1}
#: A short run that goes to its last step.
SHORT = {"steps": 6, "check_interval": 2, "early_stop": False, "seed": 2}


async def events_of(handle: RunHandle) -> list[RunEvent]:
    return [event async for event in handle]


def assert_one_run(events: list[RunEvent], run_id: str) -> None:
    """Started first, finished last, every seq once and rising, all of one run."""
    seqs = [event.seq for event in events]
    assert seqs == sorted(set(seqs))
    assert isinstance(events[0], Started) and isinstance(events[-1], Finished)
    assert {event.run_id for event in events} == {run_id}


async def test_a_run_goes_to_its_end_and_gives_its_image(server: ServerThread) -> None:
    async with connect(server.url) as sw:
        assert [model.id for model in sw.models] == ["tiny"]
        assert "simple" in {verifier.id for verifier in sw.verifiers}
        assert {"resume", "steer"} <= sw.capabilities
        assert sw.limits["max_steps"] >= 6
        run = await sw.generate("red circle", **SHORT)
        events = await events_of(run)
        result = await run.result()
    assert_one_run(events, run.run_id)
    checks = [event for event in events if isinstance(event, Check)]
    assert [check.step for check in checks] == [2, 4, 6]
    assert all(check.preview is not None for check in checks)
    assert result.reason == "completed" and result.steps_run == 6
    assert [entry.step for entry in result.history] == [2, 4, 6]
    assert result.parameters is not None and result.parameters.seed == 2
    image = result.image()
    assert image is not None and image.size == (32, 32)


async def test_stop_is_acknowledged_and_the_run_keeps_that_steps_image(
    server: ServerThread,
) -> None:
    async with connect(server.url) as sw:
        run = await sw.generate("blue square", **LONG)
        seen: list[RunEvent] = []
        async for event in run:
            seen.append(event)
            if isinstance(event, Check):
                applied = await run.stop()
                break
        seen += await events_of(run)
        result = await run.result()
    assert applied.stop == "finish" and applied.changes == ()
    assert applied in seen
    assert result.reason == "stopped"
    # Mode finish: a short tail of at most 8 steps finishes the image cleanly.
    assert 2 <= applied.step < result.steps_run <= applied.step + 8 < LONG["steps"]
    assert result.png is not None


async def test_set_changes_threshold_and_cfg_from_the_step_it_reports(
    server: ServerThread,
) -> None:
    async with connect(server.url) as sw:
        # scale_factor 1: the policy never raises CFG itself (the tiny model's noise previews
        # score below any threshold), so every CFG change here is the set's.
        run = await sw.generate("red circle", cfg=3.0, scale_factor=1.0, **LONG)
        first = None
        async for event in run:
            if isinstance(event, Check):
                first = event
                break
        applied = await run.set(quality_threshold=0.25, cfg=5.0)
        later: list[Check] = []
        async for event in run:
            if isinstance(event, Check) and event.step > applied.step:
                later.append(event)
                if len(later) == 2:
                    break
        await run.stop(mode="abort")
        result = await run.result()
    assert first is not None and first.threshold != 0.25
    changes = {change.setting: (change.old, change.new) for change in applied.changes}
    assert changes == {"quality_threshold": (first.threshold, 0.25), "cfg": (first.cfg, 5.0)}
    assert applied.stop is None and applied.step >= first.step
    assert all(check.threshold == 0.25 and check.cfg == 5.0 for check in later)
    assert result.reason == "stopped" and result.png is None


async def test_a_set_out_of_range_is_refused_naming_its_field(server: ServerThread) -> None:
    async with connect(server.url) as sw:
        run = await sw.generate("red circle", **LONG)
        with pytest.raises(Refused) as caught:
            await run.set(cfg=99.0)
        await run.stop(mode="abort")
        await run.result()
        with pytest.raises(Refused) as late:
            await run.stop()
    assert caught.value.code is ErrorCode.INVALID_VALUE and caught.value.field == "cfg"
    assert late.value.code is ErrorCode.RUN_FINISHED and late.value.by_server


async def test_two_runs_on_one_connection_are_iterated_independently(
    server: ServerThread,
) -> None:
    async with connect(server.url) as sw:
        first = await sw.generate("red circle", **SHORT)
        second = await sw.generate("green triangle", **SHORT)
        # The second is drained first: its events do not wait for the first's.
        second_events = await events_of(second)
        first_events = await events_of(first)
    assert first.run_id != second.run_id
    assert_one_run(first_events, first.run_id)
    assert_one_run(second_events, second.run_id)
    first_started, second_started = first_events[0], second_events[0]
    assert isinstance(first_started, Started) and isinstance(second_started, Started)
    assert first_started.parameters.prompt == "red circle"
    assert second_started.parameters.prompt == "green triangle"


async def test_a_second_client_watching_sees_the_same_checks(server: ServerThread) -> None:
    async with connect(server.url) as owner, connect(server.url) as watcher:
        run = await owner.generate("red circle", **{**SHORT, "steps": 10})
        watched = await watcher.watch(run.run_id)
        owner_events, watcher_events = await asyncio.gather(events_of(run), events_of(watched))
        again = await watcher.watch(run.run_id, after_seq=3)
        replayed = await events_of(again)
    assert_one_run(watcher_events, run.run_id)

    def checks(events: list[RunEvent]) -> list[tuple[int, int, float]]:
        return [(e.seq, e.step, e.score) for e in events if isinstance(e, Check)]

    assert checks(watcher_events) == checks(owner_events)
    assert len(checks(owner_events)) == 5
    assert replayed[0].seq > 3 and replayed[-1] == watcher_events[-1]
    assert not hasattr(watched, "stop")


async def test_watching_an_unknown_run_is_refused(server: ServerThread) -> None:
    async with connect(server.url) as sw:
        with pytest.raises(Refused) as caught:
            await sw.watch("no-such-run")
    assert caught.value.code is ErrorCode.UNKNOWN_RUN
    assert caught.value.run_id == "no-such-run"


async def test_bad_requests_are_refused_with_code_and_field(server: ServerThread) -> None:
    async with connect(server.url) as sw:
        with pytest.raises(Refused) as unknown_model:
            await sw.generate("red circle", model="nope")
        with pytest.raises(Refused) as unknown_verifier:
            await sw.generate("red circle", verifier="nope")
        with pytest.raises(Refused) as bad_steps:
            await sw.generate("red circle", steps=0)
        with pytest.raises(Refused) as bad_size:
            await sw.generate("red circle", width=36)
        # The session is still good for a run after all that.
        run = await sw.generate("red circle", **SHORT)
        assert (await run.result()).reason == "completed"
    assert unknown_model.value.code is ErrorCode.UNKNOWN_MODEL
    assert unknown_model.value.by_server and unknown_model.value.request_id is not None
    assert unknown_verifier.value.code is ErrorCode.UNKNOWN_VERIFIER
    assert (bad_steps.value.code, bad_steps.value.field) == (ErrorCode.INVALID_VALUE, "steps")
    assert not bad_steps.value.by_server  # the client's own check, before sending
    assert (bad_size.value.code, bad_size.value.field) == (ErrorCode.INVALID_VALUE, "width")
    assert bad_size.value.by_server


async def test_a_server_with_a_token_refuses_a_wrong_one(guarded_server: ServerThread) -> None:
    for token in (None, "wrong-token"):
        with pytest.raises(Refused) as caught:
            async with connect(guarded_server.url, token=token):
                pass  # pragma: no cover - connect raises
        assert caught.value.code is ErrorCode.UNAUTHORIZED
    async with connect(guarded_server.url, token=API_TOKEN) as sw:
        run = await sw.generate("red circle", **SHORT)
        assert (await run.result()).reason == "completed"
    with pytest.raises(Refused) as http:
        await list_runs(guarded_server.url)
    assert http.value.code is ErrorCode.UNAUTHORIZED
    assert any(s.run_id == run.run_id for s in await list_runs(guarded_server.url, token=API_TOKEN))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_an_unreachable_server_fails_at_once() -> None:
    with pytest.raises(ConnectionFailed, match="cannot reach") as caught:
        async with connect(f"ws://127.0.0.1:{closed_port()}/ws"):
            pass  # pragma: no cover - connect raises
    assert caught.value.__cause__ is not None


async def test_a_url_that_is_no_stepwatch_endpoint_fails_the_handshake(
    server: ServerThread,
) -> None:
    with pytest.raises(ConnectionFailed, match=r"refused the WebSocket handshake \(HTTP 4"):
        async with connect(f"ws://127.0.0.1:{server.port}/not-ws"):
            pass  # pragma: no cover - connect raises
    with pytest.raises(ConnectionFailed, match="not a WebSocket URL"):
        async with connect("http://127.0.0.1/ws"):
            pass  # pragma: no cover - connect raises


async def test_the_history_lists_finished_runs(server: ServerThread) -> None:
    async with connect(server.url) as sw:
        run = await sw.generate("red circle", **SHORT)
        result = await run.result()
    summaries = await list_runs(server.url, limit=200)
    summary = next(s for s in summaries if s.run_id == run.run_id)
    assert (summary.state, summary.reason, summary.prompt) == (
        "finished",
        "completed",
        "red circle",
    )
    assert summary.steps_run == 6 and summary.final_score == pytest.approx(result.final_score)


async def test_event_types_cover_the_protocol(server: ServerThread) -> None:
    """Progress every step, an adjustment when quality is low: the union is re-exported."""
    async with connect(server.url) as sw:
        run = await sw.generate(
            "red circle", quality_threshold=1.0, scale_factor=2.0, cfg=2.0, **SHORT
        )
        events = await events_of(run)
    kinds = {type(event) for event in events}
    assert {Started, Progress, Check, Adjusted, Finished} <= kinds
    assert Applied not in kinds


async def test_watching_a_run_the_session_owns_sees_it_whole_on_both_handles(
    server: ServerThread,
) -> None:
    async with connect(server.url) as sw:
        run = await sw.generate("red circle", **{**SHORT, "steps": 10})
        first = await anext(run)
        watched = await sw.watch(run.run_id)
        owned_events, watched_events = await asyncio.gather(events_of(run), events_of(watched))
    owned_events.insert(0, first)
    assert_one_run(owned_events, run.run_id)
    assert_one_run(watched_events, run.run_id)
    assert lasting(owned_events) == lasting(watched_events)


def lasting(events: list[RunEvent]) -> list[tuple[int, str]]:
    """The events a replay never leaves out (all but progress), by seq and type."""
    return [(e.seq, type(e).__name__) for e in events if not isinstance(e, Progress)]
