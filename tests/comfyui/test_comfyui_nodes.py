"""stepwatch's nodes in a real ComfyUI (``--cpu``, loopback), driven through /prompt and its WS."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from comfyui_server import REPO, ComfyUI, Execution, watch
from safetensors.torch import load_file
from workflows import HISTORY_NODE, SAVE_NODE, SCALING_NODE, scaling_workflow

from stepwatch.protocol import Check
from stepwatch.server.comfyui.history import HISTORY_FILE, QualityHistory
from stepwatch.server.engine.curves import MIN_RUNS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def history_of(execution: Execution) -> dict[str, Any]:
    """The quality history as the PreviewAny node showed it (its ``executed`` message)."""
    (shown,) = [e["output"] for e in execution.of("executed") if e["node"] == HISTORY_NODE]
    history: dict[str, Any] = json.loads(shown["text"][0])
    return history


def test_nodes_load_with_no_import_errors(comfyui: ComfyUI) -> None:
    info = comfyui.get("/object_info")
    scaling = info["StepwatchInferenceScaling"]["input"]
    assert set(scaling["required"]) >= {
        "verifier_id",
        "model",
        "positive",
        "negative",
        "latent_image",
        "seed",
        "steps",
        "cfg",
        "sampler_name",
        "scheduler",
        "check_interval",
        "quality_threshold",
        "scale_factor",
    }
    assert "vae" in scaling["optional"]
    assert scaling["optional"]["candidates"][1]["default"] == 1
    assert info["StepwatchInferenceScaling"]["output_name"][3] == "all_candidates"
    verifier_type = info["StepwatchVerifierSelection"]["input"]["required"]["verifier_type"]
    assert verifier_type[1]["options"][0] == "simple"
    assert verifier_type[1]["options"][-1] == "custom"
    # ComfyUI lists each custom node folder it imported, marking those that failed; its own
    # audio extras fail here for want of torchaudio (no wheel for this torch), which is not ours.
    lines = comfyui.log.read_text().splitlines()
    (ours,) = [line for line in lines if line.endswith("custom_nodes/stepwatch_nodes")]
    assert "IMPORT FAILED" not in ours
    assert not [line for line in lines if "stepwatch" in line and "Traceback" in line]


def test_workflow_runs_to_the_end_with_progress_and_previews(comfyui: ComfyUI) -> None:
    execution = comfyui.run(scaling_workflow())
    assert execution.outcome == "execution_success", execution.messages[-1]
    progress = [p for p in execution.of("progress") if p["node"] == SCALING_NODE]
    assert [p["value"] for p in progress] == [1, 2, 3, 4, 5, 6]
    assert len(execution.of("preview")) == 3  # one per check: steps 2, 4 and 6
    texts = [t.decode(errors="replace") for t in execution.of("text")]
    assert any("step 2/6" in text for text in texts)
    history = history_of(execution)
    assert history["finish"] == "completed"
    assert [check["step"] for check in history["checks"]] == [2, 4, 6]


def probe_records(path: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cfg_the_model_sees_changes_from_the_step_after_a_raise_on_a_clone(
    comfyui: ComfyUI, tmp_path: Path
) -> None:
    record = tmp_path / "cfg.jsonl"
    # The policy raises CFG only when a score is clearly below what this verifier and sampler
    # usually score; the nodes learn that from their quality history in ComfyUI's user folder.
    # Eight earlier runs (of a verifier no other test uses) that scored 0.99 at every check:
    book = QualityHistory(comfyui.base / "user" / HISTORY_FILE)
    usual = [Check(s, 0.99, {}, 1.0, "continue", "", 4.0, None) for s in (2, 4, 6)]
    for _ in range(MIN_RUNS):
        book.record("variance_edges", "euler", 6, usual)
    verifier = {"verifier_type": "variance_edges", "quality_threshold": 1.0}
    workflow = scaling_workflow(probe=str(record), verifier=verifier)
    del workflow[SCALING_NODE]["inputs"]["vae"]  # previews from the linear latent-to-RGB table
    # Then a plain KSampler on the same model object, after the stepwatch node: the raises were
    # made on the node's clone, so it samples at its own CFG.
    workflow["11"] = {
        "class_type": "KSampler",
        "inputs": {
            "model": ["2", 0],
            "seed": 1,
            "steps": 2,
            "cfg": 4.0,
            "sampler_name": "euler",
            "scheduler": "normal",
            "positive": ["3", 0],
            "negative": ["4", 0],
            "latent_image": [SCALING_NODE, 0],
            "denoise": 0.5,
        },
    }
    workflow["12"] = {
        "class_type": "SaveLatent",
        "inputs": {"samples": ["11", 0], "filename_prefix": "after_stepwatch"},
    }
    execution = comfyui.run(workflow)
    assert execution.outcome == "execution_success", execution.messages[-1]
    history = history_of(execution)
    assert [(c["step"], c["decision"], c["cfg"]) for c in history["checks"]] == [
        (2, "raise_cfg", 4.0),
        (4, "raise_cfg", 6.0),
        (6, "continue", 8.0),
    ]
    # euler calls the model once per step: steps 1-2 at the start CFG, 3-4 after the raise at
    # step 2, 5-6 after the raise at step 4 (capped at twice the start); then the KSampler's two.
    scales = [r["cond_scale"] for r in probe_records(record)]
    assert scales == [4.0, 4.0, 6.0, 6.0, 8.0, 8.0, 4.0, 4.0]
    assert f"history curve of {MIN_RUNS} runs" in history["checks"][0]["reason"]
    # The run itself joined the history it was judged by.
    assert book.curve("variance_edges", "euler").runs == MIN_RUNS + 1  # type: ignore[union-attr]


@pytest.mark.parametrize("finish_steps", [0, 1, 2])
def test_early_stop_ends_before_the_last_step_with_a_clean_latent(
    comfyui: ComfyUI, tmp_path: Path, finish_steps: int
) -> None:
    record = tmp_path / "cfg.jsonl"
    prefix = f"early_stop_{finish_steps}"
    workflow = scaling_workflow(
        probe=str(record),
        verifier={"quality_threshold": 0.0},
        steps=10,
        early_stop=True,
        min_steps=4,
        finish_steps=finish_steps,
    )
    workflow[SAVE_NODE]["inputs"]["filename_prefix"] = prefix
    execution = comfyui.run(workflow)
    assert execution.outcome == "execution_success", execution.messages[-1]
    history = history_of(execution)
    # `simple` reports no clean component, so the policy waits for a second holding check at or
    # after min_steps: the checks at steps 4 and 6.
    assert (history["finish"], history["steps_run"]) == ("early_stop", 6)
    assert history["checks"][-1]["decision"] == "early_stop"
    calls = probe_records(record)
    # six steps, then the tail: from the stop step's sigma down to zero in finish_steps steps
    # (none: the stop step's own x0 estimate)
    assert len(calls) == 6 + finish_steps < 10
    tail = [call["sigma"] for call in calls[6:]]
    expected_start = [calls[5]["sigma"]] if finish_steps else []
    assert tail[:1] == pytest.approx(expected_start)
    assert all(a > b for a, b in zip(tail, tail[1:], strict=False))
    # The latent is the model's denoised estimate at the last call (the tail's last step goes to
    # sigma 0), in the latent space ComfyUI's nodes pass around (SD 1.x: divided by 0.18215).
    latent = load_file(str(comfyui.output_file(prefix, ".latent")))["latent_tensor"]
    denoised = load_file(str(record) + ".last.safetensors")["denoised"]
    torch.testing.assert_close(latent, denoised / 0.18215, rtol=1e-4, atol=1e-4)


def test_interrupt_stops_the_node(comfyui: ComfyUI) -> None:
    workflow = scaling_workflow(steps=1000, check_interval=1000)
    with comfyui.socket() as (ws, client_id):
        execution = Execution(comfyui.queue(client_id, workflow))
        watch(ws, execution, timeout=120, until="progress")
        comfyui.post("/interrupt", {})
        watch(ws, execution, timeout=120)
    assert execution.outcome == "execution_interrupted"
    assert max(p["value"] for p in execution.of("progress")) < 1000
    assert comfyui.run(scaling_workflow(steps=2)).outcome == "execution_success"


@pytest.mark.parametrize(
    ("custom_verifier", "message"),
    [
        (
            "broken_verifier:Broken",
            "stepwatch: verifier broken_verifier:Broken failed: "
            "RuntimeError: the sharpness model is missing",
        ),
        (
            "no_such_module:Verifier",
            "stepwatch: cannot load verifier 'no_such_module:Verifier': "
            "No module named 'no_such_module'",
        ),
    ],
)
def test_a_failing_custom_verifier_fails_the_node_and_comfyui_goes_on(
    comfyui: ComfyUI, custom_verifier: str, message: str
) -> None:
    verifier = {"verifier_type": "custom", "custom_verifier": custom_verifier}
    execution = comfyui.run(scaling_workflow(verifier=verifier, steps=4))
    assert execution.outcome == "execution_error"
    (error,) = execution.of("execution_error")
    assert error["node_type"] == "StepwatchInferenceScaling"
    assert error["exception_message"].strip() == message
    assert comfyui.run(scaling_workflow(steps=2)).outcome == "execution_success"


def test_the_documented_workflow_uses_the_nodes_as_they_load(comfyui: ComfyUI) -> None:
    workflow = json.loads((REPO / "docs" / "comfyui-workflow.json").read_text())
    info = comfyui.get("/object_info")
    for node_id, node in workflow.items():
        schema = info[node["class_type"]]["input"]
        assert set(schema.get("required", {})) <= set(node["inputs"]), node_id
        assert set(node["inputs"]) <= set(schema.get("required", {})) | set(
            schema.get("optional", {})
        ), node_id
        for value in node["inputs"].values():
            if isinstance(value, list):
                assert value[0] in workflow, (node_id, value)


def lone_ksampler(seed: int, sampler: str, prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A plain KSampler on the test workflow's model and inputs, and a SaveLatent for it."""
    return {
        "class_type": "KSampler",
        "inputs": {
            "model": ["1", 0],
            "seed": seed,
            "steps": 6,
            "cfg": 4.0,
            "sampler_name": sampler,
            "scheduler": "normal",
            "positive": ["3", 0],
            "negative": ["4", 0],
            "latent_image": ["5", 0],
            "denoise": 1.0,
        },
    }, {"class_type": "SaveLatent", "inputs": {"samples": None, "filename_prefix": prefix}}


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "dpmpp_2m_sde"])
def test_candidates_are_one_batch_and_each_is_the_lone_run_of_its_seed(
    comfyui: ComfyUI, tmp_path: Path, sampler: str
) -> None:
    record = tmp_path / "cfg.jsonl"
    workflow = scaling_workflow(probe=str(record), candidates=3, sampler_name=sampler)
    workflow[SAVE_NODE]["inputs"]["filename_prefix"] = f"cand-{sampler}-best"
    workflow["20"] = {
        "class_type": "SaveLatent",
        "inputs": {"samples": [SCALING_NODE, 3], "filename_prefix": f"cand-{sampler}-all"},
    }
    # The reference: ComfyUI's own KSampler, once per candidate seed (7, 8 and 9).
    for i, seed in enumerate((7, 8, 9)):
        sampler_node, save = lone_ksampler(seed, sampler, f"lone-{sampler}-{seed}")
        save["inputs"]["samples"] = [f"2{i + 1}", 0]
        workflow[f"2{i + 1}"], workflow[f"3{i + 1}"] = sampler_node, save
    execution = comfyui.run(workflow)
    assert execution.outcome == "execution_success", execution.messages[-1]
    history = history_of(execution)
    candidates = history["candidates"]
    assert [c["seed"] for c in candidates] == [7, 8, 9]
    assert all([check["step"] for check in c["checks"]] == [2, 4, 6] for c in candidates)
    finals = [c["final_score"] for c in candidates]
    chosen = history["chosen"]
    assert finals[chosen] == max(finals) and finals.index(max(finals)) == chosen
    assert history["seed"] == 7 + chosen
    assert [c["fate"] for c in candidates].count("chosen") == 1
    assert history["checks"] == [
        {**check, "elapsed": shown["elapsed"]}
        for check, shown in zip(candidates[chosen]["checks"], history["checks"], strict=True)
    ]
    assert history["verifier_calls"] == 3  # every candidate scored in one call per check
    texts = [t.decode(errors="replace") for t in execution.of("text")]
    assert any("best_of_n of 3" in text for text in texts)
    # One sampler run over a batch of three: one model call per step (these samplers make one),
    # every one of them with all three candidates.
    calls = probe_records(record)
    assert [call["batch"] for call in calls] == [3] * 6
    batch = load_file(str(comfyui.output_file(f"cand-{sampler}-all", ".latent")))["latent_tensor"]
    best = load_file(str(comfyui.output_file(f"cand-{sampler}-best", ".latent")))["latent_tensor"]
    assert batch.shape == (3, 4, 16, 16)
    torch.testing.assert_close(best, batch[chosen : chosen + 1], rtol=0, atol=0)
    lone = [
        load_file(str(comfyui.output_file(f"lone-{sampler}-{seed}", ".latent")))["latent_tensor"]
        for seed in (7, 8, 9)
    ]
    for i in range(3):
        # Batched and lone matrix products round differently (on this CPU, by up to about 4e-4
        # after six steps of the random tiny model); the candidates differ by far more.
        torch.testing.assert_close(batch[i : i + 1], lone[i], rtol=1e-3, atol=2e-3)
        assert (batch[i] - batch[(i + 1) % 3]).abs().max() > 0.1


def test_one_candidate_outputs_the_latent_twice(comfyui: ComfyUI) -> None:
    workflow = scaling_workflow(candidates=1, steps=2)
    workflow["20"] = {
        "class_type": "SaveLatent",
        "inputs": {"samples": [SCALING_NODE, 3], "filename_prefix": "single-all"},
    }
    workflow[SAVE_NODE]["inputs"]["filename_prefix"] = "single-latent"
    execution = comfyui.run(workflow)
    assert execution.outcome == "execution_success", execution.messages[-1]
    assert "candidates" not in history_of(execution)
    one = load_file(str(comfyui.output_file("single-all", ".latent")))["latent_tensor"]
    latent = load_file(str(comfyui.output_file("single-latent", ".latent")))["latent_tensor"]
    torch.testing.assert_close(one, latent, rtol=0, atol=0)
