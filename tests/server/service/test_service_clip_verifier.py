"""A CLIP-score verifier the operator configures (``--verifier ID=clip:FOLDER``) scores served
runs; clients only choose it by id."""

from __future__ import annotations

from pathlib import Path

import pytest
from servertools import connect, running_server
from tiny_models import save_tiny_clip

from stepwatch.protocol import Check, Finished
from stepwatch.server.config import ServerConfig
from stepwatch.server.engine.model import LoadedModel

pytestmark = pytest.mark.anyio


async def test_a_served_run_is_scored_by_the_configured_clip(
    tmp_path: Path, served_model: LoadedModel
) -> None:
    folder = save_tiny_clip(tmp_path / "clip")
    config = ServerConfig(data_dir=tmp_path / "data", verifiers=(f"clip=clip:{folder}",))
    async with running_server(config, lambda c: [served_model]) as server:
        async with connect(server.url) as client:
            assert client.welcome is not None
            [info] = [v for v in client.welcome.verifiers if v.id == "clip"]
            accepted = await client.start(
                "q", prompt="red circle", steps=4, check_interval=2, verifier="clip",
                early_stop=False,
            )  # fmt: skip
            events = await client.run_events(accepted.run_id)
    assert info.components == ("clip",)
    checks = [e for e in events if isinstance(e, Check)]
    assert [c.step for c in checks] == [2, 4]
    assert all(set(c.components) == {"clip"} and c.score == c.components["clip"] for c in checks)
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.reason == "completed"
