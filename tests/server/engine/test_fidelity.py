"""Fidelity measures: PSNR, SSIM and Immerkær's noise level pinned to known values."""

from __future__ import annotations

import math

import pytest
import torch
from synthetic_pictures import grey_noise, picture

from stepwatch.server.engine.fidelity import (
    luma,
    noise_level,
    psnr,
    quiet_noise_level,
    ssim,
)
from stepwatch.server.engine.structure import gaussian_blur


def test_identical_images_have_infinite_psnr_and_ssim_one() -> None:
    images = torch.cat([picture(32), torch.rand(1, 3, 32, 32, dtype=torch.float64)])
    assert psnr(images, images).tolist() == [math.inf, math.inf]
    assert ssim(images, images).tolist() == pytest.approx([1.0, 1.0], abs=1e-12)


@pytest.mark.parametrize(("offset", "db"), [(0.1, 20.0), (0.01, 40.0), (0.5, 20 * math.log10(2))])
def test_a_known_mse_gives_the_known_psnr(offset: float, db: float) -> None:
    a = torch.full((1, 3, 8, 8), 0.25, dtype=torch.float64)
    assert psnr(a, a + offset).item() == pytest.approx(db, abs=1e-9)


def test_psnr_and_ssim_are_per_image() -> None:
    a = torch.cat([picture(32), picture(32)])
    b = a.clone()
    b[1] += grey_noise((1, 3, 32, 32), 0.1)[0]
    values = psnr(a, b)
    assert values[0].item() == math.inf and 19 < values[1].item() < 21
    similarity = ssim(a, b)
    assert similarity[0].item() == pytest.approx(1.0) and similarity[1].item() < 0.9


def test_ssim_falls_with_noise_and_with_blur() -> None:
    clean = picture(64)
    noisy = [(clean + grey_noise(clean.shape, s)).clamp(0, 1) for s in (0.02, 0.05, 0.1)]
    blurred = [gaussian_blur(clean, s) for s in (0.5, 1.5, 3.0)]
    for series in (noisy, blurred):
        values = [ssim(clean, image).item() for image in series]
        assert 1.0 > values[0] > values[1] > values[2] > 0.0


def test_ssim_follows_wang_et_al_on_a_constant_shift() -> None:
    # Flat images: variances and covariance are 0, so SSIM is the luminance term alone,
    # (2 μx μy + C1) / (μx² + μy² + C1), with C1 = 0.01².
    a = torch.full((1, 3, 32, 32), 0.4, dtype=torch.float64)
    b = torch.full((1, 3, 32, 32), 0.6, dtype=torch.float64)
    c1 = 0.01**2
    expected = (2 * 0.4 * 0.6 + c1) / (0.4**2 + 0.6**2 + c1)
    assert ssim(a, b).item() == pytest.approx(expected, rel=1e-9)


def test_ssim_works_on_images_smaller_than_its_window() -> None:
    a = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    assert ssim(a, a).tolist() == pytest.approx([1.0, 1.0])
    assert ssim(a, 1 - a).max().item() < 0.5


@pytest.mark.parametrize("sigma", [0.005, 0.02, 0.05, 0.1])
def test_noise_level_reads_added_gaussian_noise_on_a_flat_image(sigma: float) -> None:
    flat = torch.full((2, 3, 128, 128), 0.5, dtype=torch.float64)
    noisy = flat + grey_noise(flat.shape, sigma, seed=2)
    # 16k pixels: the estimate's spread is about 1% of σ; 5% is far outside it.
    assert noise_level(noisy).tolist() == pytest.approx([sigma, sigma], rel=0.05)
    # The quieter blocks of white noise read a little low, as the docstring says (≈ 0.89 σ).
    quiet = 0.89 * sigma
    assert quiet_noise_level(luma(noisy)).tolist() == pytest.approx([quiet, quiet], rel=0.05)


def test_noise_level_is_zero_on_flat_and_linearly_shaded_images() -> None:
    t = torch.linspace(0, 1, 32, dtype=torch.float64)
    ramp = (0.2 + 0.3 * t.view(1, -1) + 0.4 * t.view(-1, 1)).expand(1, 3, 32, 32)
    flat = torch.full((1, 3, 32, 32), 0.7, dtype=torch.float64)
    assert noise_level(torch.cat([flat, ramp])).tolist() == pytest.approx([0.0, 0.0], abs=1e-12)


def test_independent_channel_noise_reads_as_its_luma_share() -> None:
    # Luma weights w: independent noise of σ per channel is σ·|w| on the luma.
    flat = torch.full((1, 3, 128, 128), 0.5, dtype=torch.float64)
    generator = torch.Generator().manual_seed(3)
    noisy = flat + 0.05 * torch.randn(flat.shape, generator=generator, dtype=torch.float64)
    share = math.sqrt(0.299**2 + 0.587**2 + 0.114**2)
    assert noise_level(noisy).item() == pytest.approx(0.05 * share, rel=0.05)


def test_the_quiet_level_ignores_texture_in_part_of_the_image_that_the_mean_counts() -> None:
    image = torch.full((1, 3, 64, 64), 0.5, dtype=torch.float64)
    image[..., :24, :24] += grey_noise((1, 3, 24, 24), 0.1, seed=4)
    assert noise_level(image).item() > 0.01
    assert quiet_noise_level(luma(image)).item() == 0.0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: psnr(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5)), "one shape"),
        (lambda: ssim(torch.zeros(3, 4, 4), torch.zeros(3, 4, 4)), "N×3×H×W"),
        (lambda: noise_level(torch.zeros(1, 3, 2, 8)), "at least 3×3"),
        (lambda: quiet_noise_level(torch.zeros(1, 1, 8, 8), quantile=1.0), "quantile"),
    ],
)
def test_bad_shapes_and_arguments_are_value_errors(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]
