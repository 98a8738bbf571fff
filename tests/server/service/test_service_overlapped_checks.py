"""A client asks for overlapped checks over the protocol: ``started`` reports the mode and each
``check`` says the step its decision applied at; a search refuses them with a coded error."""

from __future__ import annotations

from pathlib import Path

import pytest
from servertools import connect, running_server
from tiny_models import make_sd_pipeline

from stepwatch.protocol import Check, Error, ErrorCode, Finished, Start, Started
from stepwatch.server.config import ServerConfig
from stepwatch.server.engine.model import describe_pipeline

pytestmark = pytest.mark.anyio


async def test_an_overlapped_run_reports_where_each_decision_applied(tmp_path: Path) -> None:
    model = describe_pipeline("tiny", make_sd_pipeline(seed=4))
    async with running_server(ServerConfig(data_dir=tmp_path), lambda c: [model]) as server:
        async with connect(server.url) as client:
            runs = {}
            for checks in ("overlapped", None):
                accepted = await client.start(
                    f"q-{checks}", prompt="red circle", steps=6, check_interval=2,
                    early_stop=False, checks=checks,
                )  # fmt: skip
                runs[checks] = await client.run_events(accepted.run_id)
            await client.send(Start("q-search", "red circle", candidates=2, checks="overlapped"))
            refused = await client.reply_to("q-search")
    for checks, events in runs.items():
        started, finished = events[0], events[-1]
        assert isinstance(started, Started) and isinstance(finished, Finished)
        assert started.parameters.checks == (checks or "strict")
        assert finished.reason == "completed"
    overlapped = [e for e in runs["overlapped"] if isinstance(e, Check)]
    strict = [e for e in runs[None] if isinstance(e, Check)]
    assert [(c.step, c.applied_step) for c in overlapped] == [(2, 3), (4, 5), (6, None)]
    assert [(c.step, c.applied_step) for c in strict] == [(2, None), (4, None), (6, None)]
    assert isinstance(refused, Error) and refused.code is ErrorCode.INVALID_VALUE
    assert refused.field == "checks"
