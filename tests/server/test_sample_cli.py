"""``stepwatch sample`` as a user runs it: a real subprocess, a real model folder."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from tiny_models import make_sd_pipeline

from stepwatch.server.config import ServerConfig
from stepwatch.server.harness import ServerThread
from stepwatch.server.models.loading import ModelSpec, load_model


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models") / "tiny-sd"
    make_sd_pipeline(seed=2).save_pretrained(folder)
    return folder


def stepwatch(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stepwatch.client.cli", *args],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
        cwd=cwd,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )


def test_the_sample_module_imports_no_torch() -> None:
    code = "import sys, stepwatch.server.engine.sample; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_json_mode_prints_one_object_per_event_and_writes_the_image(
    model_folder: Path, tmp_path: Path
) -> None:
    result = stepwatch(
        "sample", "red circle", "--model", f"{model_folder},device=cpu", "--steps", "6",
        "--seed", "7", "--check-interval", "3", "--no-early-stop", "--json", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    # The protocol's own JSON form, as `stepwatch generate --json` prints a served run.
    kinds = [e["type"] for e in events]
    assert kinds[0] == "started" and kinds[-1] == "finished"
    assert kinds.count("progress") == 6 and kinds.count("check") == 2
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert len({e["run_id"] for e in events}) == 1
    check = next(e for e in events if e["type"] == "check")
    assert check["step"] == 3 and check["decision"] in {"continue", "raise_cfg"}
    thumbnail = Image.open(io.BytesIO(base64.b64decode(check["preview"]["data"])))
    # The default preview decoder for SD is the linear one, at the latent's 16×16.
    assert thumbnail.format == "JPEG" and thumbnail.size == (16, 16)
    finished = events[-1]
    assert finished["reason"] == "completed" and finished["steps_run"] == 6
    written = tmp_path / "stepwatch-7.png"
    assert base64.b64decode(finished["image"]["data"]) == written.read_bytes()
    with Image.open(written) as image:
        assert image.size == (32, 32)


def test_terminal_mode_prints_a_line_per_check(model_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "picture.png"
    result = stepwatch(
        "sample", "blue square", "--model", str(model_folder), "--steps", "4", "--seed", "1",
        "--check-interval", "2", "--threshold", "1.0", "--out", str(out), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("cli: 'blue square' seed 1, 4 steps")
    assert any(line.startswith("  step   2  score") for line in lines)
    # This model ships no expected-score curve and has no history, so CFG is left alone and the
    # line says why.
    [check] = [line for line in lines if line.startswith("  step   2  score")]
    assert "no expected-score curve" in check
    assert not any("cfg 7.5 ->" in line for line in lines)
    assert any(line.startswith("  step   4  score") for line in lines)
    assert lines[-1].startswith("completed: 4/4 steps") and out.exists()


def test_overlapped_checks_say_where_their_decision_applied(
    model_folder: Path, tmp_path: Path
) -> None:
    result = stepwatch(
        "sample", "blue square", "--model", str(model_folder), "--steps", "4", "--seed", "1",
        "--check-interval", "2", "--threshold", "1.0", "--checks", "overlapped",
        "--out", str(tmp_path / "o.png"), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    [early] = [line for line in lines if line.startswith("  step   2  score")]
    assert "(applied at step 3)" in early
    # The last step's check has no later step to wait for.
    [last] = [line for line in lines if line.startswith("  step   4  score")]
    assert "applied at" not in last


def test_width_and_height_choose_the_image_size(model_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "wide.png"
    result = stepwatch(
        "sample", "red circle", "--model", f"{model_folder},device=cpu", "--steps", "2",
        "--width", "48", "--height", "24", "--out", str(out), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with Image.open(out) as image:
        assert image.size == (48, 24)
    refused = stepwatch("sample", "x", "--model", str(model_folder), "--width", "30", cwd=tmp_path)
    assert refused.returncode == 2 and "width: must be a multiple of 8" in refused.stderr


def test_bad_arguments_are_reported_without_a_traceback(model_folder: Path, tmp_path: Path) -> None:
    result = stepwatch(
        "sample", "x", "--model", str(model_folder), "--sampler", "nope", cwd=tmp_path
    )
    assert result.returncode == 2
    assert "unknown sampler 'nope'" in result.stderr and "Traceback" not in result.stderr


def _comparable(event: dict[str, object]) -> dict[str, object]:
    """An event's JSON without what differs between two runs of the same thing: the run id and
    the clock."""
    kept = {k: v for k, v in event.items() if k not in ("run_id", "elapsed", "eta")}
    if isinstance(kept.get("history"), list):
        kept["history"] = [
            {k: v for k, v in entry.items() if k != "elapsed"}
            for entry in kept["history"]  # type: ignore[union-attr]
        ]
    return kept


def test_sample_json_and_generate_json_print_the_same_events(
    model_folder: Path, tmp_path: Path
) -> None:
    options = ("--steps", "6", "--seed", "7", "--check-interval", "3", "--no-early-stop")
    local = stepwatch("sample", "red circle", "--model", str(model_folder), *options, "--json",
                      cwd=tmp_path)  # fmt: skip
    assert local.returncode == 0, local.stderr
    model = load_model(ModelSpec.parse(f"cli={model_folder},device=cpu"))
    config = ServerConfig(data_dir=tmp_path / "data", sampler_threads=1)
    with ServerThread(config, lambda _config: [model]) as server:
        served = stepwatch("generate", "red circle", "--server", server.url, *options, "--json",
                           "--out", str(tmp_path / "served.png"), cwd=tmp_path)  # fmt: skip
    assert served.returncode == 0, served.stderr
    [accepted, *served_events] = [json.loads(line) for line in served.stdout.splitlines()]
    local_events = [json.loads(line) for line in local.stdout.splitlines()]
    assert accepted["type"] == "accepted"
    assert [e["type"] for e in local_events] == [e["type"] for e in served_events]
    # The same run, in process and served: the same JSON, field for field.
    assert [_comparable(e) for e in local_events] == [_comparable(e) for e in served_events]


def test_a_search_prints_a_table_per_check(model_folder: Path, tmp_path: Path) -> None:
    result = stepwatch(
        "sample", "red circle", "--model", f"{model_folder},device=cpu", "--steps", "6",
        "--seed", "7", "--check-interval", "2", "--no-early-stop", "--candidates", "3",
        "--search", "prune", "--keep-fraction", "0.3", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    tables = [i for i, line in enumerate(lines) if line.split() == ["cand", "score", "fate"]]
    assert len(tables) == 3
    assert [lines[i].split()[-1] for i in range(tables[0] + 1, tables[0] + 4)] == [
        "live", "pruned", "pruned",
    ]  # fmt: skip
    assert "denoiser evaluations" in lines[-2]
    assert (tmp_path / "stepwatch-7.png").exists()


def test_sample_all_images_writes_every_candidate(model_folder: Path, tmp_path: Path) -> None:
    result = stepwatch(
        "sample", "red circle", "--model", f"{model_folder},device=cpu", "--steps", "4",
        "--seed", "7", "--check-interval", "2", "--no-early-stop", "--candidates", "2",
        "--all-images", "--out", "x.png", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.glob("*.png")) in (
        ["x-candidate-0.png", "x.png"],
        ["x-candidate-1.png", "x.png"],
    )
