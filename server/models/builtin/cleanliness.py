"""How finished an image looks: the ``clean`` component of the built-in model's adherence verifier.

:class:`CleanlinessRegressor` is a small CNN trained on the built-in model's own sampling
trajectories (:mod:`.train_cleanliness`): the x0 estimates of every step, from several samplers,
step counts, guidance scales and prompts, each against the finished image of the same trajectory,
plus pure noise and blurred or noised finished images. :class:`CleanlinessScorer` runs it on RGB
images in [0, 1] of any size (resized to 32×32 inside).

The contract (policies rely on it): ``clean`` estimates

    clean = clamp((PSNR(x0_t, final) - 10 dB) / 30 dB, 0, 1)

where ``x0_t`` is the image being scored, ``final`` the image the same run would finish with, and
the PSNR is taken on [0, 1] RGB at 32×32. So ``clean`` 1.0 means about 40 dB (indistinguishable
from finished), 0.6 about 28 dB (a mid-noise x0 estimate, visibly speckled or soft), 0.0 at most
10 dB (noise, or the blurry mean image of the first steps). The estimate needs no ``final``: the
net reads only the image; it learned what this model's unfinished images look like. Its
validation error, in dB, is in ``weights/training/cleanliness_summary.json``.

It scores this model's images only: another model's artefacts are not what it was trained on.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from stepwatch.server.models.builtin.classifier import to_network_input

#: PSNR (dB) that maps to ``clean`` 0, and the span (dB) from there to ``clean`` 1.
PSNR_FLOOR_DB = 10.0
PSNR_SPAN_DB = 30.0
SUBFOLDER = "cleanliness"


def psnr(images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of N×3×H×W images in [0, 1] against references (inf when equal)."""
    error = (images.float() - references.float()).pow(2).mean(dim=(1, 2, 3))
    return -10 * torch.log10(error)


def clean_target(images: torch.Tensor, finals: torch.Tensor) -> torch.Tensor:
    """The contract's ``clean`` of images in [0, 1] against their finished images in [0, 1]."""
    decibels = psnr(images.clamp(0, 1), finals.clamp(0, 1))
    return ((decibels - PSNR_FLOOR_DB) / PSNR_SPAN_DB).nan_to_num(1.0).clamp(0, 1)


def _block(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(4, cout), nn.SiLU()]


class CleanlinessRegressor(ModelMixin, ConfigMixin):  # type: ignore[misc]
    """A small CNN from a 32×32 RGB image in [-1, 1] to ``clean`` in [0, 1].

    The first layers stay at full resolution, where speckle lives; global mean, max and standard
    deviation pooling then measure how much of it there is and how sharp the strongest edge is.
    """

    @register_to_config  # type: ignore[untyped-decorator]
    def __init__(self, widths: tuple[int, ...] = (16, 32, 48), hidden: int = 32) -> None:
        super().__init__()
        layers = _block(3, widths[0], 1) + _block(widths[0], widths[0], 1)
        for cin, cout in zip(widths, widths[1:], strict=False):
            layers += _block(cin, cout, 2)
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Linear(3 * widths[-1], hidden), nn.SiLU(), nn.Linear(hidden, 1)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return N logits (``clean`` is their sigmoid) for N×3×32×32 images in [-1, 1]."""
        features = self.features(images)
        pooled = torch.cat(
            [
                features.mean(dim=(2, 3)),
                features.amax(dim=(2, 3)),
                features.flatten(2).std(dim=2),
            ],
            dim=1,
        )
        return self.head(pooled).squeeze(1)  # type: ignore[no-any-return]


class CleanlinessScorer:
    """Scores how finished images look (see the module docstring for what the number means)."""

    def __init__(self, regressor: CleanlinessRegressor) -> None:
        self.regressor = regressor.float().eval()
        self.device = next(regressor.parameters()).device

    @classmethod
    def load(
        cls, device: str | torch.device = "cpu", folder: Path | None = None
    ) -> CleanlinessScorer:
        """Load the shipped regressor (or the one in ``folder``, a training output) offline."""
        from stepwatch.server.models.builtin.pipeline import weights_dir

        path = (folder or weights_dir()) / SUBFOLDER
        regressor = CleanlinessRegressor.from_pretrained(path, low_cpu_mem_usage=False)
        return cls(regressor.to(device))

    @torch.no_grad()
    def clean(self, images: torch.Tensor) -> list[float]:
        """Return ``clean`` in [0, 1] for each of N×3×H×W images in [0, 1]."""
        logits = self.regressor(to_network_input(images, self.device))
        return [float(v) for v in logits.sigmoid().cpu()]
