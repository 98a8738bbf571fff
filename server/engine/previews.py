"""Turning an x0 estimate into a small RGB image, and that image into a thumbnail.

A :class:`PreviewDecoder` maps x0, in the model's spatial latent layout (N×C×h×w), to RGB in
[0, 1] (N×3×H×W, float32). The run decodes once per check; the verifier scores that image and the
thumbnail is encoded from it. Four decoders, cheapest first:

- :class:`PixelPreview` (``identity``) for pixel-space models: x0 already is the image, in [-1, 1].
- :class:`LinearPreview` (``linear``): a per-family linear map from latent channels to RGB, at the
  latent's resolution; costs one small matrix product.
- :class:`AutoencoderPreview` named ``tiny``: diffusers' ``AutoencoderTiny`` (TAESD), when the
  operator configures one for the model.
- :class:`AutoencoderPreview` named ``vae``: the model's full VAE, the most faithful and slowest.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from stepwatch import protocol
from stepwatch.protocol import Preview, PreviewFormat

# Latent-to-RGB factors, rows = latent channels, columns = R, G, B, applied to the latents the
# pipeline denoises (after scaling_factor / shift_factor). Source: ComfyUI comfy/latent_formats.py
# (classes SD15, SDXL, SD3, Flux), fitted by its authors against each family's VAE.
LatentFactors = tuple[tuple[tuple[float, float, float], ...], tuple[float, float, float]]

SD_FACTORS: LatentFactors = (
    (
        (0.3512, 0.2297, 0.3227),
        (0.3250, 0.4974, 0.2350),
        (-0.2829, 0.1762, 0.2721),
        (-0.2120, -0.2616, -0.7177),
    ),
    (0.0, 0.0, 0.0),
)
SDXL_FACTORS: LatentFactors = (
    (
        (0.3651, 0.4232, 0.4341),
        (-0.2533, -0.0042, 0.1068),
        (0.1076, 0.1111, -0.0362),
        (-0.3165, -0.2492, -0.2188),
    ),
    (0.1084, -0.0175, -0.0011),
)
SD3_FACTORS: LatentFactors = (
    (
        (-0.0922, -0.0175, 0.0749),
        (0.0311, 0.0633, 0.0954),
        (0.1994, 0.0927, 0.0458),
        (0.0856, 0.0339, 0.0902),
        (0.0587, 0.0272, -0.0496),
        (-0.0006, 0.1104, 0.0309),
        (0.0978, 0.0306, 0.0427),
        (-0.0042, 0.1038, 0.1358),
        (-0.0194, 0.0020, 0.0669),
        (-0.0488, 0.0130, -0.0268),
        (0.0922, 0.0988, 0.0951),
        (-0.0278, 0.0524, -0.0542),
        (0.0332, 0.0456, 0.0895),
        (-0.0069, -0.0030, -0.0810),
        (-0.0596, -0.0465, -0.0293),
        (-0.1448, -0.1463, -0.1189),
    ),
    (0.2394, 0.2135, 0.1925),
)
FLUX_FACTORS: LatentFactors = (
    (
        (-0.0346, 0.0244, 0.0681),
        (0.0034, 0.0210, 0.0687),
        (0.0275, -0.0668, -0.0433),
        (-0.0174, 0.0160, 0.0617),
        (0.0859, 0.0721, 0.0329),
        (0.0004, 0.0383, 0.0115),
        (0.0405, 0.0861, 0.0915),
        (-0.0236, -0.0185, -0.0259),
        (-0.0245, 0.0250, 0.1180),
        (0.1008, 0.0755, -0.0421),
        (-0.0515, 0.0201, 0.0011),
        (0.0428, -0.0012, -0.0036),
        (0.0817, 0.0765, 0.0749),
        (-0.1264, -0.0522, -0.1103),
        (-0.0280, -0.0881, -0.0499),
        (-0.1262, -0.0982, -0.0778),
    ),
    (-0.0329, -0.0718, -0.0851),
)

_WEBP_QUALITY = 80
_JPEG_QUALITY = 85


class PreviewDecoder(Protocol):
    """Decodes x0 (N×C×h×w, the model's latent layout) to RGB in [0, 1] (N×3×H×W, float32)."""

    @property
    def name(self) -> str: ...

    def decode(self, x0: torch.Tensor) -> torch.Tensor: ...


def _unit_range(images: torch.Tensor) -> torch.Tensor:
    """Map [-1, 1] images to [0, 1], clamped, as float32."""
    return (images.float() / 2 + 0.5).clamp(0.0, 1.0)


class PixelPreview:
    """x0 of a pixel-space model already is the image (in [-1, 1])."""

    name = "identity"

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        if x0.shape[1] != 3:
            raise ValueError(f"a pixel-space x0 has 3 channels, got {x0.shape[1]}")
        return _unit_range(x0)


class LinearPreview:
    """A fixed linear map from latent channels to RGB, at the latent's resolution."""

    name = "linear"

    def __init__(self, factors: LatentFactors) -> None:
        weights, bias = factors
        self.weights = torch.tensor(weights, dtype=torch.float32)
        self.bias = torch.tensor(bias, dtype=torch.float32)
        self._on: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def channels(self) -> int:
        """How many latent channels the factors expect."""
        return int(self.weights.shape[0])

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        key = (x0.device, x0.dtype)
        if key not in self._on:
            self._on[key] = (self.weights.to(*key), self.bias.to(*key))
        weights, bias = self._on[key]
        rgb = torch.einsum("nchw,cr->nrhw", x0, weights) + bias[None, :, None, None]
        return _unit_range(rgb)


class AutoencoderPreview:
    """Decodes with an autoencoder: the model's VAE (``vae``) or an ``AutoencoderTiny``
    (``tiny``), undoing the latent scaling the pipeline applies before its own decode.

    ``latent`` = x0 ``* latents_std / scaling_factor + latents_mean`` where the config has latent
    statistics (some SDXL VAEs), else ``x0 / scaling_factor + shift_factor`` (SD, SDXL, SD3,
    Flux; the shift is 0 where absent). A float16 VAE whose config asks for ``force_upcast`` (the
    SDXL VAE overflows in float16) decodes in float32, as the SDXL pipeline does.
    """

    def __init__(self, autoencoder: Any, name: str) -> None:
        self.autoencoder = autoencoder
        self.name = name
        config = autoencoder.config
        self.scaling = float(config.get("scaling_factor", 1.0) or 1.0)
        self.shift = float(config.get("shift_factor", 0.0) or 0.0)
        mean, std = config.get("latents_mean"), config.get("latents_std")
        self.statistics = (
            (torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1))
            if mean is not None and std is not None
            else None
        )
        self.upcast = bool(config.get("force_upcast", False))

    def _unscale(self, x0: torch.Tensor) -> torch.Tensor:
        if self.statistics is not None:
            mean, std = (s.to(x0.device, x0.dtype) for s in self.statistics)
            return x0 * std / self.scaling + mean
        return x0 / self.scaling + self.shift

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        latent = self._unscale(x0)
        autoencoder = self.autoencoder
        if self.upcast and autoencoder.dtype == torch.float16:
            autoencoder.to(torch.float32)
            try:
                images = autoencoder.decode(latent.float(), return_dict=False)[0]
            finally:
                autoencoder.to(torch.float16)
        else:
            images = autoencoder.decode(latent.to(autoencoder.dtype), return_dict=False)[0]
        return _unit_range(images)


