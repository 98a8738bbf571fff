"""Test helpers for the server tests: tiny random-weight SD, SDXL, SD3, Flux, Kandinsky 2.2
and pixel-space DDPM/DDIM pipelines built offline, and an event-recording sink.

A module with its own name, not ``conftest``: test modules import it directly
(``from tiny_models import ...``), which ``from conftest import`` cannot do safely once several
folders have a conftest.

They follow diffusers' own ``get_dummy_components`` pattern: real pipeline classes with a few
thousand parameters, 32×32 images, seeded. The CLIP tokenizer is built from an in-memory
vocabulary of single characters (with transformers 5 the ``vocab=``/``merges=`` keywords are the
ones that work; file arguments are silently ignored and leave every prompt empty).
"""

from __future__ import annotations

import dataclasses
import os
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    AutoencoderTiny,
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    KandinskyV22CombinedPipeline,
    LatentConsistencyModelPipeline,
    LCMScheduler,
    PriorTransformer,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UnCLIPScheduler,
    UNet2DConditionModel,
    UNet2DModel,
    VQModel,
)
from transformers import (  # noqa: E402
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    T5Config,
    T5EncoderModel,
)

from stepwatch.protocol import Check, Progress  # noqa: E402
from stepwatch.server.engine.curves import ExpectedCurve, curve_key  # noqa: E402
from stepwatch.server.engine.events import EngineEvent  # noqa: E402
from stepwatch.server.engine.model import LoadedModel  # noqa: E402
from stepwatch.server.engine.verifiers import VerifierRegistry  # noqa: E402

# Tiny models spend their time in per-operator overhead, which extra threads only add to on a
# shared two-core machine.
torch.set_num_threads(1)

E = TypeVar("E")

SD_BETAS: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
}


def tiny_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer over single letters and digits, so every prompt really tokenizes."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase + string.digits:
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    ids = tokenizer("red circle").input_ids
    assert len(ids) == 2 + len("redcircle"), "the tiny tokenizer must tokenize prompts"
    return tokenizer


def _text_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        projection_dim=32,
        vocab_size=len(tokenizer),
    )


def tiny_vae(scaling_factor: float) -> AutoencoderKL:
    """The tiny 4-channel VAE of the SD-layout pipelines, with the family's scaling factor."""
    return AutoencoderKL(
        block_out_channels=(4, 8),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=2,
        sample_size=32,
        scaling_factor=scaling_factor,
    )


def tiny_sd_unet(**options: Any) -> UNet2DConditionModel:
    """The tiny SD 1.x UNet (4 latent channels, 16×16 latents, cross-attention width 32);
    ``options`` add to its config (LCM's ``time_cond_proj_dim``)."""
    return UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=2,
        **options,
    )


def tiny_sd_parts(tokenizer: CLIPTokenizer) -> dict[str, Any]:
    """The tiny SD 1.x VAE and text encoder for ``tokenizer``, as pipeline keyword arguments."""
    return {
        "vae": tiny_vae(0.18215),
        "text_encoder": CLIPTextModel(_text_config(tokenizer)),
        "tokenizer": tokenizer,
    }


