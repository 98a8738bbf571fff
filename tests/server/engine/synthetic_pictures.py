"""Synthetic test pictures for the image verifiers and fidelity measures (a module, not a conftest).

:func:`picture` draws one scene — a red disc and a green square on a shaded blue-grey
background — at any size, anti-aliased by supersampling, so that the same picture exists at 32
and at 512 pixels as a latent-sized preview and a full decode of one image would.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SUPERSAMPLE = 4


def picture(side: int) -> torch.Tensor:
    """The scene at ``side``×``side`` pixels, 1×3×side×side float64 in [0, 1]."""
    fine = side * SUPERSAMPLE
    t = (torch.arange(fine, dtype=torch.float64) + 0.5) / fine
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    background = torch.stack([0.2 + 0.3 * xx, 0.3 + 0.2 * yy, 0.6 - 0.2 * xx])
    disc = ((xx - 0.35) ** 2 + (yy - 0.4) ** 2 < 0.2**2).double()
    square = (((xx - 0.72).abs() < 0.15) & ((yy - 0.7).abs() < 0.15)).double()
    red = torch.tensor([0.9, 0.2, 0.1], dtype=torch.float64).view(3, 1, 1)
    green = torch.tensor([0.1, 0.7, 0.2], dtype=torch.float64).view(3, 1, 1)
    scene = background * (1 - disc) + red * disc
    scene = scene * (1 - square) + green * square
    return F.avg_pool2d(scene[None], SUPERSAMPLE)


def grey_noise(shape: tuple[int, ...], sigma: float, seed: int = 0) -> torch.Tensor:
    """Gaussian noise of ``sigma``, the same in all three channels (so the luma's is ``sigma``)."""
    generator = torch.Generator().manual_seed(seed)
    n, _, h, w = shape
    noise = sigma * torch.randn(n, 1, h, w, generator=generator, dtype=torch.float64)
    return noise.expand(shape)


def uniform_noise(side: int, seed: int = 0) -> torch.Tensor:
    """Independent uniform noise in every pixel and channel: what a random-weight model shows."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, side, side, generator=generator, dtype=torch.float64)
