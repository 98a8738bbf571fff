"""stepwatch's two ComfyUI nodes, in ComfyUI's V3 schema pinned to ``comfy_api.v0_0_2``.

- **VerifierSelectionNode** (``StepwatchVerifierSelection``): ``verifier_type`` (the verifiers
  stepwatch registers in this Python: ``simple``, installed ``stepwatch.verifiers`` entry points,
  and ``custom``, which takes ``custom_verifier``, a ``module:callable`` factory as the server's
  configuration names one) and ``quality_threshold``; outputs ``verifier_id``.
- **InferenceScalingNode** (``StepwatchInferenceScaling``): samples with checks (see
  :mod:`stepwatch.server.comfyui.sampling`) and outputs the denoised ``latent``, the quality
  history as JSON and a chart of it. Its ``quality_threshold`` overrides the verifier's when it
  is above 0; at 0 the VerifierSelectionNode's threshold applies. Its ``candidates`` N > 1 is
  best-of-N (:mod:`stepwatch.server.comfyui.candidates`): N candidates, candidate *i* from the
  noise of ``seed + i``, denoised as one batch of ComfyUI's sampler, each scored at every check
  and at the last step; ``latent`` is the best by final score and ``all_candidates`` the batch of
  all N (at N = 1, the ``latent`` itself). ``best_of_n`` is the only strategy the node offers,
  and in it CFG stays at ``cfg`` and nothing stops early.

ComfyUI loads them through :func:`comfy_entrypoint`, which the shim that
``stepwatch comfyui-install`` writes into ``custom_nodes/`` re-exports. Only ComfyUI's Python
imports this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import comfy.samplers
import folder_paths
import torch
from comfy_api.v0_0_2 import ComfyExtension, io
from typing_extensions import override

from server import PromptServer
from stepwatch.protocol import limits as wire

from .adapter import (
    CUSTOM,
    DEFAULT_THRESHOLD,
    DEFAULTS,
    NodeError,
    QualityWatch,
    VerifierSelection,
    WatchSettings,
    make_registry,
    verifier_choices,
)
from .candidates import CandidateWatch, candidate_seeds
from .chart import candidates_chart, quality_chart
from .history import HISTORY_FILE, QualityHistory
from .sampling import SamplingRequest, make_decoder, sample_candidates, sample_monitored

__all__ = [
    "InferenceScalingNode",
    "StepwatchExtension",
    "VerifierSelectionNode",
    "comfy_entrypoint",
]

CATEGORY = "sampling/stepwatch"


class VerifierSelectionNode(io.ComfyNode):
    """Choose the verifier that scores the x0 previews, and its quality threshold."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="StepwatchVerifierSelection",
            display_name="Verifier Selection (stepwatch)",
            category=CATEGORY,
            description="Choose the verifier that scores the previews, and its threshold.",
            inputs=[
                io.Combo.Input(
                    "verifier_type",
                    options=verifier_choices(make_registry()),
                    tooltip=f"{CUSTOM}: the module:callable in custom_verifier",
                ),
                io.Float.Input(
                    "quality_threshold",
                    default=DEFAULT_THRESHOLD,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                ),
                io.String.Input(
                    "custom_verifier",
                    default="",
                    optional=True,
                    tooltip="module:callable returning a stepwatch verifier (verifier_type custom)",
                ),
            ],
            outputs=[io.String.Output("verifier_id", display_name="verifier_id")],
        )

    @classmethod
    def execute(
        cls, verifier_type: str, quality_threshold: float, custom_verifier: str = ""
    ) -> io.NodeOutput:
        selection = VerifierSelection.choose(verifier_type, quality_threshold, custom_verifier)
        return io.NodeOutput(str(selection))


