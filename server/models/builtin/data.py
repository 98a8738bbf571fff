"""Procedural training images for the built-in model: one coloured shape on a plain background.

Every image is drawn at :data:`SUPERSAMPLE` times the final size with Pillow and box-filtered down,
so edges are anti-aliased the way a photographed shape would be. Each image depends only on
``(seed, index)``, never on how many images were asked for, so the diffusion model, the adherence
classifier and the judge can draw disjoint splits of one infinite data set by seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from stepwatch.server.models.builtin.vocabulary import ATTRIBUTES

IMAGE_SIZE = 32
SUPERSAMPLE = 4

# Base RGB of each colour, in vocabulary order; each image jitters every channel a little.
COLOUR_RGB: tuple[tuple[int, int, int], ...] = (
    (220, 40, 40),  # red
    (40, 175, 60),  # green
    (45, 85, 225),  # blue
    (235, 210, 40),  # yellow
    (150, 60, 205),  # purple
    (245, 135, 30),  # orange
)
COLOUR_JITTER = 14
# Grey level ranges of the two backgrounds, in vocabulary order (dark, light).
BACKGROUND_LEVELS: tuple[tuple[int, int], ...] = ((12, 60), (195, 240))
# Half-extent of the shape in output pixels, in vocabulary order (small, large).
SIZE_RADII: tuple[tuple[float, float], ...] = ((4.0, 6.0), (9.0, 12.5))
MAX_ROTATION_DEGREES = 20.0
MARGIN = 1.0

NUM_CLASSES: tuple[int, ...] = tuple(len(attribute.values) for attribute in ATTRIBUTES)


@dataclass(frozen=True)
class ShapeBatch:
    """Images as ``uint8`` N×H×W×3 and their class indices as ``int64`` N×4 (vocabulary order)."""

    images: np.ndarray
    labels: np.ndarray


def _polygon(shape: int, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Return the outline of a square, triangle or cross centred at (cx, cy), rotated by angle."""
    if shape == 1:  # square
        points = [(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)]
        scale = r * 0.85  # a square of half-side r would look much bigger than the circle
    elif shape == 2:  # triangle, apex up, centred on its circumcentre
        points = [(math.sin(a), -math.cos(a)) for a in (0.0, 2 * math.pi / 3, 4 * math.pi / 3)]
        scale = r * 1.1
    else:  # cross (a plus sign)
        w = 0.36
        points = [
            (-w, -1.0), (w, -1.0), (w, -w), (1.0, -w), (1.0, w), (w, w),
            (w, 1.0), (-w, 1.0), (-w, w), (-1.0, w), (-1.0, -w), (-w, -w),
        ]  # fmt: skip
        scale = r
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + scale * (x * cos - y * sin), cy + scale * (x * sin + y * cos)) for x, y in points]


def render(labels: tuple[int, int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Draw one image with the given class indices (shape, colour, size, background).

    Position, exact size, rotation, colour and background shade come from ``rng``.
    Returns ``uint8`` H×W×3.
    """
    shape, colour, size, background = labels
    big = IMAGE_SIZE * SUPERSAMPLE
    low, high = BACKGROUND_LEVELS[background]
    grey = rng.uniform(low, high)
    tint = rng.uniform(-6, 6, size=3)
    bg = tuple(int(np.clip(grey + t, 0, 255)) for t in tint)
    jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
    fg = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOUR_RGB[colour], jitter, strict=True))
    r = rng.uniform(*SIZE_RADII[size])
    cx, cy = rng.uniform(r + MARGIN, IMAGE_SIZE - r - MARGIN, size=2)
    angle = math.radians(rng.uniform(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES))

    canvas = Image.new("RGB", (big, big), bg)
    draw = ImageDraw.Draw(canvas)
    s = SUPERSAMPLE
    if shape == 0:
        draw.ellipse([(cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s], fill=fg)
    else:
        outline = _polygon(shape, cx * s, cy * s, r * s, angle)
        draw.polygon(outline, fill=fg)
    small = canvas.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.uint8)


def random_labels(rng: np.random.Generator) -> tuple[int, int, int, int]:
    """Draw class indices for one image, every attribute uniform and independent."""
    shape, colour, size, background = (int(rng.integers(n)) for n in NUM_CLASSES)
    return shape, colour, size, background


def generate(count: int, seed: int, start: int = 0) -> ShapeBatch:
    """Return images ``start`` … ``start + count - 1`` of the data set named by ``seed``.

    Image ``i`` depends only on ``(seed, i)``: equal seeds give equal images, and two seeds give
    independent data sets (used as disjoint training splits).
    """
    images = np.empty((count, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    labels = np.empty((count, len(NUM_CLASSES)), dtype=np.int64)
    for offset in range(count):
        rng = np.random.default_rng((seed, start + offset))
        drawn = random_labels(rng)
        labels[offset] = drawn
        images[offset] = render(drawn, rng)
    return ShapeBatch(images=images, labels=labels)


def to_model_range(images: np.ndarray) -> np.ndarray:
    """Map ``uint8`` N×H×W×3 images to ``float32`` N×3×H×W in [-1, 1], the model's pixel space."""
    return images.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0
