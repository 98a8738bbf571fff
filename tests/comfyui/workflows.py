"""The workflow the ComfyUI tests post (API format), built on the test's tiny models."""

from __future__ import annotations

import copy
from typing import Any

#: The node ids of :func:`scaling_workflow`.
SCALING_NODE = "8"
SAVE_NODE = "9"
HISTORY_NODE = "10"

BASE_WORKFLOW: dict[str, dict[str, Any]] = {
    "1": {
        "class_type": "UNETLoader",
        "inputs": {"unet_name": "tiny_sd15.safetensors", "weight_dtype": "default"},
    },
    "3": {"class_type": "StepwatchTestConditioning", "inputs": {"seed": 1}},
    "4": {"class_type": "StepwatchTestConditioning", "inputs": {"seed": 2}},
    "5": {
        "class_type": "EmptyLatentImage",
        "inputs": {"width": 128, "height": 128, "batch_size": 1},
    },
    "6": {"class_type": "VAELoader", "inputs": {"vae_name": "taesd"}},
    "7": {
        "class_type": "StepwatchVerifierSelection",
        "inputs": {"verifier_type": "simple", "quality_threshold": 0.5, "custom_verifier": ""},
    },
    SCALING_NODE: {
        "class_type": "StepwatchInferenceScaling",
        "inputs": {
            "verifier_id": ["7", 0],
            "model": ["1", 0],
            "positive": ["3", 0],
            "negative": ["4", 0],
            "latent_image": ["5", 0],
            "vae": ["6", 0],
            "seed": 7,
            "steps": 6,
            "cfg": 4.0,
            "sampler_name": "euler",
            "scheduler": "normal",
            "check_interval": 2,
            "quality_threshold": 0.0,
            "scale_factor": 1.5,
            "early_stop": False,
            "patience": 1,
            "min_steps": 0,
            "finish_steps": 2,
            "cfg_max": 0.0,
        },
    },
    SAVE_NODE: {
        "class_type": "SaveLatent",
        "inputs": {"samples": [SCALING_NODE, 0], "filename_prefix": "stepwatch"},
    },
    HISTORY_NODE: {"class_type": "PreviewAny", "inputs": {"source": [SCALING_NODE, 1]}},
}


def scaling_workflow(
    *, probe: str | None = None, verifier: dict[str, Any] | None = None, **scaling: Any
) -> dict[str, Any]:
    """The test workflow with the InferenceScalingNode's inputs in ``scaling`` changed.

    ``probe`` puts the CFG probe (recording to that path) between the model and the node.
    """
    workflow = copy.deepcopy(BASE_WORKFLOW)
    workflow[SCALING_NODE]["inputs"].update(scaling)
    workflow["7"]["inputs"].update(verifier or {})
    if probe is not None:
        workflow["2"] = {
            "class_type": "StepwatchTestCFGProbe",
            "inputs": {"model": ["1", 0], "record_path": probe},
        }
        workflow[SCALING_NODE]["inputs"]["model"] = ["2", 0]
    return workflow
