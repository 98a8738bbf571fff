"""The in-process server harness says when the server it was asked for did not start."""

from __future__ import annotations

from pathlib import Path

import pytest

from stepwatch.server.config import ServerConfig
from stepwatch.server.engine.model import LoadedModel
from stepwatch.server.harness import HarnessError, ServerThread, running_server


def no_models(config: ServerConfig) -> list[LoadedModel]:
    raise RuntimeError("the model's weights are missing")


@pytest.mark.anyio
async def test_a_server_that_cannot_start_fails_the_block_in_the_callers_loop(
    tmp_path: Path,
) -> None:
    entered = False
    with pytest.raises(HarnessError, match="did not start"):
        async with running_server(ServerConfig(data_dir=tmp_path), no_models):
            entered = True
    assert not entered


def test_a_server_that_cannot_start_fails_the_block_in_its_thread(tmp_path: Path) -> None:
    entered = False
    with pytest.raises(HarnessError, match="did not start"):
        with ServerThread(ServerConfig(data_dir=tmp_path), no_models):
            entered = True
    assert not entered
