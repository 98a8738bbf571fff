"""Attribute classifiers for the built-in model: the adherence verifier's net and the judge's net.

Both read a 32×32 RGB image in [-1, 1] and return one row of concatenated logits, one block per
attribute in vocabulary order (:func:`split_logits` cuts it up). They are deliberately different
so that the judge does not share the verifier's blind spots:

- :class:`AttributeClassifier` (steers sampling): a small CNN of 3×3 convolutions with strided
  downsampling, BatchNorm, ReLU, and global average + max pooling into linear heads.
- :class:`JudgeClassifier` (benchmarks only, never steers): wider 5×5 convolutions, BatchNorm,
  GELU, max pooling, and a position-aware MLP on the flattened feature map.

The training script trains each on its own seed and its own split of the procedural data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from stepwatch.server.models.builtin.data import IMAGE_SIZE, NUM_CLASSES


def to_network_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Check and convert N×3×H×W images in [0, 1] (any size) to the nets' 32×32 [-1, 1] input."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected N×3×H×W RGB images, got shape {tuple(images.shape)}")
    images = images.to(device=device, dtype=torch.float32)
    if images.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        images = F.interpolate(
            images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True
        )
    return images.clamp(0, 1) * 2 - 1


def split_logits(logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Cut N×sum(classes) logits into one N×classes block per attribute, in vocabulary order."""
    return tuple(logits.split(list(NUM_CLASSES), dim=1))


def _conv(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]


class AttributeClassifier(ModelMixin, ConfigMixin):  # type: ignore[misc]
    """The adherence verifier's CNN: 3×3 convolutions, strided downsampling, and global average
    and max pooling side by side into linear heads.

    Max pooling finds the corners and arms that tell shapes apart wherever the shape sits;
    average pooling measures how much of the image it covers (its size).
    """

    @register_to_config  # type: ignore[untyped-decorator]
    def __init__(self, widths: tuple[int, ...] = (24, 48, 96)) -> None:
        super().__init__()
        layers = _conv(3, widths[0], 1)
        for cin, cout in zip(widths, widths[1:], strict=False):
            layers += _conv(cin, cout, 2) + _conv(cout, cout, 1)
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(2 * widths[-1], sum(NUM_CLASSES))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return N×sum(classes) logits for N×3×32×32 images in [-1, 1]."""
        features = self.features(images)
        pooled = torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], dim=1)
        return self.head(pooled)  # type: ignore[no-any-return]


class JudgeClassifier(ModelMixin, ConfigMixin):  # type: ignore[misc]
    """The held-out judge's CNN: 5×5 convolutions, max pooling, an MLP on the flat feature map."""

    @register_to_config  # type: ignore[untyped-decorator]
    def __init__(self, widths: tuple[int, ...] = (32, 64, 128), hidden: int = 128) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for width in widths:
            layers += [
                nn.Conv2d(cin, width, 5, padding=2),
                nn.BatchNorm2d(width),
                nn.GELU(),
                nn.MaxPool2d(2),
            ]
            cin = width
        self.features = nn.Sequential(*layers)
        side = 32 // 2 ** len(widths)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(cin * side * side, hidden),
            nn.GELU(),
            nn.Dropout(0.2),
            nn.Linear(hidden, sum(NUM_CLASSES)),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return N×sum(classes) logits for N×3×32×32 images in [-1, 1]."""
        return self.head(self.features(images))  # type: ignore[no-any-return]
