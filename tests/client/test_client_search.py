"""A search run through a real server and the Python client: candidates on events and results."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

import pytest

from stepwatch.client import Check, ErrorCode, Refused, connect
from stepwatch.protocol import SearchSettings
from stepwatch.server.harness import ServerThread

pytestmark = pytest.mark.anyio


async def stored_parameters(server: ServerThread, run_id: str) -> dict[str, Any]:
    """The run's parameters as the HTTP API reports them from the store."""

    def read() -> dict[str, Any]:
        with urllib.request.urlopen(f"{server.http}/api/runs/{run_id}") as response:
            parameters: dict[str, Any] = json.load(response)["parameters"]
        return parameters

    return await asyncio.to_thread(read)


SEARCH = {"steps": 6, "check_interval": 2, "early_stop": False, "seed": 4, "sampler": "dpmpp_2m"}


async def test_a_pruning_search_reports_every_candidate_and_its_compute(
    server: ServerThread,
) -> None:
    async with connect(server.url) as sw:
        assert "search" in sw.capabilities and sw.limits["max_candidates"] >= 4
        run = await sw.generate(
            "red circle", candidates=4, search=SearchSettings("prune"), **SEARCH
        )
        checks = [event async for event in run if isinstance(event, Check)]
        result = await run.result()
    # Prune at steps 2 and 4 (4 → 2 → 1); step 6 is the last check.
    assert [len(check.candidates) for check in checks] == [4, 2, 1]
    assert [sum(c.fate == "pruned" for c in check.candidates) for check in checks] == [2, 1, 0]
    assert all(c.preview is not None for check in checks for c in check.candidates)
    assert checks[0].preview is not None and checks[0].score == max(
        c.score for c in checks[0].candidates
    )
    assert result.reason == "completed" and result.png is not None
    assert sorted(c.fate for c in result.candidates) == ["chosen", "pruned", "pruned", "pruned"]
    assert result.parameters is not None and result.parameters.candidates == 4
    assert result.compute is not None
    # Tiny SD with CFG: two rows per candidate and step; 4, 4, 2, 2, 1, 1 candidates.
    assert result.compute.denoiser_evaluations == 2 * (4 + 4 + 2 + 2 + 1 + 1)
    assert result.compute.single_run_evaluations == 2 * 6
    # The store keeps the search's parameters; the HTTP API reports them as the wire does.
    stored = await stored_parameters(server, run.run_id)
    assert stored["candidates"] == 4 and stored["search"]["strategy"] == "prune"


async def test_a_single_runs_stored_parameters_leave_the_search_fields_out(
    server: ServerThread,
) -> None:
    async with connect(server.url) as sw:
        run = await sw.generate("red circle", **SEARCH)
        await run.result()
    stored = await stored_parameters(server, run.run_id)
    assert "candidates" not in stored and "search" not in stored


async def test_more_candidates_than_the_server_allows_are_refused(server: ServerThread) -> None:
    async with connect(server.url) as sw:
        too_many = sw.limits["max_candidates"] + 1
        with pytest.raises(Refused) as refused:
            await sw.generate("red circle", candidates=too_many, **SEARCH)
    assert refused.value.code is ErrorCode.INVALID_VALUE and refused.value.field == "candidates"
