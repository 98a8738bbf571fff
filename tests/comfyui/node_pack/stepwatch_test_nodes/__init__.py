"""Test-only ComfyUI nodes for stepwatch's ComfyUI tests (copied into the test ComfyUI).

- ``StepwatchTestConditioning``: seeded random SD 1.x conditioning (1×77×768), standing in for
  a text encoder, which would be the largest model in the graph and is not what is under test.
- ``StepwatchTestCFGProbe``: a model patch whose ``sampler_cfg_function`` records, at every
  model call, the sigma, the guidance scale it was called with and the batch size (one JSON
  line each) and saves the last guided prediction, then computes standard CFG with that scale.
  Placed before the stepwatch node, it is the function stepwatch's live guidance delegates to,
  so it sees the scale the model really gets.
"""

from __future__ import annotations

import json

import torch
from comfy_api.v0_0_2 import ComfyExtension, io
from safetensors.torch import save_file
from typing_extensions import override


class TestConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="StepwatchTestConditioning",
            category="testing",
            inputs=[io.Int.Input("seed", default=0, min=0, max=2**31)],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, seed: int) -> io.NodeOutput:
        generator = torch.Generator().manual_seed(seed)
        embedding = torch.randn(1, 77, 768, generator=generator)
        return io.NodeOutput([[embedding, {}]])


class TestCFGProbe(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="StepwatchTestCFGProbe",
            category="testing",
            inputs=[io.Model.Input("model"), io.String.Input("record_path")],
            outputs=[io.Model.Output()],
            not_idempotent=True,
        )

    @classmethod
    def execute(cls, model, record_path: str) -> io.NodeOutput:
        patched = model.clone()

        def probe(args):
            cond, uncond, scale = args["cond"], args["uncond"], args["cond_scale"]
            guided = uncond + (cond - uncond) * scale
            with open(record_path, "a") as record:
                sigma = float(args["sigma"].flatten()[0])
                line = {"sigma": sigma, "cond_scale": float(scale), "batch": cond.shape[0]}
                record.write(json.dumps(line) + "\n")
            denoised = (args["input"] - guided).float().contiguous().cpu()
            save_file({"denoised": denoised}, record_path + ".last.safetensors")
            return guided

        patched.set_model_sampler_cfg_function(probe)
        return io.NodeOutput(patched)


class TestExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [TestConditioning, TestCFGProbe]


async def comfy_entrypoint() -> TestExtension:
    return TestExtension()
