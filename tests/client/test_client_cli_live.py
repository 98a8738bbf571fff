"""``stepwatch generate``, ``watch`` and ``runs`` as a user runs them, against a real server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import API_TOKEN
from PIL import Image as PILImage

from stepwatch.server.harness import ServerThread

#: Every run the CLI tests start is short and runs to its last step.
QUICK = ("--steps", "6", "--check-interval", "2", "--seed", "4")
WAIT = 60


def stepwatch(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stepwatch.client.cli", *args],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
        env=env,
        cwd=cwd,
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


def test_generate_json_prints_one_object_per_event_ending_with_finished(
    server: ServerThread, tmp_path: Path
) -> None:
    out = tmp_path / "red.png"
    result = stepwatch("generate", "red circle", "--server", server.url, *QUICK, "--json",
                       "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    events = json_lines(result.stdout)
    assert events[0]["type"] == "accepted" and "control_token" not in events[0]
    assert events[1]["type"] == "started"
    assert events[-1]["type"] == "finished" and events[-1]["reason"] == "completed"
    assert {event["run_id"] for event in events} == {events[0]["run_id"]}
    checks = [event for event in events if event["type"] == "check"]
    assert [check["step"] for check in checks] == [2, 4, 6]
    assert all(isinstance(check["preview"]["data"], str) for check in checks)  # base64
    with PILImage.open(out) as image:
        assert image.size == (32, 32)


def test_generate_shows_progress_and_prints_the_run_id_and_image(
    server: ServerThread, tmp_path: Path
) -> None:
    env = {**os.environ, "STEPWATCH_SERVER": server.url}
    result = stepwatch("generate", "green triangle", *QUICK, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    run_id = summary.split()[0]
    assert summary == f"{run_id} completed steps=6 score={summary.split('score=')[1]}"
    assert summary.endswith(f"image {run_id}.png")
    assert (tmp_path / f"{run_id}.png").exists()  # the working directory, by default
    assert "score" in result.stderr and "completed after 6 steps" in result.stderr


def test_ctrl_c_stops_the_run_and_still_saves_its_image(
    server: ServerThread, tmp_path: Path
) -> None:
    out = tmp_path / "stopped.png"
    command = [sys.executable, "-m", "stepwatch.client.cli", "generate", "red circle",
               "--server", server.url, "--steps", "400", "--threshold", "1.0", "--json",
               "--out", str(out)]  # fmt: skip
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as cli:
        assert cli.stdout is not None
        for line in cli.stdout:
            if json.loads(line)["type"] == "check":
                cli.send_signal(signal.SIGINT)
                break
        rest, errors = cli.communicate(timeout=WAIT)
    assert cli.returncode == 0, errors
    events = json_lines(rest)
    applied = next(event for event in events if event["type"] == "applied")
    assert applied["stop"] == "finish"
    assert events[-1]["type"] == "finished" and events[-1]["reason"] == "stopped"
    # The run finishes clean: a short tail of at most 8 steps after the step the stop took.
    assert applied["step"] < events[-1]["steps_run"] <= applied["step"] + 8 < 400
    assert "stopping the run" in errors
    with PILImage.open(out) as image:
        assert image.size == (32, 32)


def test_watch_follows_a_run_from_any_seq(server: ServerThread, tmp_path: Path) -> None:
    started = stepwatch("generate", "red circle", "--server", server.url, *QUICK, "--json",
                        "--out", str(tmp_path / "a.png"))  # fmt: skip
    run_id = json_lines(started.stdout)[0]["run_id"]
    whole = stepwatch("watch", run_id, "--server", server.url, "--json")
    assert whole.returncode == 0, whole.stderr
    events = json_lines(whole.stdout)
    assert events[0]["type"] == "started" and events[-1]["type"] == "finished"
    later = json_lines(stepwatch("watch", run_id, "--server", server.url, "--from", "5",
                                 "--json").stdout)  # fmt: skip
    assert later[0]["seq"] > 5 and later[-1] == events[-1]
    shown = stepwatch("watch", run_id, "--server", server.url, "--out", str(tmp_path / "b.png"))
    assert shown.returncode == 0 and shown.stdout.startswith(f"{run_id} completed")
    assert (tmp_path / "b.png").read_bytes() == (tmp_path / "a.png").read_bytes()


def test_runs_lists_the_history(server: ServerThread, tmp_path: Path) -> None:
    started = stepwatch("generate", "blue square", "--server", server.url, *QUICK, "--json",
                        "--out", str(tmp_path / "a.png"))  # fmt: skip
    run_id = json_lines(started.stdout)[0]["run_id"]
    table = stepwatch("runs", "--server", server.url)
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if run_id in line)
    assert "blue square" in row and "completed" in row
    listed = json.loads(stepwatch("runs", "--server", server.url, "--json").stdout)
    assert any(item["run_id"] == run_id and item["steps_run"] == 6 for item in listed)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("command", ["generate", "watch", "runs"])
def test_an_unreachable_server_is_one_line(command: str) -> None:
    target = {"generate": ["red circle"], "watch": ["some-run"], "runs": []}[command]
    url = f"ws://127.0.0.1:{closed_port()}/ws"
    result = stepwatch(command, *target, "--server", url)
    assert_one_line_error(result, f"stepwatch {command}: cannot reach", "Connection refused")


def test_a_refused_token_is_one_line(guarded_server: ServerThread) -> None:
    url = guarded_server.url
    assert_one_line_error(
        stepwatch("generate", "red circle", "--server", url), "requires an API token"
    )
    assert_one_line_error(
        stepwatch("generate", "red circle", "--server", url, "--token", "wrong-token"),
        "refused the API token",
    )
    assert_one_line_error(stepwatch("runs", "--server", url, "--token", "wrong-token"),
                          "refused the API token")  # fmt: skip
    listed = stepwatch("runs", "--server", url, "--token", API_TOKEN)
    assert listed.returncode == 0, listed.stderr


@pytest.mark.parametrize(
    ("options", "fragments"),
    [
        (("--model", "nope"), ("unknown model", "this server has: tiny")),
        (("--verifier", "nope"), ("unknown verifier", "this server has: simple")),
        (("--sampler", "nope"), ("unknown sampler", "euler")),
        (("--steps", "0"), ("invalid --steps",)),
        (("--threshold", "2"), ("invalid --threshold",)),
        (("--width", "36"), ("invalid --width",)),
    ],
)
def test_a_bad_parameter_is_one_line_naming_it(
    server: ServerThread, options: tuple[str, ...], fragments: tuple[str, ...]
) -> None:
    result = stepwatch("generate", "red circle", "--server", server.url, *options)
    assert_one_line_error(result, *fragments)


def test_watching_an_unknown_run_is_one_line(server: ServerThread) -> None:
    result = stepwatch("watch", "no-such-run", "--server", server.url)
    assert_one_line_error(result, "unknown_run")


def test_generate_a_search_prints_each_checks_candidates_and_the_compute(
    server: ServerThread, tmp_path: Path
) -> None:
    env = {**os.environ, "STEPWATCH_SERVER": server.url, "COLUMNS": "160"}
    result = stepwatch(
        "generate", "green triangle", *QUICK, "--no-early-stop", "--candidates", "4",
        "--search", "prune", "--sampler", "dpmpp_2m", env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    tables = [i for i, line in enumerate(lines) if line.split() == ["cand", "score", "fate"]]
    assert len(tables) == 3  # one per check: steps 2, 4 and 6
    first = [lines[i].split() for i in range(tables[0] + 1, tables[0] + 5)]
    assert sorted(row[0] for row in first) == ["0", "1", "2", "3"]
    assert [row[2] for row in first] == ["live", "live", "pruned", "pruned"]  # best first
    assert any("candidate" in line and "denoiser evaluations" in line for line in lines)


def test_generate_json_of_a_search_carries_the_candidates(
    server: ServerThread, tmp_path: Path
) -> None:
    result = stepwatch(
        "generate", "red circle", "--server", server.url, *QUICK, "--json", "--candidates", "2",
        "--out", str(tmp_path / "best.png"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    events = json_lines(result.stdout)
    checks = [event for event in events if event["type"] == "check"]
    assert all(len(check["candidates"]) == 2 for check in checks)
    finished = events[-1]
    assert [c["candidate"] for c in finished["candidates"]] == [0, 1]
    assert finished["compute"]["single_run_evaluations"] > 0


def test_generate_all_images_writes_every_candidate_next_to_the_chosen_one(
    server: ServerThread, tmp_path: Path
) -> None:
    result = stepwatch(
        "generate", "red circle", "--server", server.url, *QUICK, "--candidates", "3",
        "--all-images", "--out", str(tmp_path / "best.png"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    written = sorted(path.name for path in tmp_path.glob("*.png"))
    assert len(written) == 3 and "best.png" in written
    others = [name for name in written if name != "best.png"]
    assert all(name.startswith("best-candidate-") for name in others)
    assert all((tmp_path / name).read_bytes()[:4] == b"\x89PNG" for name in written)
    assert result.stderr.count("candidate image saved to") == 2
