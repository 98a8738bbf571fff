"""Pipelines the engine cannot watch are refused when they load, in one line that says why:
a video pipeline, a tiny VAE made for another latent space, Kandinsky 3 (a pipeline without a
step callback that the engine does not drive itself is refused too: see test_driven_loop.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import (
    AnimateDiffPipeline,
    DDIMScheduler,
    MotionAdapter,
)
from tiny_models import (
    SD_BETAS,
    make_sd3_pipeline,
    make_tiny_autoencoder,
    tiny_sd_parts,
    tiny_sd_unet,
    tiny_tokenizer,
)
from tiny_transformers import make_kandinsky3_pipeline

from stepwatch.server.engine.errors import ModelError
from stepwatch.server.engine.model import describe_pipeline


def tiny_animatediff_pipeline() -> AnimateDiffPipeline:
    """A tiny AnimateDiff pipeline (text-to-video over an SD 1.x UNet with motion modules)."""
    torch.manual_seed(0)
    adapter = MotionAdapter(
        block_out_channels=(4, 8),
        motion_layers_per_block=1,
        motion_norm_num_groups=2,
        motion_num_attention_heads=2,
        motion_max_seq_length=8,
    )
    return AnimateDiffPipeline(
        unet=tiny_sd_unet(),
        motion_adapter=adapter,
        scheduler=DDIMScheduler(**SD_BETAS),
        **tiny_sd_parts(tiny_tokenizer()),
    )


def test_video_pipelines_are_refused_at_load() -> None:
    with pytest.raises(ModelError, match="AnimateDiffPipeline makes videos"):
        describe_pipeline("animatediff", tiny_animatediff_pipeline())


def test_kandinsky3_is_refused_at_load_naming_why() -> None:
    # Its "pt" images stay in [-1, 1]: served, its final image would be misread.
    with pytest.raises(ModelError, match="Kandinsky3Pipeline is not supported yet: its "):
        describe_pipeline("kandinsky3", make_kandinsky3_pipeline())


def test_a_tiny_vae_of_another_latent_space_is_refused_at_load() -> None:
    # TAESD (4 latent channels) on SD3 (16): it would load, then fail at the first check.
    with pytest.raises(ModelError, match="4-channel latents but this model's have 16"):
        describe_pipeline("sd3", make_sd3_pipeline(), tiny_autoencoder=make_tiny_autoencoder())


def test_serve_refuses_an_unwatchable_model_in_one_line(tmp_path: Path) -> None:
    tiny_animatediff_pipeline().save_pretrained(tmp_path / "ad")
    done = subprocess.run(
        [sys.executable, "-m", "stepwatch.client.cli", "serve", "--port", "0"]
        + ["--data", str(tmp_path / "data"), "--model", f"video={tmp_path / 'ad'},device=cpu"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    refusal = [line for line in done.stderr.splitlines() if line.startswith("stepwatch serve:")]
    assert refusal == [
        "stepwatch serve: AnimateDiffPipeline makes videos; stepwatch watches image pipelines "
        "only (no per-frame previews or verifiers yet)"
    ]
