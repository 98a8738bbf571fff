"""The procedural training images: deterministic, and showing the attributes they are labelled."""

from __future__ import annotations

import numpy as np

from stepwatch.server.models.builtin import data


def test_same_seed_same_images() -> None:
    first, second = data.generate(6, seed=11), data.generate(6, seed=11)
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.labels, second.labels)


def test_image_depends_only_on_seed_and_index() -> None:
    whole = data.generate(6, seed=3)
    tail = data.generate(2, seed=3, start=4)
    np.testing.assert_array_equal(whole.images[4:], tail.images)


def test_different_seeds_are_different_splits() -> None:
    assert not np.array_equal(data.generate(4, seed=1).images, data.generate(4, seed=2).images)


def test_shapes_and_label_ranges() -> None:
    batch = data.generate(64, seed=0)
    assert batch.images.shape == (64, 32, 32, 3)
    assert batch.images.dtype == np.uint8
    assert batch.labels.shape == (64, 4)
    for column, classes in enumerate(data.NUM_CLASSES):
        assert set(batch.labels[:, column]) <= set(range(classes))


def test_background_and_colour_are_drawn_as_labelled() -> None:
    rng = np.random.default_rng(0)
    dark = data.render((0, 0, 1, 0), rng)  # large red circle, dark background
    light = data.render((0, 2, 1, 1), rng)  # large blue circle, light background
    assert dark[0, 0].mean() < 80 < light[0, 0].mean()
    red_pixels = (dark[..., 0] > 150) & (dark[..., 1] < 100)
    blue_pixels = (light[..., 2] > 150) & (light[..., 0] < 100)
    assert red_pixels.sum() > 100
    assert blue_pixels.sum() > 100


def test_large_shapes_cover_more_pixels_than_small_ones() -> None:
    def covered(size: int) -> int:
        image = data.render((1, 3, size, 0), np.random.default_rng(5)).astype(int)
        return int((np.abs(image - image[0, 0]).sum(axis=2) > 60).sum())

    assert covered(1) > 2 * covered(0)


def test_model_range() -> None:
    batch = data.generate(2, seed=0)
    pixels = data.to_model_range(batch.images)
    assert pixels.shape == (2, 3, 32, 32)
    assert pixels.dtype == np.float32
    assert -1.0 <= pixels.min() and pixels.max() <= 1.0
