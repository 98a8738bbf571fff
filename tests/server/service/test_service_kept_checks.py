"""A running run is kept as it goes: every check a watcher saw survives a SIGKILL of
``stepwatch serve``, and every check's thumbnail can be fetched later over HTTP, whoever asks
and whenever (a late watcher's replay collapses previews; the HTTP API does not)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
from pathlib import Path

import anyio
import pytest
from servertools import connect, running_server
from test_service_store import (  # noqa: F401 (fixtures)
    get,
    get_json,
    listening_port,
    saved_pipeline,
    serve_process,
)

from stepwatch.protocol import Check, Finished, Started, Subscribe, Subscribed
from stepwatch.server.config import ServerConfig
from stepwatch.server.engine.model import LoadedModel
from stepwatch.server.store import INTERRUPTED

pytestmark = pytest.mark.anyio


def stored_state(data_dir: Path, run_id: str) -> str:
    with sqlite3.connect(data_dir / "stepwatch.sqlite3") as db:
        (state,) = db.execute("SELECT state FROM runs WHERE run_id=?", (run_id,)).fetchone()
    return str(state)


async def test_a_killed_servers_running_run_keeps_every_check_and_thumbnail_seen(
    tmp_path: Path,
    serve_process: subprocess.Popen[str],  # noqa: F811
    served_model: LoadedModel,
) -> None:
    port = await listening_port(serve_process)
    base = f"http://127.0.0.1:{port}"
    async with connect(f"ws://127.0.0.1:{port}/ws") as owner:
        accepted = await owner.start(prompt="red circle", steps=1000, check_interval=2)
        run_id = accepted.run_id
        for _ in range(3):
            await owner.event(run_id, Check)
        # A late watcher's replay collapses the previews of all checks but the last ...
        async with connect(f"ws://127.0.0.1:{port}/ws") as watcher:
            await watcher.send(Subscribe(run_id))
            await watcher.expect(Subscribed)
            late = [await watcher.event(run_id, Check) for _ in range(3)]
        assert [check.preview is None for check in late][:2] == [True, True]
        # ... and the HTTP API serves every thumbnail kept so far, the running run's too.
        listed = (await get_json(f"{base}/api/runs/{run_id}/previews", token=None))["previews"]
        assert [item["step"] for item in listed][:3] == [check.step for check in late]
        assert stored_state(tmp_path, run_id) == "running"
        serve_process.send_signal(signal.SIGKILL)
        await anyio.to_thread.run_sync(lambda: serve_process.wait(timeout=60))
    seen = [event for event in owner.seen[run_id] if isinstance(event, Check)]
    assert len(seen) >= 3 and all(check.preview is not None for check in seen)

    # The restarted server marks the run failed, and keeps every check seen and its thumbnail.
    config = ServerConfig(data_dir=tmp_path)
    async with running_server(config, lambda c: [served_model]) as server:
        record = await get_json(f"{server.http}/api/runs/{run_id}", token=None)
        assert (record["state"], record["reason"]) == ("finished", "failed")
        assert record["error"]["message"] == INTERRUPTED
        steps = [entry["step"] for entry in record["history"]]
        assert steps[: len(seen)] == [check.step for check in seen]
        assert len(steps) <= len(seen) + 1  # a crash loses at most what was not yet sent
        assert [entry["score"] for entry in record["history"]][: len(seen)] == [
            check.score for check in seen
        ]
        assert record["steps_run"] == steps[-1]
        listed = (await get_json(f"{server.http}/api/runs/{run_id}/previews", token=None))[
            "previews"
        ]
        assert [item["step"] for item in listed] == steps
        for check in seen:
            assert check.preview is not None
            found = await get(f"{server.http}/api/runs/{run_id}/previews/{check.step}")
            assert found == (200, check.preview.data, f"image/{check.preview.format}")
        status, _, _ = await get(f"{server.http}/api/runs/{run_id}/previews/1")
        assert status == 404

        # A replay tells the same story: the parameters, the checks, and a `finished` whose
        # history holds them.
        async with connect(server.url) as client:
            await client.send(Subscribe(run_id))
            subscribed = await client.expect(Subscribed)
            assert subscribed.state == "finished"
            replayed = await client.run_events(run_id)
        assert isinstance(replayed[0], Started)
        assert replayed[0].parameters.prompt == "red circle"
        checks = [event for event in replayed if isinstance(event, Check)]
        assert [check.step for check in checks] == steps
        finished = replayed[-1]
        assert isinstance(finished, Finished) and finished.seq == subscribed.last_seq
        assert (finished.reason, finished.steps_run) == ("failed", steps[-1])
        assert [entry.step for entry in finished.history] == steps


async def test_a_finished_runs_thumbnails_are_all_served(
    tmp_path: Path, served_model: LoadedModel
) -> None:
    config = ServerConfig(data_dir=tmp_path)
    async with running_server(config, lambda c: [served_model]) as server:
        async with connect(server.url) as client:
            accepted = await client.start(prompt="blue square", steps=12, check_interval=3)
            events = await client.run_events(accepted.run_id)
        checks = [event for event in events if isinstance(event, Check)]
        assert checks and all(check.preview is not None for check in checks)
        base = f"{server.http}/api/runs/{accepted.run_id}/previews"
        listed = (await get_json(base, token=None))["previews"]
        assert [(item["step"], item["seq"]) for item in listed] == [
            (check.step, check.seq) for check in checks
        ]
        for item, check in zip(listed, checks, strict=True):
            assert check.preview is not None
            assert (item["width"], item["height"]) == (check.preview.width, check.preview.height)
            assert (await get(server.http + item["url"]))[1] == check.preview.data
        # Nothing is kept for a run the store does not know.
        assert (await get_json(f"{server.http}/api/runs/nothing/previews", token=None)) == {
            "previews": []
        }
