"""A ``finished`` seen is a result kept: when the store cannot write, the run says ``failed``
with ``store_failed`` instead of ``completed``, and no run starts until the store writes again."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from scripted_engine import ScriptedEngine
from servertools import connect, running_server

from stepwatch.protocol import Error, ErrorCode, Finished, Progress, Start
from stepwatch.server.config import ServerConfig
from stepwatch.server.engine.model import LoadedModel

pytestmark = pytest.mark.anyio


async def test_a_result_the_store_cannot_keep_is_failed_and_starts_wait_for_the_store(
    tmp_path: Path,
    served_model: LoadedModel,
    scripted: ScriptedEngine,
) -> None:
    images = tmp_path / "images"
    async with running_server(
        ServerConfig(data_dir=tmp_path), lambda c: [served_model], sampler=scripted
    ) as server:
        async with connect(server.url) as client:
            accepted = await client.start("a", prompt="red circle", steps=12, early_stop=False)
            await client.event(accepted.run_id, Progress)
            # The image folder stops taking files (a file where the folder was: root, as in CI,
            # writes even where permissions say no).
            shutil.move(images, tmp_path / "images.moved")
            images.write_bytes(b"")
            finished = await client.event(accepted.run_id, Finished)
            assert finished.reason == "failed" and finished.image is None
            assert finished.error is not None and finished.error.code is ErrorCode.STORE_FAILED
            await client.send(Start("b", "red circle", steps=2))
            refused = await client.reply_to("b")
            assert isinstance(refused, Error) and refused.code is ErrorCode.STORE_FAILED
            images.unlink()
            shutil.move(tmp_path / "images.moved", images)
            again = await client.start("c", prompt="red circle", steps=2)
            last = await client.event(again.run_id, Finished)
    assert last.reason == "completed" and last.image is not None
    assert (images / f"{again.run_id}.png").read_bytes() == last.image.data
    assert not (images / f"{accepted.run_id}.png").exists()
