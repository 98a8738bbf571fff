"""Search runs: candidates as lanes of one batch, pruned or resampled by the verifier."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import Recorder, make_lcm_pipeline

from stepwatch.protocol import Check, ErrorCode, Finished, SearchSettings
from stepwatch.server.engine.control import RunControl
from stepwatch.server.engine.errors import ParamError
from stepwatch.server.engine.lanes import DenoiserCounter
from stepwatch.server.engine.model import LoadedModel, describe_pipeline
from stepwatch.server.engine.monitor import run_monitored
from stepwatch.server.engine.params import RequestedParams
from stepwatch.server.engine.verifiers import VerifierRegistry

BASE: dict[str, Any] = {"steps": 8, "check_interval": 2, "early_stop": False, "seed": 11}


def registry_for(model: LoadedModel) -> VerifierRegistry:
    registry = VerifierRegistry()
    registry.register_model_verifiers(model.verifiers)
    return registry


def search(
    model: LoadedModel, prompt: str, candidates: int, settings: SearchSettings, **overrides: Any
) -> tuple[Finished, Recorder, list[int]]:
    params = model.resolve(
        RequestedParams(prompt, candidates=candidates, search=settings, **{**BASE, **overrides})
    )
    events = Recorder()
    counter = DenoiserCounter()
    counter.attach(model.pipeline)
    try:
        result = run_monitored(model, params, registry_for(model), RunControl(), events)
    finally:
        counter.detach()
    return result, events, counter.batch_sizes


def single(model: LoadedModel, prompt: str, seed: int, **overrides: Any) -> Finished:
    params = model.resolve(RequestedParams(prompt, **{**BASE, "seed": seed, **overrides}))
    return run_monitored(model, params, registry_for(model), RunControl(), Recorder())


# Batched CPU kernels (oneDNN convolutions, GEMM) block their sums by batch size, so a lane of
# a batch of N and the same sample alone differ by float rounding (measured: at most one
# uint8 level in a pixel, scores within 1e-6); sometimes they agree bit for bit.
PIXEL_TOLERANCE = 1
SCORE_TOLERANCE = 1e-5
FK_TOLERANCE = 1e-5


def same_image(a: Finished, b: Finished) -> bool:
    return int(np.abs(pixels(a).astype(int) - pixels(b).astype(int)).max()) <= PIXEL_TOLERANCE


def pixels(result: Finished) -> np.ndarray:
    assert result.image is not None
    return np.array(Image.open(io.BytesIO(result.image.data)))


#: Rows the denoiser takes per lane and step at CFG 3: two passes, but one for Flux, whose
#: guidance is an embedding of the scale.
PASSES = {"flux_model": 1}

# The flow-matching models (SD3, Flux) offer flow_euler only; the others a multistep solver,
# whose state the re-indexing must follow.
MULTISTEP: dict[str, Any] = {"sampler": "dpmpp_2m"}
FLOW = ("sd3_model", "flux_model")


@pytest.mark.parametrize(
    "model_name", ["shapes_model", "sd_model", "sdxl_model", "sd3_model", "flux_model"]
)
def test_each_candidate_of_best_of_n_is_the_single_run_of_its_seed(
    model_name: str, request: pytest.FixtureRequest
) -> None:
    model: LoadedModel = request.getfixturevalue(model_name)
    prompt = "red circle" if model_name == "shapes_model" else "a cat"
    result, events, sizes = search(model, prompt, 3, SearchSettings("best_of_n"), cfg=3.0)
    assert result.reason == "completed" and result.compute is not None
    chosen = next(c for c in result.candidates if c.fate == "chosen")
    alone = single(model, prompt, BASE["seed"] + chosen.candidate, cfg=3.0)
    assert same_image(result, alone)
    assert alone.final_score == pytest.approx(chosen.final_score, abs=SCORE_TOLERANCE)
    # Every check scored every candidate, each exactly as the single run of its seed did.
    checks = events.checks
    assert [len(c.candidates) for c in checks] == [3, 3, 3, 3]
    assert [h.score for h in alone.history] == pytest.approx(
        [next(s.score for s in c.candidates if s.candidate == chosen.candidate) for c in checks],
        abs=SCORE_TOLERANCE,
    )
    # One batch of three, CFG's two passes in it: 8 steps × 6 rows.
    passes = PASSES.get(model_name, 2)
    assert sizes == [3 * passes] * 8 and result.compute.denoiser_evaluations == 24 * passes
    assert result.compute.single_run_evaluations == 8 * passes
    assert result.compute.verifier_calls == 3 * 4 and result.compute.preview_decodes == 12


@pytest.mark.parametrize(
    "model_name", ["shapes_model", "sd_model", "sdxl_model", "sd3_model", "flux_model"]
)
def test_prune_shrinks_the_batch_and_the_survivor_is_unchanged(
    model_name: str, request: pytest.FixtureRequest
) -> None:
    model: LoadedModel = request.getfixturevalue(model_name)
    prompt = "blue square" if model_name == "shapes_model" else "a dog"
    settings = SearchSettings("prune", keep_fraction=0.5)
    solver = {} if model_name in FLOW else MULTISTEP
    result, events, sizes = search(model, prompt, 4, settings, cfg=3.0, **solver)
    # Checks at steps 2, 4, 6 prune 4 → 2 → 1; the last check (step 8) scores the survivor.
    passes = PASSES.get(model_name, 2)
    assert sizes == [passes * lanes for lanes in (4, 4, 2, 2, 1, 1, 1, 1)]
    assert result.compute is not None and result.compute.denoiser_evaluations == sum(sizes)
    fates = {c.candidate: c.fate for c in result.candidates}
    assert sorted(fates.values()) == ["chosen", "pruned", "pruned", "pruned"]
    assert [len(c.candidates) for c in events.checks] == [4, 2, 1, 1]
    pruned_at = sorted(c.steps_run for c in result.candidates if c.fate == "pruned")
    assert pruned_at == [2, 2, 4]
    survivor = next(c for c, f in fates.items() if f == "chosen")
    # The multistep solver's state followed the survivor through two re-indexings.
    alone = single(model, prompt, BASE["seed"] + survivor, cfg=3.0, **solver)
    assert same_image(result, alone)


def test_a_prune_schedule_checks_and_prunes_at_its_steps_only(shapes_model: LoadedModel) -> None:
    settings = SearchSettings("prune", keep_top=1, prune_steps=(3,))
    result, events, sizes = search(shapes_model, "blue square", 4, settings, check_interval=8)
    # The check interval alone would check at step 8; the schedule adds step 3 and prunes 4 → 1.
    assert [c.step for c in events.checks] == [3, 8]
    assert sizes == [8, 8, 8, 2, 2, 2, 2, 2]  # CFG 3: two rows a lane
    assert result.compute is not None and result.compute.verifier_calls == 4 + 1
    assert sorted(c.steps_run for c in result.candidates if c.fate == "pruned") == [3, 3, 3]
    survivor = next(c.candidate for c in result.candidates if c.fate == "chosen")
    scores = {s.candidate: s.score for s in events.checks[0].candidates}
    assert scores[survivor] == max(scores.values())
    assert same_image(result, single(shapes_model, "blue square", BASE["seed"] + survivor))


@pytest.mark.parametrize("model_name", ["sd_model", "sdxl_model"])
def test_fk_resamples_and_a_copy_continues_exactly_as_its_parent(
    model_name: str, request: pytest.FixtureRequest
) -> None:
    model: LoadedModel = request.getfixturevalue(model_name)
    # λ large and the ESS threshold at 1: every check with unequal scores resamples.
    settings = SearchSettings("fk", fk_lambda=200.0, ess_threshold=1.0, resample_every=1)
    result, events, sizes = search(model, "a fox", 4, settings, cfg=3.0, sampler="dpmpp_2m")
    assert sizes == [8] * 8  # FK keeps k lanes
    resampled = [s for c in events.checks for s in c.candidates if s.fate == "resampled"]
    assert resampled, "λ=200 with the threshold at 1 must resample"
    first = events.checks[0]
    parents = {s.parent for s in first.candidates if s.fate == "resampled"}
    assert all(p is not None for p in parents)
    final = {c.candidate: c for c in result.candidates}
    for child in (c for c in result.candidates if c.lineage):
        assert child.lineage[0] in final
    # Deterministic solver, re-indexed state: copies of one parent end on the same image, so
    # their final scores agree exactly with the parent that kept its own slot.
    groups: dict[tuple[int, ...], set[float | None]] = {}
    for c in result.candidates:
        root = c.lineage[-1:] or (c.candidate,)
        groups.setdefault(tuple(root), set()).add(c.final_score)
    assert all(len(scores) == 1 for scores in groups.values())
    assert len(groups) < 4


def test_a_single_candidate_is_todays_run(shapes_model: LoadedModel) -> None:
    params = shapes_model.resolve(RequestedParams("red circle", **BASE))
    assert params.parameters.candidates == 1 and params.parameters.search is None
    events = Recorder()
    result = run_monitored(shapes_model, params, registry_for(shapes_model), RunControl(), events)
    assert result.candidates == () and result.compute is None
    assert all(c.candidates == () for c in events.of(Check))


def distinct_rows(pipeline: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Give each lane conditioning of its own, as lanes of different prompts would have: every
    tensor ``encode_prompt`` returns gets row i + 0.5·i (per-token ids, of another length, stay)."""
    encode = pipeline.encode_prompt

    def encode_distinct(*args: Any, **kwargs: Any) -> Any:
        lanes = kwargs.get("num_images_per_prompt", 1)
        out = encode(*args, **kwargs)
        return tuple(
            t + 0.5 * torch.arange(lanes, dtype=t.dtype).view(-1, *[1] * (t.ndim - 1))
            if isinstance(t, torch.Tensor) and t.ndim and t.shape[0] == lanes
            else t
            for t in out
        )

    monkeypatch.setattr(pipeline, "encode_prompt", encode_distinct)


