"""Tiny random-weight pipelines that take input images: SD 1.x image-to-image, inpainting (the
9-channel UNet of the real SD inpainting models) and ControlNet, 32×32 images, built offline the
way :mod:`tiny_models` builds the text-to-image ones; and the test images they take."""

from __future__ import annotations

import io

import torch
from diffusers import (
    ControlNetModel,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    UNet2DConditionModel,
)
from PIL import Image, ImageDraw
from tiny_models import SD_BETAS, tiny_sd_parts, tiny_sd_unet, tiny_tokenizer

_NO_SAFETY = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


def make_img2img_pipeline(seed: int = 0) -> StableDiffusionImg2ImgPipeline:
    """A tiny SD 1.x image-to-image pipeline (DPM-Solver++)."""
    torch.manual_seed(seed)
    pipeline = StableDiffusionImg2ImgPipeline(
        unet=tiny_sd_unet(),
        scheduler=DPMSolverMultistepScheduler(**SD_BETAS),
        **tiny_sd_parts(tiny_tokenizer()),
        **_NO_SAFETY,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def make_inpaint_pipeline(seed: int = 0) -> StableDiffusionInpaintPipeline:
    """A tiny SD 1.x inpainting pipeline whose UNet reads latents, mask and masked image
    (9 input channels), Euler."""
    torch.manual_seed(seed)
    pipeline = StableDiffusionInpaintPipeline(
        unet=UNet2DConditionModel.from_config({**tiny_sd_unet().config, "in_channels": 9}),
        scheduler=EulerDiscreteScheduler(**SD_BETAS),
        **tiny_sd_parts(tiny_tokenizer()),
        **_NO_SAFETY,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def make_controlnet_pipeline(seed: int = 0) -> StableDiffusionControlNetPipeline:
    """A tiny SD 1.x text-to-image pipeline with a tiny ControlNet (DPM-Solver++)."""
    torch.manual_seed(seed)
    controlnet = ControlNetModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        in_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        cross_attention_dim=32,
        conditioning_embedding_out_channels=(4, 8),
        norm_num_groups=2,
    )
    pipeline = StableDiffusionControlNetPipeline(
        unet=tiny_sd_unet(),
        controlnet=controlnet,
        scheduler=DPMSolverMultistepScheduler(**SD_BETAS),
        **tiny_sd_parts(tiny_tokenizer()),
        **_NO_SAFETY,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def picture(size: tuple[int, int] = (32, 32), image_format: str = "PNG") -> bytes:
    """A small picture (a red disc on blue), encoded."""
    image = Image.new("RGB", size, (20, 40, 160))
    ImageDraw.Draw(image).ellipse((4, 4, size[0] - 4, size[1] - 4), fill=(200, 30, 30))
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def mask(size: tuple[int, int] = (32, 32)) -> bytes:
    """An inpainting mask (PNG, greyscale): the right half is repainted."""
    image = Image.new("L", size, 0)
    ImageDraw.Draw(image).rectangle((size[0] // 2, 0, size[0], size[1]), fill=255)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
