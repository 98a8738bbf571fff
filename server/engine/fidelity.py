"""Fidelity measures for batches of RGB images in [0, 1]: PSNR, SSIM, a no-reference noise level.

Every function takes N×3×H×W float tensors with values in [0, 1] (the verifiers' and the preview
decoders' format) and returns one value per image as a float64 tensor of length N:

- :func:`psnr` and :func:`ssim` compare a result with a reference of the same size (in the
  benchmarks: an early-stopped or steered run against the full-length run from the same noise);
- :func:`noise_level` needs no reference: it estimates the standard deviation of white noise on
  the image's luma, in [0, 1] units, so a speckled result shows as a number.

No model, no weights: torch only. The benchmarks and the ``structure`` verifier import it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["luma", "noise_level", "psnr", "quiet_noise_level", "ssim"]

#: Rec. 601 luma weights (the ones the verifiers have always used).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
#: Wang et al.'s window: an 11×11 Gaussian with σ = 1.5, and their constants for dynamic range 1.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
#: Immerkær's 3×3 mask: the difference of two Laplacians, blind to constant and linear shading.
IMMERKAER_MASK = ((1.0, -2.0, 1.0), (-2.0, 4.0, -2.0), (1.0, -2.0, 1.0))


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    _check_batch(a)
    if a.shape != b.shape:
        raise ValueError(f"images to compare must have one shape, got {a.shape} and {b.shape}")


def _check_batch(images: torch.Tensor) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected RGB images N×3×H×W, got shape {tuple(images.shape)}")


def luma(images: torch.Tensor) -> torch.Tensor:
    """Rec. 601 luma of RGB images, N×1×H×W float64."""
    _check_batch(images)
    weights = torch.tensor(LUMA_WEIGHTS, dtype=torch.float64, device=images.device)
    return (images.double() * weights.view(1, 3, 1, 1)).sum(dim=1, keepdim=True)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, peak 1: ``10·log10(1 / MSE)``; inf if equal.

    The standard definition (e.g. Gonzalez & Woods), MSE over all three channels and pixels.
    """
    _check_pair(a, b)
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(dim=1)
    with torch.no_grad():
        return torch.where(mse > 0, -10.0 * torch.log10(mse), torch.full_like(mse, math.inf))


def _gaussian_window(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    offsets = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    line = torch.exp(-(offsets**2) / (2 * sigma**2))
    line = line / line.sum()
    return torch.outer(line, line).view(1, 1, size, size)


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean structural similarity per image, computed per RGB channel and averaged over them.

    Wang, Bovik, Sheikh & Simoncelli 2004, "Image Quality Assessment: From Error Visibility to
    Structural Similarity": an 11×11 Gaussian window (σ = 1.5), K1 = 0.01, K2 = 0.03, L = 1,
    the SSIM map over the window positions that fit inside the image ("valid"), then its mean.
    An image smaller than 11 pixels on a side gets the largest odd window that fits, with the
    same σ. Identical images score exactly 1.
    """
    _check_pair(a, b)
    n, channels, height, width = a.shape
    size = min(SSIM_WINDOW, height, width)
    size -= 1 - size % 2
    window = _gaussian_window(size, SSIM_SIGMA, a.device)
    x = a.double().reshape(n * channels, 1, height, width)
    y = b.double().reshape(n * channels, 1, height, width)
    mu_x, mu_y = F.conv2d(x, window), F.conv2d(y, window)
    var_x = F.conv2d(x * x, window) - mu_x**2
    var_y = F.conv2d(y * y, window) - mu_y**2
    cov = F.conv2d(x * y, window) - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return index.reshape(n, -1).mean(dim=1)


def noise_level(images: torch.Tensor) -> torch.Tensor:
    """Estimated standard deviation of white noise on each image's luma, in [0, 1] units.

    Immerkær 1996, "Fast Noise Variance Estimation" (CVIU 64(2)): convolve with the 3×3 mask
    [[1,-2,1],[-2,4,-2],[1,-2,1]] and take σ = sqrt(π/2) / (6 (W−2)(H−2)) · Σ|I∗N|. The mask
    cancels constant and linearly shaded regions, so a smooth picture reads near 0; edges and
    fine texture read as some noise. Images need at least 3×3 pixels.
    """
    y = luma(images)
    height, width = y.shape[-2:]
    total = _immerkaer_response(y).flatten(1).sum(dim=1)
    return total * (math.sqrt(math.pi / 2) / (6 * (width - 2) * (height - 2)))


def _immerkaer_response(y: torch.Tensor) -> torch.Tensor:
    height, width = y.shape[-2:]
    if height < 3 or width < 3:
        raise ValueError(f"noise_level needs images of at least 3×3 pixels, got {height}×{width}")
    mask = torch.tensor(IMMERKAER_MASK, dtype=torch.float64, device=y.device).view(1, 1, 3, 3)
    return F.conv2d(y.double(), mask).abs()


def quiet_noise_level(y: torch.Tensor, quantile: float = 0.25, block: int = 8) -> torch.Tensor:
    """:func:`noise_level` of luma ``y`` (N×1×H×W) in its quieter parts: the ``quantile`` of blocks.

    Immerkær's estimate over each ``block``×``block`` window of the mask's responses (stride
    ``block // 2``; smaller images use one window their size), then the ``quantile`` of those
    block estimates. Edges and texture raise the blocks they fall in; noise left all over an
    image, as in a diffusion model's unfinished estimate, raises every block. (The weak-texture
    idea of block-based estimators, e.g. Liu, Tanaka & Okutomi 2013.) For white noise on a flat
    image it reads a little under σ (about 0.89 σ at the defaults: the quieter blocks).
    """
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    responses = _immerkaer_response(y)
    side = min(block, *responses.shape[-2:])
    blocks = F.avg_pool2d(responses, side, stride=max(1, side // 2)).flatten(1)
    return blocks.quantile(quantile, dim=1) * (math.sqrt(math.pi / 2) / 6)
