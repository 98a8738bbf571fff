"""The batch's held tensors follow the lanes through prunes and FK resamplings."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from stepwatch.server.engine.lanes import HeldRows


class Recording(torch.nn.Module):
    """A denoiser that keeps the keyword arguments of its last call."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, Any] = {}

    def forward(self, hidden_states: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.seen = {"hidden_states": hidden_states, **kwargs}
        return hidden_states


def rows(lanes: int, offset: float = 0.0) -> torch.Tensor:
    """A tensor whose row i holds i (+ offset), so a row's origin can be read back."""
    return (torch.arange(lanes, dtype=torch.float32) + offset)[:, None].repeat(1, 3)


def origins(tensor: torch.Tensor) -> list[float]:
    return [float(v) for v in tensor[:, 0]]


def test_held_tensors_follow_a_prune_then_a_resampling_fresh_ones_pass() -> None:
    denoiser = Recording()
    held = HeldRows(4)
    assert held.attach(SimpleNamespace(unet=None, transformer=denoiser))
    pooled, guidance, cfg_pair = rows(4), torch.full([1], 3.5).expand(4), rows(8)
    # Flux's rotary ids: four tokens, so as many rows as lanes, yet not per lane.
    img_ids = rows(4, offset=100.0)
    kept_in = {"ip_adapter_image_embeds": [rows(4, offset=10.0)]}

    def call(lanes: int) -> dict[str, Any]:
        denoiser(
            rows(lanes, offset=50.0),  # fresh each step, from the latents: already in order
            pooled_projections=pooled,
            guidance=guidance,
            encoder_hidden_states=cfg_pair,
            img_ids=img_ids,
            joint_attention_kwargs=kept_in,
        )
        return denoiser.seen

    before = call(4)
    assert before["pooled_projections"] is pooled and before["img_ids"] is img_ids
    held.reorder([1, 2, 3])  # prune: lane 0 stops
    pruned = call(3)
    assert origins(pruned["hidden_states"]) == [50.0, 51.0, 52.0]
    assert origins(pruned["pooled_projections"]) == [1.0, 2.0, 3.0]
    assert pruned["guidance"].shape == (3,)
    # CFG's [negative; positive] halves, each in the lanes' order.
    assert origins(pruned["encoder_hidden_states"]) == [1.0, 2.0, 3.0, 5.0, 6.0, 7.0]
    assert pruned["img_ids"] is img_ids
    embeds = pruned["joint_attention_kwargs"]["ip_adapter_image_embeds"][0]
    assert origins(embeds) == [11.0, 12.0, 13.0]
    held.reorder([0, 0, 2])  # FK: slots 0 and 1 continue from today's lane 0, the batch's row 1
    resampled = call(3)
    assert origins(resampled["pooled_projections"]) == [1.0, 1.0, 3.0]
    assert origins(resampled["encoder_hidden_states"]) == [1.0, 1.0, 3.0, 5.0, 5.0, 7.0]
    assert held.rows == [1, 1, 3]
    held.detach()
    assert call(4)["pooled_projections"] is pooled


def test_a_tensor_first_seen_after_a_reordering_is_in_lane_order_already() -> None:
    denoiser = Recording()
    held = HeldRows(2)
    held.attach(SimpleNamespace(unet=denoiser))
    denoiser(rows(2), pooled_projections=rows(2))
    held.reorder([1, 0])
    handed_back = rows(2, offset=20.0)  # what the step callback re-indexed and returned
    denoiser(rows(2), pooled_projections=handed_back)
    assert denoiser.seen["pooled_projections"] is handed_back
    assert held.reindexed == 0


def test_a_pipeline_without_a_denoiser_module_is_not_hooked() -> None:
    assert not HeldRows(2).attach(SimpleNamespace(unet=None, transformer=None))
