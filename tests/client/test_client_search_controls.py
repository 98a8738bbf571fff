"""The owner's controls of a search through a real server and the Python client."""

from __future__ import annotations

import pytest

from stepwatch.client import Check, ErrorCode, Refused, connect
from stepwatch.protocol import SearchSettings
from stepwatch.server.harness import ServerThread

pytestmark = pytest.mark.anyio

LONG = {"steps": 200, "check_interval": 2, "early_stop": False, "seed": 4, "preview_size": 0}
SHORT = {"steps": 6, "check_interval": 2, "early_stop": False, "seed": 4}


async def test_the_owner_stops_one_candidate_changes_the_strategy_and_keeps_one(
    server: ServerThread,
) -> None:
    async with connect(server.url) as sw:
        assert "search_controls" in sw.capabilities
        # keep_fraction 1: the strategy itself prunes nobody; the owner does.
        settings = SearchSettings("prune", keep_fraction=1.0)
        run = await sw.generate("red circle", candidates=4, search=settings, **LONG)
        async for event in run:
            if isinstance(event, Check):
                break
        stopped = await run.stop_candidate(1)
        changed = await run.set(prune_every=1000, check_interval=4)
        with pytest.raises(Refused) as meaningless:
            await run.set(fk_lambda=2.0)
        kept = await run.keep_candidate(2)
        with pytest.raises(Refused) as not_live:
            await run.stop_candidate(0)
        checks_after = [e async for e in run if isinstance(e, Check) and e.step > kept.step]
        result = await run.result()
    assert stopped.candidate_stopped == 1 and stopped.stop is None
    assert [(c.setting, c.new) for c in changed.search_changes] == [("prune_every", 1000.0)]
    assert [(c.setting, c.new) for c in changed.changes] == [("check_interval", 4.0)]
    assert meaningless.value.code is ErrorCode.INVALID_VALUE
    assert meaningless.value.field == "fk_lambda"
    assert kept.candidate_kept == 2 and stopped.step <= kept.step
    assert not_live.value.code is ErrorCode.INVALID_VALUE and not_live.value.field == "candidate"
    assert all([c.candidate for c in check.candidates] == [2] for check in checks_after)
    fates = [(c.candidate, c.fate, c.by_owner) for c in result.candidates]
    assert fates == [
        (0, "pruned", True),
        (1, "pruned", True),
        (2, "chosen", True),
        (3, "pruned", True),
    ]
    assert result.reason == "completed" and list(result.candidate_pngs()) == [2]
    # Four lanes until the stop, three until the keep, then one: two rows each (CFG).
    assert result.compute is not None
    assert result.compute.denoiser_evaluations < 2 * 4 * LONG["steps"]


async def test_every_candidates_image_comes_back_on_request(server: ServerThread) -> None:
    async with connect(server.url) as sw:
        settings = SearchSettings("best_of_n", images="all")
        run = await sw.generate("red circle", candidates=3, search=settings, **SHORT)
        result = await run.result()
    pngs = result.candidate_pngs()
    assert sorted(pngs) == [0, 1, 2] and all(png[:4] == b"\x89PNG" for png in pngs.values())
    chosen = next(c.candidate for c in result.candidates if c.fate == "chosen")
    assert pngs[chosen] == result.png


async def test_candidate_controls_of_a_single_run_are_refused(server: ServerThread) -> None:
    async with connect(server.url) as sw:
        run = await sw.generate("red circle", **LONG)
        with pytest.raises(Refused) as refused:
            await run.keep_candidate(0)
        with pytest.raises(Refused) as setting:
            await run.set(keep_fraction=0.5)
        await run.stop(mode="abort")
    assert refused.value.code is ErrorCode.INVALID_VALUE and refused.value.field == "keep"
    assert setting.value.field == "keep_fraction"
