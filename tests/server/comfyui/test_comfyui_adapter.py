"""The ComfyUI nodes' bridge to the engine, without ComfyUI: verifier ids, checks, decisions."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
import torch

from stepwatch.server.comfyui.adapter import (
    NodeError,
    QualityWatch,
    VerifierSelection,
    WatchSettings,
    linear_preview,
    make_registry,
    verifier_choices,
)
from stepwatch.server.engine.curves import ExpectedCurve
from stepwatch.server.engine.verifiers import VerifierRegistry, VerifierScore


class FixedScores:
    """A verifier at the declared interface: answers the scores it was given, in order."""

    def __init__(self, *scores: float) -> None:
        self.scores = list(scores)

    def score(self, images: torch.Tensor, prompt: str) -> Sequence[VerifierScore | float]:
        return [self.scores.pop(0)]


class Failing:
    def score(self, images: torch.Tensor, prompt: str) -> Sequence[VerifierScore | float]:
        raise RuntimeError("no weights")


IMAGE = torch.zeros(1, 3, 8, 8)


# What these checks are judged against: a model that usually scores 0.9 (low band 0.8).
USUAL = ExpectedCurve(progress=(1.0,), median=(0.9,), low=(0.8,), runs=10)


def watch(verifier: object, **settings: object) -> QualityWatch:
    chosen = {
        "steps": 10,
        "cfg": 4.0,
        "check_interval": 2,
        "quality_threshold": 0.5,
        "curve": USUAL,
    }
    chosen.update(settings)
    return QualityWatch(verifier, "fixed", WatchSettings(**chosen))  # type: ignore[arg-type]


def test_the_choices_are_the_registry_with_simple_first_and_custom_last() -> None:
    registry = VerifierRegistry()
    registry.register("aesthetic", FixedScores)
    assert verifier_choices(registry) == [
        "simple", "aesthetic", "structure", "variance_edges", "custom",
    ]  # fmt: skip
    assert verifier_choices(make_registry())[0] == "simple"


@pytest.mark.parametrize(
    ("kind", "custom", "text"),
    [("simple", "", "simple@0.6"), ("custom", " mypkg.verify:Sharp ", "mypkg.verify:Sharp@0.6")],
)
def test_a_selection_round_trips_through_its_verifier_id(kind: str, custom: str, text: str) -> None:
    selection = VerifierSelection.choose(kind, 0.6, custom)
    assert str(selection) == text
    assert VerifierSelection.parse(text) == selection


@pytest.mark.parametrize("text", ["simple", "simple@", "@0.5", "simple@1.5", "simple@high"])
def test_a_malformed_verifier_id_is_a_clear_node_error(text: str) -> None:
    with pytest.raises(NodeError, match="a verifier_id is ID@THRESHOLD"):
        VerifierSelection.parse(text)


@pytest.mark.parametrize(
    ("custom", "message"),
    [("", "needs custom_verifier"), ("justamodule", "module:callable"), ("a:b@c", "module:call")],
)
def test_a_custom_choice_needs_a_module_callable(custom: str, message: str) -> None:
    with pytest.raises(NodeError, match=message):
        VerifierSelection.choose("custom", 0.5, custom)


def test_a_threshold_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(NodeError, match=r"quality_threshold must be in \[0, 1\]"):
        VerifierSelection.choose("simple", 1.5)


def test_resolving_finds_registered_and_custom_verifiers_and_names_unknown_ones() -> None:
    registry = VerifierRegistry()
    assert VerifierSelection("simple", 0.5).resolve(registry) is registry.get("simple")
    custom = VerifierSelection("stepwatch.server.engine.verifiers:VarianceEdgeVerifier", 0.5)
    assert type(custom.resolve(registry)).__name__ == "VarianceEdgeVerifier"
    with pytest.raises(NodeError, match="unknown verifier 'sharp'"):
        VerifierSelection("sharp", 0.5).resolve(registry)
    with pytest.raises(NodeError, match="cannot load verifier 'nope:X'"):
        VerifierSelection("nope:X", 0.5).resolve(VerifierRegistry())


def test_a_low_score_raises_cfg_from_the_next_check_on_up_to_the_cap() -> None:
    quality = watch(FixedScores(0.1, 0.1, 0.1), scale_factor=1.5)
    assert quality.due(2) and not quality.due(3)
    assert quality.check(2, IMAGE).decision == "raise_cfg"
    assert quality.cfg == 6.0
    quality.check(4, IMAGE)
    assert quality.cfg == 8.0  # twice the start CFG: the default cap
    assert quality.check(6, IMAGE).decision == "continue"
    assert [record.cfg for record in quality.history] == [4.0, 6.0, 8.0]


def test_a_high_score_stops_early_only_when_asked_and_after_min_steps() -> None:
    assert watch(FixedScores(0.9)).check(6, IMAGE).decision == "continue"
    stopping = watch(FixedScores(0.9, 0.9, 0.9), early_stop=True, patience=1)
    assert stopping.check(2, IMAGE).decision == "continue"  # before half the steps
    # A verifier without a clean component needs a second holding check to show it settled.
    assert stopping.check(6, IMAGE).decision == "continue"
    assert stopping.check(8, IMAGE).decision == "early_stop"


def test_without_a_learned_curve_a_low_score_raises_nothing() -> None:
    quality = watch(FixedScores(0.1), curve=None)
    assert quality.check(2, IMAGE).decision == "continue"
    assert "no expected-score curve" in quality.history[0].reason


def test_cfg_off_is_never_raised() -> None:
    quality = watch(FixedScores(0.1), cfg=1.0)
    assert quality.check(2, IMAGE).decision == "continue"
    assert "CFG is off" in quality.history[0].reason


def test_a_failing_verifier_is_a_node_error_naming_it() -> None:
    with pytest.raises(NodeError, match="verifier fixed failed: RuntimeError: no weights"):
        watch(Failing()).check(2, IMAGE)


def test_a_score_outside_the_contract_is_a_node_error() -> None:
    with pytest.raises(NodeError, match=r"score must be a number in \[0, 1\]"):
        watch(FixedScores(1.5)).check(2, IMAGE)


def test_the_history_json_holds_every_check() -> None:
    quality = watch(FixedScores(0.1, 0.7))
    quality.check(2, IMAGE)
    quality.check(4, IMAGE)
    history = json.loads(quality.history_json("completed", 10))
    assert history["finish"] == "completed" and history["final_cfg"] == 5.0
    assert [(c["step"], c["decision"], c["cfg"]) for c in history["checks"]] == [
        (2, "raise_cfg", 4.0),
        (4, "continue", 5.0),
    ]


def test_the_linear_preview_maps_latent_channels_to_rgb_in_unit_range() -> None:
    preview = linear_preview([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], None)
    rgb = preview.decode(torch.tensor([[[[1.0]], [[-1.0]]]]))
    assert rgb.shape == (1, 3, 1, 1)
    assert rgb.flatten().tolist() == [1.0, 0.0, 0.5]