def to_uint8(images: torch.Tensor) -> list[np.ndarray[Any, np.dtype[np.uint8]]]:
    """Convert RGB in [0, 1] (N×3×H×W) to a list of H×W×3 uint8 arrays."""
    array = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return list(array.permute(0, 2, 3, 1).cpu().numpy())


def encode_thumbnail(pixels: np.ndarray[Any, Any], size: int, fmt: PreviewFormat) -> Preview:
    """Encode one H×W×3 uint8 image as a thumbnail whose longer side is at most ``size``.

    Thumbnails are never enlarged; a client scales small ones up itself.
    """
    image = Image.fromarray(pixels)
    if max(image.size) > size:
        image.thumbnail((size, size), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    if fmt == "webp":
        image.save(buffer, format="WEBP", quality=_WEBP_QUALITY, method=0)
    elif fmt == "jpeg":
        image.save(buffer, format="JPEG", quality=_JPEG_QUALITY)
    else:
        image.save(buffer, format="PNG", compress_level=1)
    return Preview(fmt, image.width, image.height, buffer.getvalue())


def encode_png(pixels: np.ndarray[Any, Any]) -> protocol.Image:
    """Encode one H×W×3 uint8 image as the run's PNG result."""
    image = Image.fromarray(pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return protocol.Image(image.width, image.height, buffer.getvalue())


def describe(decoders: Sequence[PreviewDecoder]) -> str:
    """Name decoders for messages: ``identity, linear``."""
    return ", ".join(d.name for d in decoders)
