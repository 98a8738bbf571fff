"""The finishing tail's plan: which positions it visits and how it moves between them."""

from __future__ import annotations

import pytest
import torch

from stepwatch.server.engine.finish import ddim_move, tail_length, tail_positions


@pytest.mark.parametrize(
    ("remaining", "length"), [(1, 1), (2, 2), (5, 2), (6, 3), (10, 4), (19, 8), (394, 8)]
)
def test_a_tail_spends_about_two_fifths_of_what_is_left_within_bounds(
    remaining: int, length: int
) -> None:
    assert tail_length(remaining) == length


def test_tail_positions_run_evenly_from_the_current_to_the_last() -> None:
    assert tail_positions(10, 19, 4) == (10, 13, 16, 19)
    assert tail_positions(17, 19, 5) == (17, 18, 19)
    assert tail_positions(19, 19, 3) == (19,)
    with pytest.raises(ValueError, match="no positions remain"):
        tail_positions(20, 19, 2)


def test_the_ddim_move_keeps_the_noise_estimate_and_reaches_x0_at_zero_noise() -> None:
    x0 = torch.full((1, 3, 4, 4), 0.5)
    eps = torch.linspace(-1, 1, 48).view(1, 3, 4, 4)
    here, there = (0.6, 0.8), (0.9, 0.3)
    sample = here[0] * x0 + here[1] * eps
    moved = ddim_move(sample, x0, here, there)
    assert torch.allclose(moved, there[0] * x0 + there[1] * eps, atol=1e-6)
    assert torch.allclose(ddim_move(sample, x0, here, (1.0, 0.0)), x0, atol=1e-6)
