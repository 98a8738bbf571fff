"""``stepwatch comfyui-install``: the shim it writes into a ComfyUI's custom_nodes/."""

from __future__ import annotations

from pathlib import Path

import pytest

from stepwatch.client.cli import main


def test_it_writes_a_shim_that_reexports_the_entry_point(tmp_path: Path) -> None:
    (tmp_path / "custom_nodes").mkdir()
    assert main(["comfyui-install", str(tmp_path)]) == 0
    shim = (tmp_path / "custom_nodes" / "stepwatch_nodes" / "__init__.py").read_text()
    assert "from stepwatch.server.comfyui.nodes import comfy_entrypoint" in shim
    assert main(["comfyui-install", str(tmp_path)]) == 0  # installing again updates it


def test_it_refuses_a_folder_that_is_no_comfyui(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["comfyui-install", str(tmp_path)]) == 1
    assert "has no custom_nodes/" in capsys.readouterr().out


def test_it_leaves_a_folder_of_the_same_name_it_did_not_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "custom_nodes" / "stepwatch_nodes").mkdir(parents=True)
    assert main(["comfyui-install", str(tmp_path)]) == 1
    assert "was not written by stepwatch" in capsys.readouterr().out
