"""The input-image options as a user runs them, in real subprocesses: ``stepwatch generate
--image/--mask --strength`` uploads the files and starts the run on a real server;
``stepwatch sample --image`` runs the same in process from a saved model folder; a file that is
no image, or a model that needs one and got none, is one line naming why."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from tiny_image_models import make_img2img_pipeline, make_inpaint_pipeline, mask, picture

from stepwatch.server.config import ServerConfig
from stepwatch.server.engine.model import describe_pipeline
from stepwatch.server.harness import ServerThread


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    models = [
        describe_pipeline("img2img", make_img2img_pipeline(seed=3)),
        describe_pipeline("inpaint", make_inpaint_pipeline(seed=4)),
    ]
    config = ServerConfig(port=0, data_dir=tmp_path_factory.mktemp("cli-inputs"))
    with ServerThread(config, lambda c: models) as running:
        yield running


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    written = {
        "image": (folder / "init.png", picture((40, 32))),
        "mask": (folder / "mask.png", mask((40, 32))),
        "text": (folder / "notes.png", b"not an image at all"),
    }
    for path, data in written.values():
        path.write_bytes(data)
    return {name: path for name, (path, _) in written.items()}


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


def events_of(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_generate_uploads_the_images_and_runs_an_inpainting_model(
    server: ServerThread, files: dict[str, Path], tmp_path: Path
) -> None:
    result = stepwatch(
        "generate", "red circle", "--server", server.url, "--model", "inpaint",
        "--image", str(files["image"]), "--mask", str(files["mask"]), "--strength", "0.75",
        "--steps", "8", "--check-interval", "2", "--no-early-stop", "--json",
        "--out", "out.png", cwd=tmp_path,
    )  # fmt: skip
    events = events_of(result)
    started = next(e for e in events if e["type"] == "started")["parameters"]
    assert started["strength"] == 0.75 and len(started["image"]) == len(started["mask"]) == 64
    # 0.75 x 8 steps: the run takes 6 of them, checked every 2.
    assert [e["step"] for e in events if e["type"] == "check"] == [2, 4, 6]
    assert events[-1]["reason"] == "completed" and events[-1]["steps_run"] == 6
    with Image.open(tmp_path / "out.png") as image:
        assert image.size == (40, 32)


@pytest.mark.parametrize(
    ("options", "fragments"),
    [
        (("--image", "notes"), ("invalid_upload", "not a PNG, JPEG or WebP")),
        ((), ("needs an init image",)),
    ],
)
def test_a_bad_input_image_is_one_line(
    server: ServerThread,
    files: dict[str, Path],
    tmp_path: Path,
    options: tuple[str, ...],
    fragments: tuple[str, ...],
) -> None:
    named = tuple(str(files["text"]) if o == "notes" else o for o in options)
    result = stepwatch(
        "generate", "red circle", "--server", server.url, "--model", "img2img", *named,
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


def test_sample_runs_an_img2img_model_folder_on_an_init_image(
    files: dict[str, Path], tmp_path: Path
) -> None:
    folder = tmp_path / "tiny-img2img"
    make_img2img_pipeline(seed=2).save_pretrained(folder)
    result = stepwatch(
        "sample", "red circle", "--model", f"{folder},device=cpu", "--image", str(files["image"]),
        "--strength", "0.5", "--steps", "8", "--check-interval", "2", "--no-early-stop",
        "--seed", "3", "--json", cwd=tmp_path,
    )  # fmt: skip
    events = events_of(result)
    assert [e["step"] for e in events if e["type"] == "check"] == [2, 4]
    assert events[-1]["reason"] == "completed" and events[-1]["steps_run"] == 4
    with Image.open(io.BytesIO((tmp_path / "stepwatch-3.png").read_bytes())) as image:
        assert image.size == (40, 32)
    refused = stepwatch(
        "sample", "red circle", "--model", f"{folder},device=cpu", "--steps", "4", cwd=tmp_path
    )
    assert refused.returncode == 2 and "needs an init image" in refused.stderr