def make_sd_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """A tiny SD 1.x pipeline (PNDM-free: DPM-Solver++ as its own scheduler), 32×32 images."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    unet = tiny_sd_unet()
    pipeline = StableDiffusionPipeline(
        unet=unet,
        vae=tiny_vae(0.18215),
        text_encoder=CLIPTextModel(_text_config(tokenizer)),
        tokenizer=tokenizer,
        scheduler=DPMSolverMultistepScheduler(**SD_BETAS),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def make_lcm_pipeline(seed: int = 0) -> LatentConsistencyModelPipeline:
    """A tiny latent consistency model (LCM): an SD 1.x layout whose UNet takes the guidance
    scale as an embedding (``time_cond_proj_dim``), and ``LCMScheduler``; its pipeline has no
    ``interrupt`` property. 32×32 images."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    unet = tiny_sd_unet(time_cond_proj_dim=8)
    pipeline = LatentConsistencyModelPipeline(
        **tiny_sd_parts(tokenizer),
        unet=unet,
        # Distilled from all 1000 training steps, so that a run may take many (tests stop
        # long runs midway); LCM's usual 50 caps a run at 50 steps.
        scheduler=LCMScheduler(**SD_BETAS, original_inference_steps=1000),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def make_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """A tiny SDXL pipeline (two text encoders, micro-conditioning), 32×32 images."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * 8 + 32,
        cross_attention_dim=64,
        norm_num_groups=2,
    )
    config = _text_config(tokenizer)
    pipeline = StableDiffusionXLPipeline(
        unet=unet,
        vae=tiny_vae(0.13025),
        text_encoder=CLIPTextModel(config),
        text_encoder_2=CLIPTextModelWithProjection(config),
        tokenizer=tokenizer,
        tokenizer_2=tiny_tokenizer(),
        scheduler=EulerDiscreteScheduler(**SD_BETAS, timestep_spacing="leading"),
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def make_sd3_pipeline(seed: int = 0) -> StableDiffusion3Pipeline:
    """A tiny SD3 pipeline: flow matching, a 16-channel latent, no T5 (the pipeline pads)."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    config = _text_config(tokenizer)
    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=1,
        in_channels=16,
        out_channels=16,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=64,
        pooled_projection_dim=64,
    )
    vae = AutoencoderKL(
        block_out_channels=(4, 8),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=2,
        sample_size=32,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=1.5305,
        shift_factor=0.0609,
    )
    pipeline = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=CLIPTextModelWithProjection(config),
        tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(config),
        tokenizer_2=tiny_tokenizer(),
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def make_flux_pipeline(seed: int = 0) -> FluxPipeline:
    """A tiny Flux pipeline: packed 16-channel latents, a guidance embedding (FLUX.1-dev's
    distilled guidance vector), a one-layer T5 encoder, 32×32 images.

    The T5 slot takes the single-character CLIP tokenizer (a T5 tokenizer needs a SentencePiece
    model file); the pipeline only asks it for padded ids.
    """
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=1,
            num_heads=4,
            pad_token_id=1,
            eos_token_id=1,
            dropout_rate=0.0,  # a built model is in training mode: T5's dropout would draw
        )
    )
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),
    )
    vae = AutoencoderKL(
        block_out_channels=(4, 8),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=2,
        sample_size=32,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=0.3611,
        shift_factor=0.1159,
    )
    pipeline = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=CLIPTextModel(_text_config(tokenizer)),
        tokenizer=tokenizer,
        text_encoder_2=t5,
        tokenizer_2=tiny_tokenizer(),
        transformer=transformer,
    )
    pipeline.default_sample_size = 16  # Flux's own is 128 latent pixels
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def tiny_pixel_unet(seed: int = 0) -> UNet2DModel:
    """A tiny unconditional pixel-space UNet (3 channels, 8×8 images)."""
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=8,
        block_out_channels=(4, 8),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=2,
        layers_per_block=1,
    )


