"""What outlives the server: the store across a restart, the HTTP API over it, and a SIGTERM
in the middle of a run of ``stepwatch serve``."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from scripted_engine import ScriptedEngine
from servertools import Client, connect, running_server
from tiny_models import make_sd_pipeline
from websockets.exceptions import ConnectionClosed

from stepwatch.protocol import Check, Finished, Progress, Started, Subscribe, Subscribed
from stepwatch.server.config import ServerConfig
from stepwatch.server.engine.curves import MIN_RUNS
from stepwatch.server.engine.model import LoadedModel, describe_pipeline

pytestmark = pytest.mark.anyio

TOKEN = "a-token-for-the-http-api"


async def get(url: str, token: str | None = None) -> tuple[int, bytes, str]:
    """GET ``url``: status, body and content type."""

    def fetch() -> tuple[int, bytes, str]:
        request = urllib.request.Request(url)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read(), response.headers["content-type"]
        except urllib.error.HTTPError as error:
            return error.code, error.read(), error.headers["content-type"]

    return await anyio.to_thread.run_sync(fetch)


async def get_json(url: str, token: str | None = TOKEN) -> Any:
    status, body, kind = await get(url, token)
    assert (status, kind) == (200, "application/json"), body
    return json.loads(body)


async def test_the_store_survives_a_restart_and_the_http_api_serves_it(
    tmp_path: Path,
    served_model: LoadedModel,
    scripted: ScriptedEngine,
) -> None:
    config = ServerConfig(data_dir=tmp_path, token=TOKEN)
    runs: list[list[Any]] = []
    async with running_server(config, lambda c: [served_model], sampler=scripted) as server:
        async with connect(server.url, token=TOKEN) as client:
            for index, prompt in enumerate(("red circle", "blue square", "green star")):
                accepted = await client.start(f"q{index}", prompt=prompt, steps=6, seed=index)
                runs.append(await client.run_events(accepted.run_id))
    async with running_server(config, lambda c: [served_model], sampler=scripted) as server:
        base = server.http
        assert (await get(f"{base}/api/runs"))[0] == 401
        health = await get_json(f"{base}/healthz", token=None)
        assert (health["status"], health["models"], health["queued"]) == ("ok", ["tiny"], 0)
        first_page = await get_json(f"{base}/api/runs?limit=2")
        second_page = await get_json(f"{base}/api/runs?limit=2&before={first_page['next_before']}")
        listed = [run["run_id"] for run in first_page["runs"] + second_page["runs"]]
        assert listed == [events[0].run_id for events in reversed(runs)]
        assert second_page["next_before"] is None
        for events in runs:
            finished = events[-1]
            assert isinstance(finished, Finished) and finished.image is not None
            record = await get_json(f"{base}/api/runs/{finished.run_id}")
            assert record["state"] == "finished" and record["reason"] == finished.reason
            assert record["steps_run"] == finished.steps_run
            started = events[0]
            assert isinstance(started, Started)
            started_parameters = started.parameters
            assert record["parameters"]["prompt"] == started_parameters.prompt
            assert record["parameters"]["seed"] == started_parameters.seed
            assert [(h["step"], h["score"]) for h in record["history"]] == [
                (h.step, h.score) for h in finished.history
            ]
            status, png, kind = await get(base + record["image_url"], TOKEN)
            assert (status, kind, png) == (200, "image/png", finished.image.data)
            async with connect(server.url, token=TOKEN) as client:
                await client.send(Subscribe(finished.run_id))
                subscribed = await client.expect(Subscribed)
                assert (subscribed.state, subscribed.last_seq) == ("finished", finished.seq)
                replayed = await client.run_events(finished.run_id)
            kept = [e for e in events if not isinstance(e, Progress)]
            assert [e for e in replayed if not isinstance(e, Progress)] == kept
            assert replayed[-1] == finished
        models = await get_json(f"{base}/api/models")
        assert [model["id"] for model in models["models"]] == ["tiny"]
        assert models["models"][0]["default_width"] == 32
        verifiers = await get_json(f"{base}/api/verifiers")
        assert "simple" in [verifier["id"] for verifier in verifiers["verifiers"]]
        status, body, _ = await get(f"{base}/api/runs/0123456789abcdef", TOKEN)
        assert status == 404 and json.loads(body)["error"]["code"] == "unknown_run"
        assert (await get(f"{base}/api/runs?limit=0", TOKEN))[0] == 400


@pytest.fixture(scope="session")
def saved_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SD pipeline saved as a diffusers folder, as an operator would configure one."""
    folder = tmp_path_factory.mktemp("tiny-sd")
    make_sd_pipeline().save_pretrained(folder)  # type: ignore[attr-defined]
    return folder


