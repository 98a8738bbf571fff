"""Pipelines the engine cannot watch are refused when they load, in one line that says why:
no step callback, a video pipeline, a tiny VAE made for another latent space."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import (
    AnimateDiffPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    MotionAdapter,
    UNet2DConditionModel,
    UNet2DModel,
)
from tiny_models import SD_BETAS, make_sd3_pipeline, make_tiny_autoencoder, tiny_tokenizer
from transformers import CLIPTextConfig, CLIPTextModel

from stepwatch.server.engine.errors import ModelError
from stepwatch.server.engine.model import describe_pipeline


def tiny_ddpm_pipeline() -> DDPMPipeline:
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        block_out_channels=(4, 8),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=2,
        layers_per_block=1,
    )
    return DDPMPipeline(unet=unet, scheduler=DDPMScheduler())


def tiny_animatediff_pipeline() -> AnimateDiffPipeline:
    """A tiny AnimateDiff pipeline (text-to-video over an SD 1.x UNet with motion modules)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=2,
    )
    adapter = MotionAdapter(
        block_out_channels=(4, 8),
        motion_layers_per_block=1,
        motion_norm_num_groups=2,
        motion_num_attention_heads=2,
        motion_max_seq_length=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(4, 8),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=2,
    )
    text = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=len(tokenizer),
    )
    return AnimateDiffPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(text),
        tokenizer=tokenizer,
        unet=unet,
        motion_adapter=adapter,
        scheduler=DDIMScheduler(**SD_BETAS),
    )


def test_a_pipeline_without_a_step_callback_is_refused_saying_why() -> None:
    with pytest.raises(ModelError, match="DDPMPipeline takes no callback_on_step_end"):
        describe_pipeline("ddpm", tiny_ddpm_pipeline())


def test_video_pipelines_are_refused_at_load() -> None:
    with pytest.raises(ModelError, match="AnimateDiffPipeline makes videos"):
        describe_pipeline("animatediff", tiny_animatediff_pipeline())


def test_a_tiny_vae_of_another_latent_space_is_refused_at_load() -> None:
    # TAESD (4 latent channels) on SD3 (16): it would load, then fail at the first check.
    with pytest.raises(ModelError, match="4-channel latents but this model's have 16"):
        describe_pipeline("sd3", make_sd3_pipeline(), tiny_autoencoder=make_tiny_autoencoder())


def test_serve_refuses_an_unwatchable_model_in_one_line(tmp_path: Path) -> None:
    tiny_ddpm_pipeline().save_pretrained(tmp_path / "ddpm")
    done = subprocess.run(
        [sys.executable, "-m", "stepwatch.client.cli", "serve", "--port", "0"]
        + ["--data", str(tmp_path / "data"), "--model", f"ddpm={tmp_path / 'ddpm'},device=cpu"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    refusal = [line for line in done.stderr.splitlines() if line.startswith("stepwatch serve:")]
    assert refusal == [
        "stepwatch serve: DDPMPipeline takes no callback_on_step_end, so the engine cannot "
        "watch its steps"
    ]
