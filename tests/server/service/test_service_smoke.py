from __future__ import annotations

from pathlib import Path

import pytest
from servertools import connect, running_server

from stepwatch.protocol import Finished, Started
from stepwatch.server.config import ServerConfig
from stepwatch.server.engine.model import LoadedModel

pytestmark = pytest.mark.anyio


async def test_smoke(tmp_path: Path, served_model: LoadedModel) -> None:
    config = ServerConfig(data_dir=tmp_path)
    async with running_server(config, lambda c: [served_model]) as server:
        async with connect(server.url) as client:
            accepted = await client.start(prompt="red circle", steps=8, check_interval=2, seed=1)
            events = await client.run_events(accepted.run_id)
            for e in events:
                print(type(e).__name__, e.seq, getattr(e, "step", None))
            assert isinstance(events[0], Started)
            assert isinstance(events[-1], Finished)