class InferenceScalingNode(io.ComfyNode):
    """Sample with quality checks: raise CFG below the threshold, stop early above it."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="StepwatchInferenceScaling",
            display_name="Inference Scaling (stepwatch)",
            category=CATEGORY,
            description=(
                "KSampler that scores the x0 estimate every check_interval steps with a "
                "stepwatch verifier, raises CFG by scale_factor below the threshold and can "
                "stop early above it. candidates N > 1: best-of-N, N candidates (seeds seed to "
                "seed + N - 1) in one batch of the sampler, every one scored at each check, the "
                "best by final score returned as latent and all N as all_candidates; the only "
                "strategy offered is best_of_n (no pruning), and it keeps CFG at cfg with no "
                "early stop."
            ),
            inputs=[
                io.String.Input("verifier_id", force_input=True),
                io.Model.Input("model"),
                io.Conditioning.Input("positive"),
                io.Conditioning.Input("negative"),
                io.Latent.Input("latent_image"),
                io.Vae.Input("vae", optional=True),
                io.Int.Input(
                    "seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True
                ),
                io.Int.Input("steps", default=20, min=1, max=wire.MAX_STEPS),
                io.Float.Input("cfg", default=7.0, min=0.0, max=wire.MAX_CFG, step=0.1, round=0.01),
                io.Combo.Input("sampler_name", options=comfy.samplers.SAMPLER_NAMES),
                io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES),
                io.Int.Input(
                    "check_interval", default=DEFAULTS.check_interval, min=1, max=wire.MAX_STEPS
                ),
                io.Float.Input(
                    "quality_threshold",
                    default=0.0,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="0: the VerifierSelectionNode's threshold",
                ),
                io.Float.Input(
                    "scale_factor",
                    default=DEFAULTS.scale_factor,
                    min=wire.MIN_SCALE_FACTOR,
                    max=wire.MAX_SCALE_FACTOR,
                    step=0.01,
                ),
                io.Boolean.Input("early_stop", default=False, optional=True),
                io.Int.Input(
                    "patience",
                    default=DEFAULTS.patience,
                    min=wire.MIN_PATIENCE,
                    max=wire.MAX_PATIENCE,
                    optional=True,
                ),
                io.Int.Input(
                    "min_steps",
                    default=0,
                    min=0,
                    max=wire.MAX_STEPS,
                    optional=True,
                    tooltip="earliest early stop; 0: half the steps",
                ),
                io.Int.Input(
                    "finish_steps",
                    default=2,
                    min=0,
                    max=100,
                    optional=True,
                    tooltip="steps of the clean finish after an early stop; 0: the x0 estimate",
                ),
                io.String.Input(
                    "prompt",
                    default="",
                    multiline=True,
                    optional=True,
                    tooltip="the text prompt-aware verifiers score against (conditioning has none)",
                ),
                io.Float.Input(
                    "cfg_max",
                    default=0.0,
                    min=0.0,
                    max=wire.MAX_CFG,
                    step=0.1,
                    optional=True,
                    tooltip="cap on CFG raises; 0: twice cfg",
                ),
                io.Int.Input(
                    "candidates",
                    default=1,
                    min=1,
                    max=wire.MAX_CANDIDATES,
                    optional=True,
                    tooltip="best-of-N: candidate i from seed + i, all in one batch; the best "
                    "by final score is the latent (no CFG raise or early stop when above 1)",
                ),
            ],
            outputs=[
                io.Latent.Output("latent", display_name="latent"),
                io.String.Output("quality_history", display_name="quality_history"),
                io.Image.Output("quality_chart", display_name="quality_chart"),
                io.Latent.Output("all_candidates", display_name="all_candidates"),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(
        cls,
        verifier_id: str,
        model: Any,
        positive: Any,
        negative: Any,
        latent_image: dict[str, Any],
        seed: int,
        steps: int,
        cfg: float,
        sampler_name: str,
        scheduler: str,
        check_interval: int,
        quality_threshold: float,
        scale_factor: float,
        vae: Any | None = None,
        early_stop: bool = False,
        patience: int = DEFAULTS.patience,
        min_steps: int = 0,
        finish_steps: int = 2,
        cfg_max: float = 0.0,
        prompt: str = "",
        candidates: int = 1,
    ) -> io.NodeOutput:
        selection = VerifierSelection.parse(verifier_id)
        history_book = QualityHistory(Path(folder_paths.get_user_directory()) / HISTORY_FILE)
        settings = WatchSettings(
            steps=steps,
            cfg=cfg,
            check_interval=check_interval,
            quality_threshold=quality_threshold or selection.quality_threshold,
            scale_factor=scale_factor,
            cfg_max=cfg_max,
            early_stop=early_stop,
            patience=patience,
            min_steps=min_steps,
            curve=history_book.curve(selection.verifier, sampler_name),
        )
        verifier = selection.resolve(make_registry())
        watch = QualityWatch(verifier, selection.verifier, settings, prompt=prompt)
        try:
            decode = make_decoder(model, vae)
        except ValueError as exc:
            raise NodeError(f"stepwatch: {exc}") from exc
        request = SamplingRequest(
            model=model,
            positive=positive,
            negative=negative,
            latent=latent_image,
            seed=seed,
            sampler_name=sampler_name,
            scheduler=scheduler,
            finish_steps=finish_steps,
        )
        node_id = cls.hidden.unique_id

        def report(text: str) -> None:
            server = PromptServer.instance
            if server is not None and node_id is not None:
                server.send_progress_text(text, node_id)

        if candidates > 1:
            search = CandidateWatch(
                verifier,
                selection.verifier,
                candidate_seeds(seed, candidates),
                steps=steps,
                cfg=cfg,
                check_interval=check_interval,
                quality_threshold=settings.quality_threshold,
                prompt=prompt,
            )
            chosen, everyone = sample_candidates(request, search, decode, report)
            for history in search.histories:
                history_book.record(selection.verifier, sampler_name, steps, history)
            picture = candidates_chart(search.histories, steps, search.leader())
            return io.NodeOutput(
                chosen.latent,
                search.history_json(chosen.steps_run),
                torch.from_numpy(picture)[None],
                everyone,
            )
        result = sample_monitored(request, watch, decode, report)
        history_book.record(selection.verifier, sampler_name, steps, watch.history)
        history = watch.history_json(result.finish, result.steps_run)
        chart = torch.from_numpy(quality_chart(watch.history, steps, watch.cfg))[None]
        return io.NodeOutput(result.latent, history, chart, result.latent)


class StepwatchExtension(ComfyExtension):
    """The node list ComfyUI asks for when it loads the extension."""

    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [VerifierSelectionNode, InferenceScalingNode]


async def comfy_entrypoint() -> StepwatchExtension:
    """ComfyUI's V3 extension entry point."""
    return StepwatchExtension()
