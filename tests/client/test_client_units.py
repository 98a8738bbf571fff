"""The client's parts that need no server: backoff, de-duplication, results, rendering, errors."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
from pathlib import Path

import pytest
from PIL import Image as PILImage
from rich.console import Console

from stepwatch.client import (
    Backoff,
    Check,
    ConnectionFailed,
    ErrorCode,
    Finished,
    Progress,
    Refused,
    Run,
    RunFailed,
    RunHandle,
    RunOptions,
    StepwatchError,
    open_image,
)
from stepwatch.client.commands import (
    explain,
    option_name,
    run_options,
    search_arguments,
    search_settings,
)
from stepwatch.client.history import RunSummary, http_base
from stepwatch.client.render import JsonView, LiveView, runs_table
from stepwatch.client.runs import Result
from stepwatch.protocol import (
    Adjusted,
    Applied,
    HistoryEntry,
    Image,
    Preview,
    RunError,
    RunEvent,
    RunParameters,
    SearchSettings,
    Set,
    SettingChange,
    Start,
    Started,
    Stop,
)

pytestmark = pytest.mark.anyio


def png(width: int = 8, height: int = 8, colour: str = "red") -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def progress(seq: int, step: int | None = None) -> Progress:
    return Progress(run_id="r-1", seq=seq, step=step or seq, total=10, elapsed=0.1, eta=1.0)


def finished(seq: int, reason: str = "completed", error: RunError | None = None) -> Finished:
    entry = HistoryEntry(
        step=5,
        score=0.5,
        components={"edges": 0.4},
        decision="continue",
        cfg=3.0,
        threshold=0.7,
        elapsed=0.2,
    )
    image = None if error is not None else Image(width=8, height=8, data=png())
    return Finished(
        run_id="r-1",
        seq=seq,
        reason=reason,
        steps_run=5,
        elapsed=0.3,  # type: ignore[arg-type]
        final_score=0.5,
        history=(entry,),
        image=image,
        error=error,
    )


async def collect(handle: RunHandle) -> list[int]:
    return [event.seq async for event in handle]


# Backoff.


def test_backoff_grows_to_its_cap_with_jitter_between_half_and_all() -> None:
    low = Backoff(initial=0.1, factor=2.0, cap=1.0, random=lambda: 0.0)
    high = Backoff(initial=0.1, factor=2.0, cap=1.0, random=lambda: 1.0)
    assert [low.delay(n) for n in range(6)] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.5, 0.5])
    assert [high.delay(n) for n in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert high.delay(10_000) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "settings", [{"initial": 0.0}, {"factor": 0.5}, {"initial": 2.0, "cap": 1.0}]
)
def test_backoff_refuses_settings_that_never_wait_or_shrink(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(**settings)


# Run handles.


async def test_a_handle_yields_each_seq_once_in_order_and_ends_after_finished() -> None:
    handle = RunHandle("r-1")
    for event in (progress(1), progress(2), progress(2), progress(1), progress(4), finished(5)):
        handle._deliver(event)
    handle._deliver(progress(6))  # nothing follows finished
    assert await collect(handle) == [1, 2, 4, 5]
    assert handle.duplicates == 3
    assert await collect(handle) == []


async def test_a_watch_from_a_seq_drops_what_came_before() -> None:
    handle = RunHandle("r-1", after_seq=3)
    for seq in (1, 2, 3, 4):
        handle._deliver(progress(seq))
    handle._deliver(finished(5))
    assert await collect(handle) == [4, 5]


async def test_result_is_ready_before_the_events_are_iterated() -> None:
    handle = RunHandle("r-1")
    handle._deliver(progress(1))
    handle._deliver(finished(2))
    result = await handle.result()
    assert result.reason == "completed"
    assert result.steps_run == 5
    assert result.png is not None and result.image() is not None
    assert await collect(handle) == [1, 2]


async def test_a_failed_run_is_iterated_to_its_end_but_result_raises_run_failed() -> None:
    handle = RunHandle("r-1")
    handle._deliver(finished(1, "failed", RunError(ErrorCode.INTERNAL, "boom")))
    assert await collect(handle) == [1]
    with pytest.raises(RunFailed) as caught:
        await handle.result()
    assert caught.value.code is ErrorCode.INTERNAL
    assert caught.value.result.history[0].score == 0.5
    assert "boom" in str(caught.value)


async def test_a_failed_handle_raises_the_session_error_after_its_events() -> None:
    handle = RunHandle("r-1")
    handle._deliver(progress(1))
    handle._fail(ConnectionFailed("gone"))
    handle._fail(ConnectionFailed("twice"))  # the first error stands
    seen: list[int] = []
    with pytest.raises(ConnectionFailed, match="gone"):
        async for event in handle:
            seen.append(event.seq)
    assert seen == [1]
    with pytest.raises(ConnectionFailed, match="gone"):
        await anext(handle)
    with pytest.raises(ConnectionFailed, match="gone"):
        await handle.result()


async def test_failing_a_finished_handle_changes_nothing() -> None:
    handle = RunHandle("r-1")
    handle._deliver(finished(1))
    handle._fail(ConnectionFailed("late"))
    assert (await handle.result()).reason == "completed"
    assert await collect(handle) == [1]


class RecordingSteering:
    """The :class:`~stepwatch.client.runs.Steering` interface, answering every request."""

    def __init__(self) -> None:
        self.sent: list[Stop | Set] = []

    def next_request_id(self) -> str:
        return f"q{len(self.sent) + 1}"

    async def steer(self, request: Stop | Set) -> Applied:
        self.sent.append(request)
        return Applied(
            run_id=request.run_id,
            seq=9,
            request_id=request.request_id,
            step=3,
            changes=(),
            stop="finish" if isinstance(request, Stop) else None,
        )


async def test_run_steering_presents_the_control_token() -> None:
    steering = RecordingSteering()
    run = Run("r-1", "t" * 16, 0, steering)
    applied = await run.stop()
    assert applied.stop == "finish"
    assert steering.sent == [Stop(request_id="q1", run_id="r-1", token="t" * 16, mode="finish")]


async def test_a_set_of_nothing_is_refused_before_sending() -> None:
    steering = RecordingSteering()
    run = Run("r-1", "t" * 16, 0, steering)
    with pytest.raises(Refused) as caught:
        await run.set()
    assert caught.value.code is ErrorCode.INVALID_MESSAGE
    assert caught.value.by_server is False
    assert steering.sent == []


def test_result_save_writes_the_png_or_reports_there_is_none(tmp_path: Path) -> None:
    result = Result.from_finished(finished(1), None)
    path = tmp_path / "out.png"
    assert result.save(path)
    assert open_image(path.read_bytes()).size == (8, 8)
    empty = dataclasses.replace(result, png=None)
    assert empty.image() is None
    assert not empty.save(tmp_path / "none.png")


def test_open_image_reads_previews_images_and_bytes() -> None:
    data = png(4, 2)
    preview = Preview(format="png", width=4, height=2, data=data)
    assert open_image(preview).size == (4, 2)
    assert open_image(Image(width=8, height=8, data=png())).size == (8, 8)
    assert open_image(data).size == (4, 2)


# Options, rendering, errors.


def test_run_options_are_the_fields_of_start_besides_request_and_prompt() -> None:
    start_fields = {item.name for item in dataclasses.fields(Start)}
    assert set(RunOptions.__annotations__) == start_fields - {"request_id", "prompt"}


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("ws://127.0.0.1:8765/ws", "http://127.0.0.1:8765"),
        ("wss://example.org/stepwatch/ws/", "https://example.org/stepwatch"),
        ("http://host:1", "http://host:1"),
    ],
)
def test_http_base_follows_the_websocket_url(url: str, base: str) -> None:
    assert http_base(url) == base


def test_http_base_refuses_what_is_no_server_url() -> None:
    with pytest.raises(ConnectionFailed, match="not a server URL"):
        http_base("ftp://host/ws")


def test_a_run_summary_must_have_its_fields() -> None:
    item = {
        "run_id": "r-1",
        "state": "finished",
        "model": "m",
        "prompt": "red circle",
        "reason": "completed",
        "steps_run": 4,
        "final_score": 1,
        "created_at": 10.5,
        "finished_at": None,
    }
    assert RunSummary.from_json(item).final_score == 1.0
    with pytest.raises(StepwatchError, match="run summary"):
        RunSummary.from_json({**item, "steps_run": "4"})
    with pytest.raises(StepwatchError, match="run summary"):
        RunSummary.from_json([item])


def arguments(**values: object) -> argparse.Namespace:
    return argparse.Namespace(**values)


def test_options_name_the_flags_a_user_typed() -> None:
    assert option_name("quality_threshold") == "--threshold"
    assert option_name("check_interval") == "--check-interval"
    given = arguments(
        model=None,
        negative_prompt=None,
        steps=4,
        cfg=None,
        seed=1,
        sampler=None,
        scheduler=None,
        width=None,
        height=None,
        verifier="simple",
        preview_decoder="vae",
        check_interval=None,
        quality_threshold=0.5,
        scale_factor=None,
        patience=None,
        cfg_max=None,
        min_steps=None,
        early_stop=False,
    )
    assert run_options(given) == {
        "steps": 4,
        "seed": 1,
        "verifier": "simple",
        "preview_decoder": "vae",
        "quality_threshold": 0.5,
        "early_stop": False,
    }


def refusal(code: ErrorCode, field: str | None = None) -> Refused:
    return Refused(code, "out of range", field=field)


@pytest.mark.parametrize(
    ("error", "token", "line"),
    [
        (refusal(ErrorCode.UNAUTHORIZED), None, "the server requires an API token"),
        (refusal(ErrorCode.UNAUTHORIZED), "x", "the server refused the API token"),
        (refusal(ErrorCode.INVALID_VALUE, "steps"), None, "invalid --steps: out of range"),
        (refusal(ErrorCode.INVALID_VALUE, "quality_threshold"), None, "invalid --threshold"),
        (refusal(ErrorCode.INVALID_PROMPT), None, "invalid prompt: out of range"),
        (refusal(ErrorCode.QUEUE_FULL), None, "refused (queue_full): out of range"),
        (ConnectionFailed("cannot reach it"), None, "cannot reach it"),
    ],
)
def test_errors_explain_themselves_in_one_line(
    error: StepwatchError, token: str | None, line: str
) -> None:
    text = explain(error, arguments(token=token))
    assert line in text
    assert "\n" not in text


# The command line's views, drawn into a string.


def parameters() -> RunParameters:
    return RunParameters(
        model="tiny", prompt="a rather long prompt about a red circle", negative_prompt="",
        seed=1, steps=10, cfg=3.0, sampler="euler", scheduler="normal", width=32, height=32,
        verifier="simple", check_interval=5, quality_threshold=0.7, scale_factor=1.25,
        cfg_max=9.0, early_stop=True, patience=2, min_steps=0, preview_size=0,
        preview_format="webp",
    )  # fmt: skip


def a_whole_run() -> list[RunEvent]:
    return [
        Started(run_id="r-1", seq=1, parameters=parameters()),
        progress(2, step=1),
        Check(
            run_id="r-1", seq=3, step=5, score=0.25, components={}, threshold=0.7,
            decision="raise_cfg", reason="low", cfg=3.0, preview=None,
        ),
        Adjusted(run_id="r-1", seq=4, step=5, setting="cfg", old=3.0, new=3.75, reason="low"),
        Applied(
            run_id="r-1", seq=5, request_id="q2", step=6, stop=None,
            changes=(SettingChange("quality_threshold", 0.7, 0.5),),
        ),
        Applied(run_id="r-1", seq=6, request_id="q3", step=7, changes=(), stop="finish"),
        finished(7, "stopped"),
    ]  # fmt: skip


def test_the_live_view_logs_checks_adjustments_and_acknowledgements() -> None:
    text = io.StringIO()
    console = Console(file=text, width=120, force_terminal=False, color_system=None)
    with LiveView(console) as view:
        view.accepted(RunHandle("r-1"), 2)
        for event in a_whole_run():
            view.show(event)
        view.note("stopping [now]")
    lines = text.getvalue().splitlines()
    assert lines[0] == "run r-1 (queue position 2)"
    assert "step    5  score 0.250 < 0.70  cfg 3.00  raise_cfg" in lines
    assert "step    5  cfg 3 → 3.75" in lines
    assert "step    6  applied: quality_threshold 0.7 → 0.5" in lines
    assert "step    7  applied: stop (finish)" in lines
    assert "stopped after 5 steps, 0.3 s, final score 0.500" in lines
    assert "stopping [now]" in lines


def test_the_json_view_writes_one_object_per_line() -> None:
    out, notes = io.StringIO(), io.StringIO()
    view = JsonView(out, Console(file=notes, force_terminal=False))
    view.accepted(Run("r-1", "t" * 16, 0, RecordingSteering()), 0)
    for event in a_whole_run():
        view.show(event)
    view.note("a remark")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0] == {"type": "accepted", "run_id": "r-1", "queue_position": 0}
    assert [line["type"] for line in lines[1:]] == [
        "started", "progress", "check", "adjusted", "applied", "applied", "finished",
    ]  # fmt: skip
    assert notes.getvalue() == "a remark\n"


def test_the_runs_table_shows_reason_or_state() -> None:
    finished_run = RunSummary("r-1", "finished", "tiny", "red circle", "completed", 6, 0.8125,
                              0.0, 1.0)  # fmt: skip
    running = RunSummary("r-2", "running", "tiny", "blue", None, None, None, None, None)
    text = io.StringIO()
    Console(file=text, width=100, force_terminal=False).print(runs_table([finished_run, running]))
    rows = text.getvalue().splitlines()
    assert any("r-1" in row and "completed" in row and "0.812" in row for row in rows)
    assert any("r-2" in row and "running" in row for row in rows)


def test_search_options_make_search_settings_with_a_prune_schedule() -> None:
    parser = argparse.ArgumentParser()
    search_arguments(parser)
    args = parser.parse_args(["--search", "prune", "--keep-top", "1", "--prune-steps", "3,5"])
    assert search_settings(args) == SearchSettings("prune", keep_top=1, prune_steps=(3, 5))
    assert search_settings(parser.parse_args([])) is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--prune-steps", "3,x"])
