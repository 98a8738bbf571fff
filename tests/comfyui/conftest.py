"""Fixtures of the ComfyUI tests: one real ComfyUI, shared by every test in this folder."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from comfyui_server import ComfyUI, comfyui_dir, comfyui_python, prepare_base, running_comfyui


@pytest.fixture(scope="package")
def comfyui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyUI]:
    base = tmp_path_factory.mktemp("comfyui")
    prepare_base(base, comfyui_dir(), comfyui_python())
    with running_comfyui(base) as server:
        yield server