def make_ddpm_pipeline(seed: int = 0) -> DDPMPipeline:
    """A tiny ``DDPMPipeline`` (no step callback), 8×8 images."""
    pipeline = DDPMPipeline(unet=tiny_pixel_unet(seed), scheduler=DDPMScheduler())
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def make_ddim_pipeline(seed: int = 0) -> DDIMPipeline:
    """A tiny ``DDIMPipeline`` (no step callback), 8×8 images."""
    pipeline = DDIMPipeline(unet=tiny_pixel_unet(seed), scheduler=DDIMScheduler())
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def make_kandinsky22_pipeline(seed: int = 0) -> KandinskyV22CombinedPipeline:
    """A tiny Kandinsky 2.2 text-to-image pipeline (prior and decoder), 32×32 images: a prior
    transformer over a tiny CLIP text and image encoder, a UNet conditioned on image embeddings
    with learned variance (8 output channels), MoVQ (whose spatial norms need 32-channel
    blocks), DDPM for the decoder as the real model has."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    vision = CLIPVisionConfig(
        hidden_size=32,
        image_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        patch_size=8,
        projection_dim=32,
    )
    unet = UNet2DConditionModel(
        in_channels=4,
        out_channels=8,
        sample_size=16,
        addition_embed_type="image",
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=(8, 16),
        layers_per_block=1,
        encoder_hid_dim=32,
        encoder_hid_dim_type="image_proj",
        cross_attention_dim=16,
        attention_head_dim=4,
        resnet_time_scale_shift="scale_shift",
        norm_num_groups=4,
    )
    movq = VQModel(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
        up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        norm_type="spatial",
        num_vq_embeddings=12,
        vq_embed_dim=4,
    )
    pipeline = KandinskyV22CombinedPipeline(
        unet=unet,
        scheduler=DDPMScheduler(
            beta_schedule="linear",
            beta_start=0.00085,
            beta_end=0.012,
            clip_sample=False,
            steps_offset=1,
            variance_type="learned_range",
        ),
        movq=movq,
        prior_prior=PriorTransformer(
            num_attention_heads=2, attention_head_dim=16, embedding_dim=32, num_layers=1
        ),
        prior_image_encoder=CLIPVisionModelWithProjection(vision),
        prior_text_encoder=CLIPTextModelWithProjection(_text_config(tokenizer)),
        prior_tokenizer=tokenizer,
        prior_scheduler=UnCLIPScheduler(
            variance_type="fixed_small_log", prediction_type="sample", clip_sample_range=10.0
        ),
        prior_image_processor=CLIPImageProcessor(
            crop_size=32, size=32, image_mean=[0.5] * 3, image_std=[0.5] * 3
        ),
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


# What the service tests call "usual" for a tiny random-weight model: 0.9 at every point of a run,
# with a low band at 0.8. The tiny models' noise previews score far below it, so their runs
# raise CFG as a run that has fallen behind would (a real model's curve is learned or shipped).
USUAL_CURVE = ExpectedCurve(progress=(1.0,), median=(0.9,), low=(0.8,), runs=10, source="test")


def with_usual_curves(model: LoadedModel) -> LoadedModel:
    """``model`` with :data:`USUAL_CURVE` for every built-in verifier and sampler it offers."""
    verifiers = [info.id for info in VerifierRegistry().infos()]
    curves = {curve_key(v, s): USUAL_CURVE for v in verifiers for s in model.samplers}
    return dataclasses.replace(model, curves=curves)


def make_tiny_autoencoder(seed: int = 0) -> AutoencoderTiny:
    """A tiny random ``AutoencoderTiny`` matching the tiny pipelines' 4-channel, 2× latents."""
    torch.manual_seed(seed)
    return AutoencoderTiny(
        encoder_block_out_channels=(4, 4),
        decoder_block_out_channels=(4, 4),
        num_encoder_blocks=(1, 1),
        num_decoder_blocks=(1, 1),
        latent_channels=4,
    )


class Recorder:
    """An event sink that keeps every event and runs test actions when chosen events arrive."""

    def __init__(self) -> None:
        self.events: list[EngineEvent] = []
        self.actions: list[Callable[[EngineEvent], None]] = []

    def __call__(self, event: EngineEvent) -> None:
        self.events.append(event)
        for action in self.actions:
            action(event)

    def at_step(self, step: int, action: Callable[[], None]) -> None:
        """Run ``action`` when the Progress event of ``step`` arrives (before controls are read)."""

        def run(event: EngineEvent) -> None:
            if isinstance(event, Progress) and event.step == step:
                action()

        self.actions.append(run)

    def of(self, kind: type[E]) -> list[E]:
        return [event for event in self.events if isinstance(event, kind)]

    @property
    def checks(self) -> list[Check]:
        return self.of(Check)


def save_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A random-weight CLIP (2 layers, 32 wide, 32 px input) and its tokenizer, saved."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 4,
        },
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
