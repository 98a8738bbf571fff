"""The measures of the ``structure`` verifier: coarse edge strength and fine-scale cleanliness.

:func:`measure` takes a batch of RGB previews in [0, 1] (N×3×H×W, any size) and returns two
values in [0, 1] per image:

- ``structure``: how strong the picture's coarse edges are. The preview is resized to a fixed
  ``ANALYSIS_SIDE``² (antialiased), smoothed with a Gaussian of ``SMOOTHING`` px, and the
  ``EDGE_QUANTILE`` of its colour gradient magnitude (RMS over R, G, B; central differences) is
  ``e``; ``structure = e² / (e² + EDGE_HALF²)``. The smoothing makes pixel noise count little
  and the quantile lets one clear object count as much as a busy scene; blur lowers it.
- ``clean``: 1 when no fine-scale noise is left. The luma is resized to at most
  ``ANALYSIS_SIDE`` a side (never enlarged: interpolation would hide pixel noise from a local
  estimator) and its noise level ``σ`` is Immerkær's estimate over 8×8 blocks, the
  ``NOISE_QUANTILE`` of the blocks (:func:`~.fidelity.quiet_noise_level`): edges and texture
  raise the blocks they fall in, noise left all over an unfinished estimate raises them all.
  ``clean = 1 / (1 + (σ / NOISE_HALF)^NOISE_POWER)``.

Resolution: a preview at 32 px (a latent-sized linear preview) and the same picture at 512 px
(a VAE decode) are analysed at the same 64 px, so they score alike; white grain finer than
1/64 of the image averages out and is not seen, while a latent diffusion model's residual noise
(at the latent's scale, 1/8 of the image's pixels) is.

Calibration (``bench/verifiers.py``; figures in the README's verifier table):

- ``SMOOTHING`` = 2 px and ``EDGE_QUANTILE`` = 0.95: uniform noise keeps e ≈ 0.03 at 64 px,
  and a small object (the top 5% of the gradients) counts like a large one.
- ``EDGE_HALF`` = 0.035 puts a sharp, anti-aliased disc and square of contrast ~0.5 on a shaded
  background at structure ≈ 0.80 (e ≈ 0.069 at 64–512 px, 0.064 at 32 px) and the same picture
  blurred by a Gaussian of 6% of its width at ≈ 0.52 (e ≈ 0.037). The built-in model's final
  images read e ≈ 0.03–0.13 (a small dim triangle to a large square).
- ``NOISE_HALF`` = 0.02 (5 grey levels of 255) and ``NOISE_POWER`` = 3, so that ``clean`` is
  flat near 1 for σ well under 0.02 and falls steeply past it: the built-in model's final
  images read σ ≈ 0.006–0.012 (clean 0.81–0.97, quartiles), its x0 estimates at step 10 of
  20 — visibly speckled — σ ≈ 0.024–0.040 (clean 0.11–0.37), at step 5 σ ≈ 0.09 (clean 0.01).
  The tiny random-weight SD/SDXL pipelines' previews, which are pure noise, read σ ≈ 0.03–0.05
  through the VAE and ≥ 0.3 through the linear decoder: clean ≤ 0.21, score ≤ 0.13.
- ``NOISE_QUANTILE`` = 0.25: a quarter of the picture with no texture is enough to see that no
  noise is left; a lower quantile misses noise confined to part of an estimate.
- Fine texture (foliage, fabric) at the analysis size reads as some noise (σ ≈ 0.013, clean
  0.78, on a detailed Stable Diffusion landscape), so on such pictures ``clean`` errs low: a
  policy that waits for it stops early less often, never on noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .fidelity import luma, quiet_noise_level

__all__ = ["ANALYSIS_SIDE", "StructureMeasures", "measure"]

ANALYSIS_SIDE = 64
SMOOTHING = 2.0
EDGE_QUANTILE = 0.95
EDGE_HALF = 0.035
NOISE_QUANTILE = 0.25
NOISE_HALF = 0.02
NOISE_POWER = 3.0


@dataclass(frozen=True)
class StructureMeasures:
    """Per image: ``structure`` and ``clean`` in [0, 1], and the raw figures they came from."""

    structure: torch.Tensor
    clean: torch.Tensor
    edge_strength: torch.Tensor
    noise: torch.Tensor


def measure(images: torch.Tensor) -> StructureMeasures:
    """Measure coarse structure and cleanliness of RGB ``images`` in [0, 1] (see the module)."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected RGB images N×3×H×W, got shape {tuple(images.shape)}")
    rgb = images.detach().float().clamp(0.0, 1.0)
    view = _resize(rgb, (ANALYSIS_SIDE, ANALYSIS_SIDE)).double()
    edges = edge_strength(view)
    height, width = rgb.shape[-2:]
    noise_size = (min(height, ANALYSIS_SIDE), min(width, ANALYSIS_SIDE))
    # Resizing and luma are both linear: a full-size preview's noise view is the analysis view.
    noise = fine_noise(view if noise_size == tuple(view.shape[-2:]) else _resize(rgb, noise_size))
    structure = edges**2 / (edges**2 + EDGE_HALF**2)
    clean = 1.0 / (1.0 + (noise / NOISE_HALF) ** NOISE_POWER)
    return StructureMeasures(structure.cpu(), clean.cpu(), edges.cpu(), noise.cpu())


def edge_strength(view: torch.Tensor) -> torch.Tensor:
    """The ``EDGE_QUANTILE`` of the smoothed colour gradient magnitude of an analysis view."""
    smooth = gaussian_blur(view, SMOOTHING)
    dx = (smooth[..., 1:-1, 2:] - smooth[..., 1:-1, :-2]) / 2
    dy = (smooth[..., 2:, 1:-1] - smooth[..., :-2, 1:-1]) / 2
    magnitude = (dx**2 + dy**2).mean(dim=1).sqrt().flatten(1)
    return magnitude.quantile(EDGE_QUANTILE, dim=1)


def fine_noise(rgb: torch.Tensor) -> torch.Tensor:
    """Immerkær's noise level (quiet-block form) of the luma of ``rgb``, as it is sized.

    A preview under 3 pixels a side (the latent of an 8-pixel image) has no noise to measure:
    its level is infinite, so ``clean`` is 0 and nothing takes it for finished.
    """
    y = luma(rgb)
    if min(y.shape[-2:]) < 3:
        return torch.full((y.shape[0],), math.inf, dtype=y.dtype, device=y.device)
    return quiet_noise_level(y, NOISE_QUANTILE)


def _resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(images.shape[-2:]) == size:
        return images
    return F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur N×C×H×W ``images`` with a Gaussian of ``sigma`` pixels (separable, edges replicated)."""
    radius = math.ceil(3 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    padded = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
