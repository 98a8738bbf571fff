"""The owner's controls of a search: stop one candidate, keep one, change the strategy."""

from __future__ import annotations

from typing import Any

import pytest
from test_search import BASE, pixels, registry_for, same_image, single
from tiny_models import Recorder

from stepwatch.protocol import Applied, Error, ErrorCode, Finished, SearchSettings
from stepwatch.server.engine.control import RunControl
from stepwatch.server.engine.errors import ParamError
from stepwatch.server.engine.lanes import DenoiserCounter
from stepwatch.server.engine.model import LoadedModel
from stepwatch.server.engine.monitor import run_monitored
from stepwatch.server.engine.params import RequestedParams

PROMPT = "red circle"
# CFG on: every lane is two rows of each denoiser call.
CFG: dict[str, Any] = {"cfg": 3.0}


def steered(
    model: LoadedModel,
    candidates: int,
    settings: SearchSettings,
    actions: dict[int, Any],
    **overrides: Any,
) -> tuple[Finished, Recorder, list[int]]:
    """A search whose owner acts at the given steps (``actions[step](control)``)."""
    params = model.resolve(
        RequestedParams(
            PROMPT, candidates=candidates, search=settings, **{**BASE, **CFG, **overrides}
        )
    )
    control, events, counter = RunControl(), Recorder(), DenoiserCounter()
    for step, action in actions.items():
        events.at_step(step, lambda action=action: action(control))
    counter.attach(model.pipeline)
    try:
        result = run_monitored(model, params, registry_for(model), control, events)
    finally:
        counter.detach()
    return result, events, counter.batch_sizes


def test_stopping_one_candidate_shrinks_the_batch_and_the_search_goes_on(
    shapes_model: LoadedModel,
) -> None:
    actions = {3: lambda c: c.stop_candidate(1, "q1")}
    result, events, sizes = steered(shapes_model, 4, SearchSettings("best_of_n"), actions)
    assert result.reason == "completed"
    assert sizes == [8, 8, 8, 6, 6, 6, 6, 6]
    assert result.compute is not None and result.compute.denoiser_evaluations == sum(sizes)
    (applied,) = events.of(Applied)
    assert (applied.request_id, applied.step, applied.candidate_stopped) == ("q1", 3, 1)
    stopped = result.candidates[1]
    assert (stopped.fate, stopped.by_owner, stopped.steps_run) == ("pruned", True, 3)
    # Its last score is the check at step 2's.
    assert stopped.final_score == events.checks[0].candidates[1].score
    assert [len(c.candidates) for c in events.checks] == [4, 3, 3, 3]
    assert all(not c.by_owner for i, c in enumerate(result.candidates) if i != 1)
    chosen = next(c for c in result.candidates if c.fate == "chosen")
    assert same_image(result, single(shapes_model, PROMPT, BASE["seed"] + chosen.candidate, **CFG))


def test_keeping_one_candidate_makes_it_the_result(shapes_model: LoadedModel) -> None:
    actions = {3: lambda c: c.keep_candidate(2, "q2")}
    result, events, sizes = steered(shapes_model, 4, SearchSettings("best_of_n"), actions)
    assert sizes == [8, 8, 8, 2, 2, 2, 2, 2]
    (applied,) = events.of(Applied)
    assert applied.candidate_kept == 2 and applied.candidate_stopped is None
    fates = [(c.candidate, c.fate, c.by_owner) for c in result.candidates]
    assert fates == [
        (0, "pruned", True),
        (1, "pruned", True),
        (2, "chosen", True),
        (3, "pruned", True),
    ]
    # Its history is its own: the checks at 2, 4, 6 and 8.
    kept = [s.score for c in events.checks for s in c.candidates if s.candidate == 2]
    assert [h.score for h in result.history] == kept and len(kept) == 4
    # Kept at step 3, the candidate went on alone: it is the single run of its seed to float
    # rounding (one uint8 level at most), like every candidate of a search.
    alone = single(shapes_model, PROMPT, BASE["seed"] + 2, **CFG)
    assert same_image(result, alone)
    assert result.final_score == pytest.approx(alone.final_score, abs=1e-5)


