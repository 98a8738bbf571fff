"""Preview decoders and thumbnails."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import make_tiny_autoencoder

from stepwatch.protocol import Preview
from stepwatch.server.engine.model import Family, LoadedModel, detect_family
from stepwatch.server.engine.previews import (
    FLUX_FACTORS,
    SD3_FACTORS,
    SD_FACTORS,
    SDXL_FACTORS,
    AutoencoderPreview,
    LinearPreview,
    PixelPreview,
    encode_png,
    encode_thumbnail,
    to_uint8,
)


def test_pixel_previews_map_minus_one_to_one_onto_the_unit_range() -> None:
    x0 = torch.tensor([-2.0, -1.0, 0.0, 1.0]).view(1, 1, 1, 4).expand(1, 3, 1, 4)
    assert PixelPreview().decode(x0)[0, 0, 0].tolist() == [0.0, 0.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="3 channels"):
        PixelPreview().decode(torch.zeros(1, 4, 2, 2))


@pytest.mark.parametrize(
    ("factors", "channels"),
    [(SD_FACTORS, 4), (SDXL_FACTORS, 4), (SD3_FACTORS, 16), (FLUX_FACTORS, 16)],
)
def test_linear_previews_apply_the_factor_table(
    factors: tuple[tuple[tuple[float, ...], ...], tuple[float, ...]], channels: int
) -> None:
    decoder = LinearPreview(factors)  # type: ignore[arg-type]
    assert decoder.channels == channels
    x0 = torch.zeros(1, channels, 3, 5)
    x0[0, 0] = 1.0  # only the first channel lit: the result is its row plus the bias
    rgb = decoder.decode(x0)
    assert rgb.shape == (1, 3, 3, 5)
    expected = [(w + b) / 2 + 0.5 for w, b in zip(factors[0][0], factors[1], strict=True)]
    assert rgb[0, :, 1, 2].tolist() == pytest.approx([min(max(e, 0), 1) for e in expected])


def test_autoencoder_previews_undo_the_pipelines_latent_scaling() -> None:
    tiny = make_tiny_autoencoder()
    tiny.register_to_config(scaling_factor=2.0, shift_factor=0.5)
    decoder = AutoencoderPreview(tiny, "tiny")
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    direct = tiny.decode(x0 / 2.0 + 0.5).sample
    assert torch.allclose(decoder.decode(x0), (direct / 2 + 0.5).clamp(0, 1))


def test_thumbnails_keep_small_images_and_shrink_large_ones() -> None:
    small = np.zeros((32, 32, 3), np.uint8)
    large = np.full((256, 128, 3), 200, np.uint8)
    kept = encode_thumbnail(small, 128, "png")
    shrunk = encode_thumbnail(large, 64, "jpeg")
    assert (kept.width, kept.height) == (32, 32)
    assert (shrunk.width, shrunk.height) == (32, 64)
    for preview, kind in [(kept, "PNG"), (shrunk, "JPEG")]:
        image = Image.open(io.BytesIO(preview.data))
        assert image.format == kind and image.size == (preview.width, preview.height)


def test_webp_thumbnails_decode_close_to_their_source() -> None:
    gradient = np.tile(np.linspace(0, 255, 48, dtype=np.uint8)[None, :, None], (48, 1, 3))
    preview = encode_thumbnail(gradient, 128, "webp")
    assert isinstance(preview, Preview) and preview.format == "webp"
    decoded = np.asarray(Image.open(io.BytesIO(preview.data)).convert("RGB")).astype(int)
    assert np.abs(decoded - gradient).mean() < 6


def test_png_results_round_trip_exactly() -> None:
    images = torch.rand(1, 3, 8, 12, generator=torch.Generator().manual_seed(1))
    pixels = to_uint8(images)[0]
    result = encode_png(pixels)
    assert (result.width, result.height) == (12, 8)
    assert (np.asarray(Image.open(io.BytesIO(result.data))) == pixels).all()


def test_families_are_recognised_from_their_vae(
    sd_model: LoadedModel, sdxl_model: LoadedModel, sd3_model: LoadedModel
) -> None:
    assert detect_family(sd_model.pipeline) == (Family.SD, SD_FACTORS)
    assert detect_family(sdxl_model.pipeline) == (Family.SDXL, SDXL_FACTORS)
    assert detect_family(sd3_model.pipeline) == (Family.SD3, SD3_FACTORS)
    assert sd3_model.flow and sd3_model.samplers == ("flow_euler",)
    assert sd_model.family is Family.SD and sdxl_model.family is Family.SDXL
    assert list(sdxl_model.decoders) == ["linear", "vae"]