@pytest.mark.parametrize("model_name", ["sd_model", "sdxl_model", "sd3_model", "flux_model"])
def test_an_fk_copy_continues_as_its_root_did_with_its_own_conditioning(
    model_name: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both runs denoise batches of four throughout, so their lanes agree bit for bit (measured);
    # a held tensor left in the batch's first order moves a copy's score by 1e-3 or more.
    model: LoadedModel = request.getfixturevalue(model_name)
    distinct_rows(model.pipeline, monkeypatch)
    solver = {} if model_name in FLOW else MULTISTEP
    # The same four lanes, never resampled: where each lane's own trajectory ends.
    reference, _, _ = search(model, "a fox", 4, SearchSettings("best_of_n"), cfg=3.0, **solver)
    ends = {c.candidate: c.final_score or 0.0 for c in reference.candidates}
    # The tiny models' scores are small (1e-4 to 1e-2): compare them relative to their size.
    apart = min(abs(a - b) / max(a, b) for a in ends.values() for b in ends.values() if a != b)
    assert len(set(ends.values())) == 4 and apart > 100 * FK_TOLERANCE, "lanes must differ"
    # λ large and the ESS threshold at 1: every check with unequal scores resamples.
    settings = SearchSettings("fk", fk_lambda=200.0, ess_threshold=1.0, resample_every=1)
    result, events, sizes = search(model, "a fox", 4, settings, cfg=3.0, **solver)
    assert sizes == [4 * PASSES.get(model_name, 2)] * 8
    copies = [c for c in result.candidates if c.lineage]
    assert copies, "λ=200 with the threshold at 1 must resample"
    # Deterministic solvers: a copy, in another slot of the batch, ends exactly where its root
    # lane ended in the reference: its latents, solver state and conditioning (pooled
    # embeddings, Flux's guidance vector, held outside the step callback) came with it.
    for candidate in result.candidates:
        root = candidate.lineage[0] if candidate.lineage else candidate.candidate
        assert candidate.final_score == pytest.approx(ends[root], rel=FK_TOLERANCE)


def test_strategies_that_reindex_refuse_pipelines_that_cannot() -> None:
    # LCM's guidance embedding would follow the lanes, but no test says its whole batch does.
    model = describe_pipeline("tiny-lcm", make_lcm_pipeline())
    result, _, _ = search(model, "a cat", 2, SearchSettings("prune"), steps=2)
    assert result.reason == "failed" and result.error is not None
    assert result.error.code is ErrorCode.INVALID_VALUE
    assert "LatentConsistencyModelPipeline" in result.error.message
    assert "best_of_n" in result.error.message


def test_search_settings_out_of_bounds_are_a_parameter_error() -> None:
    with pytest.raises(ParamError) as refused:
        RequestedParams("red circle", candidates=2, search=SearchSettings("prune", 2.0))
    assert refused.value.field == "search.keep_fraction"
    assert refused.value.code is ErrorCode.INVALID_VALUE
    with pytest.raises(ParamError) as too_many:
        RequestedParams("red circle", candidates=65)
    assert too_many.value.field == "candidates"
