"""A search ``start`` the service cannot run is refused with a coded error naming the field."""

from __future__ import annotations

import pytest
from tiny_models import make_lcm_pipeline

from stepwatch.protocol import ErrorCode, ProtocolError, SearchSettings, Start
from stepwatch.server.catalog import Catalog
from stepwatch.server.config import ServiceLimits
from stepwatch.server.engine.model import LoadedModel, describe_pipeline
from stepwatch.server.engine.verifiers import VerifierRegistry


def test_prune_on_a_pipeline_that_cannot_reindex_is_refused() -> None:
    # LCM is not among the pipelines whose whole batch the tests show re-indexed.
    lcm = describe_pipeline("lcm", make_lcm_pipeline())
    catalog = Catalog([lcm], VerifierRegistry(), ServiceLimits())
    start = Start("q", "a cat", candidates=2, search=SearchSettings("prune"))
    with pytest.raises(ProtocolError) as refused:
        catalog.resolve(start)
    assert refused.value.code is ErrorCode.INVALID_VALUE
    assert refused.value.field == "search.strategy" and "best_of_n" in refused.value.message
    best = catalog.resolve(Start("q", "a cat", candidates=2, search=SearchSettings()))
    assert best.params.parameters.candidates == 2


def test_more_candidates_than_configured_are_refused(sd_model: LoadedModel) -> None:
    catalog = Catalog([sd_model], VerifierRegistry(), ServiceLimits(max_candidates=2))
    with pytest.raises(ProtocolError) as refused:
        catalog.resolve(Start("q", "a cat", candidates=3))
    assert refused.value.code is ErrorCode.INVALID_VALUE and refused.value.field == "candidates"
    resolved = catalog.resolve(Start("q", "a cat", candidates=2)).params.parameters
    assert resolved.search == SearchSettings("best_of_n")  # a search's settings are reported
