"""The training loops on a tiny configuration (the real run is never part of the tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stepwatch.server.models.builtin.train import tiny_settings, train_all


def _weights(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*.safetensors"))
    }


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    first = tmp_path_factory.mktemp("first")
    second = tmp_path_factory.mktemp("second")
    for out in (first, second):
        train_all(tiny_settings(seed=5), out, log=lambda line: None)
    return first, second


def test_training_writes_a_loadable_pipeline_and_both_classifiers(
    two_runs: tuple[Path, Path],
) -> None:
    out = two_runs[0]
    assert set(_weights(out)) == {
        "adherence/diffusion_pytorch_model.safetensors",
        "attribute_encoder/diffusion_pytorch_model.safetensors",
        "judge/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
    }
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "ShapesPipeline"
    curve = json.loads((out / "training" / "diffusion_loss.json").read_text())
    assert [point["step"] for point in curve] == [3]
    assert curve[-1]["loss"] > 0


def test_same_seed_reproduces_every_weight_and_loss(two_runs: tuple[Path, Path]) -> None:
    first, second = two_runs
    assert _weights(first) == _weights(second)
    for name in ("diffusion_loss.json", "adherence_loss.json", "judge_loss.json"):
        assert (first / "training" / name).read_text() == (second / "training" / name).read_text()


def test_resuming_from_the_checkpoint_continues_where_it_stopped(
    two_runs: tuple[Path, Path], tmp_path: Path
) -> None:
    settings = tiny_settings(seed=5)
    train_all(settings, tmp_path, log=lambda line: None, parts=("diffusion",), stop_at=2)
    assert not (tmp_path / "unet").exists()
    logged: list[str] = []
    train_all(settings, tmp_path, log=logged.append, parts=("diffusion",))
    assert any("resumed" in line and "step 2" in line for line in logged)
    unet = "unet/diffusion_pytorch_model.safetensors"
    assert _weights(tmp_path)[unet] == _weights(two_runs[0])[unet]


def test_the_command_is_registered_and_imports_no_torch() -> None:
    code = (
        "import sys; import stepwatch.server.models.builtin.command; "
        "import stepwatch.server.models.builtin; assert 'torch' not in sys.modules"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
    result = subprocess.run(
        [sys.executable, "-m", "stepwatch.client.cli", "train-builtin", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    assert "--seed" in result.stdout and "--steps" in result.stdout
    assert "cleanliness" in result.stdout