@pytest.fixture
def serve_process(tmp_path: Path, saved_pipeline: Path) -> Iterator[subprocess.Popen[str]]:
    command = [sys.executable, "-m", "stepwatch.client.cli", "serve", "--port", "0"]
    command += ["--model", f"tiny={saved_pipeline},device=cpu", "--data", str(tmp_path)]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=environment
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        assert process.stderr is not None
        process.stderr.close()


async def listening_port(process: subprocess.Popen[str]) -> int:
    """Read the server's log until it says where it listens."""
    assert process.stderr is not None
    stderr = process.stderr
    with anyio.fail_after(120):
        while True:
            line = await anyio.to_thread.run_sync(stderr.readline)
            assert line, f"stepwatch serve exited with {process.poll()}"
            if line.startswith("stepwatch: serving on http://"):
                return int(line.split("http://", 1)[1].split("/")[0].rsplit(":", 1)[1].split()[0])


async def test_sigterm_finishes_the_run_as_shutdown_and_keeps_its_result(
    tmp_path: Path, serve_process: subprocess.Popen[str]
) -> None:
    port = await listening_port(serve_process)
    async with connect(f"ws://127.0.0.1:{port}/ws") as client:
        accepted = await client.start(prompt="red circle", steps=1000, check_interval=2)
        await client.event(accepted.run_id, Check)
        serve_process.send_signal(signal.SIGTERM)
        events = await client.run_events(accepted.run_id)
        code = await closing_code(client)
    status = await anyio.to_thread.run_sync(lambda: serve_process.wait(timeout=60))
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert (finished.reason, finished.error) == ("shutdown", None)
    assert 0 < finished.steps_run < 1000 and finished.image is not None
    assert code == 1001 and status == 0
    image = tmp_path / "images" / f"{accepted.run_id}.png"
    assert image.read_bytes() == finished.image.data
    with sqlite3.connect(tmp_path / "stepwatch.sqlite3") as db:
        reason, steps = db.execute(
            "SELECT reason, steps_run FROM runs WHERE run_id=?", (accepted.run_id,)
        ).fetchone()
        checks = db.execute(
            "SELECT step FROM checks WHERE run_id=? ORDER BY position", (accepted.run_id,)
        ).fetchall()
    assert (reason, steps) == ("shutdown", finished.steps_run)
    assert [step for (step,) in checks] == [entry.step for entry in finished.history]
    assert checks


async def closing_code(client: Client) -> int:
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await client.recv()
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


async def test_a_model_without_a_shipped_curve_learns_one_from_its_completed_runs(
    tmp_path: Path,
) -> None:
    served_model = describe_pipeline("tiny", make_sd_pipeline())
    config = ServerConfig(data_dir=tmp_path)
    settings: dict[str, Any] = {
        "steps": 6, "check_interval": 2, "early_stop": False, "quality_threshold": 1.0,
    }  # fmt: skip
    reasons: list[list[str]] = []
    async with running_server(config, lambda c: [served_model]) as server:
        async with connect(server.url) as client:
            for index in range(MIN_RUNS + 1):
                accepted = await client.start(
                    f"r{index}", prompt="red circle", seed=index, **settings
                )
                events = await client.run_events(accepted.run_id)
                reasons.append([e.reason for e in events if isinstance(e, Check)])
    assert served_model.curves == {}
    # The first runs have nothing to compare with; once MIN_RUNS have completed, the policy
    # judges scores against the curve they make, and says so.
    assert all("no expected-score curve" in r for r in reasons[0][:-1])
    assert not any("history curve" in r for run in reasons[:MIN_RUNS] for r in run)
    assert all(f"history curve of {MIN_RUNS} runs" in r for r in reasons[MIN_RUNS][:-1])
