"""stepwatch's nodes in a real ComfyUI (``--cpu``, loopback), driven through /prompt and its WS."""

from __future__ import annotations

import json
from typing import Any

import pytest
from comfyui_server import ComfyUI, Execution
from conftest import HISTORY_NODE, SCALING_NODE, scaling_workflow

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def history_of(comfyui: ComfyUI, execution: Execution) -> dict[str, Any]:
    outputs = comfyui.get(f"/history/{execution.prompt_id}")[execution.prompt_id]["outputs"]
    history: dict[str, Any] = json.loads(outputs[HISTORY_NODE]["text"][0])
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
    history = history_of(comfyui, execution)
    assert history["finish"] == "completed"
    assert [check["step"] for check in history["checks"]] == [2, 4, 6]