def test_a_keep_before_the_first_step_is_a_single_run_from_the_start(
    shapes_model: LoadedModel,
) -> None:
    params = shapes_model.resolve(
        RequestedParams(PROMPT, candidates=3, search=SearchSettings(), **{**BASE, **CFG})
    )
    control, events = RunControl(), Recorder()
    control.keep_candidate(1, "q")
    result = run_monitored(shapes_model, params, registry_for(shapes_model), control, events)
    (applied,) = events.of(Applied)
    assert applied.step == 1  # taken before the first step, applied at its boundary
    assert [c.fate for c in result.candidates] == ["pruned", "chosen", "pruned"]
    assert same_image(result, single(shapes_model, PROMPT, BASE["seed"] + 1, **CFG))


def test_candidate_requests_that_cannot_apply_are_refused_with_a_code(
    shapes_model: LoadedModel,
) -> None:
    def act(control: RunControl) -> None:
        control.stop_candidate(0, "first")
        control.stop_candidate(0, "again")  # no longer live
        control.stop_candidate(7, "none")  # never one
        control.keep_candidate(2, "keep")
        control.stop_candidate(2, "last")  # the last one live

    result, events, sizes = steered(shapes_model, 3, SearchSettings("best_of_n"), {2: act})
    errors = {e.request_id: e for e in events.of(Error)}
    assert sorted(errors) == ["again", "last", "none"]
    assert all(
        e.code == ErrorCode.INVALID_VALUE and e.field == "candidate" for e in errors.values()
    )
    assert "was pruned at step 2" in errors["again"].message
    assert [a.request_id for a in events.of(Applied)] == ["first", "keep"]
    assert sizes[2:] == [2] * 6
    assert result.candidates[2].fate == "chosen"
    with pytest.raises(ParamError):
        RunControl().stop_candidate(-1)


def test_a_strategy_setting_changes_at_the_next_check(shapes_model: LoadedModel) -> None:
    def act(control: RunControl) -> None:
        control.set({"keep_fraction": 0.25, "check_interval": 3}, "q")
        control.set({"fk_lambda": 2.0}, "wrong")

    settings = SearchSettings("prune", keep_fraction=0.5, prune_every=1)
    result, events, sizes = steered(shapes_model, 8, settings, {1: act})
    (applied,) = events.of(Applied)
    assert [(c.setting, c.old, c.new) for c in applied.search_changes] == [
        ("keep_fraction", 0.5, 0.25)
    ]
    assert [(c.setting, c.new) for c in applied.changes] == [("check_interval", 3.0)]
    (error,) = events.of(Error)
    assert error.request_id == "wrong" and "a prune search has no fk_lambda" in error.message
    # The first check comes at step 3 (interval 3) and keeps a quarter: 8 → 2, then 2 → 1.
    assert [c.step for c in events.checks] == [3, 6, 8]
    assert [len(c.candidates) for c in events.checks] == [8, 2, 1]
    assert sizes == [16, 16, 16, 4, 4, 4, 2, 2]


def test_every_finished_candidate_image_on_request(shapes_model: LoadedModel) -> None:
    actions = {3: lambda c: c.stop_candidate(0)}
    result, _, _ = steered(shapes_model, 3, SearchSettings(images="all"), actions)
    images = {c.candidate: c.image for c in result.candidates}
    assert images[0] is None  # stopped: no final image
    chosen = next(c.candidate for c in result.candidates if c.fate == "chosen")
    assert images[chosen] is None  # it is result.image
    other = next(c for c in result.candidates if c.fate == "finished")
    assert other.image is not None and other.image.data[:4] == b"\x89PNG"
    alone = single(shapes_model, PROMPT, BASE["seed"] + other.candidate, **CFG)
    as_finished = Finished("completed", 8, 0.0, None, (), other.image, None)
    assert same_image(as_finished, alone)
    assert pixels(result).shape == pixels(as_finished).shape


def test_all_images_are_refused_when_they_may_not_fit_in_one_frame(
    sd_model: LoadedModel,
) -> None:
    request = RequestedParams(
        "a cat", candidates=8, search=SearchSettings(images="all"), width=1024, height=1024
    )
    with pytest.raises(ParamError) as refused:
        sd_model.resolve(request)
    assert refused.value.field == "search.images"
