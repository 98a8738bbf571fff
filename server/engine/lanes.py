"""A search's batch as lanes: re-indexing every per-candidate tensor, counting the denoiser.

A lane is one candidate's place in the pipeline's batch. When a strategy answers a new order
(:mod:`.strategies`), everything that holds one row per lane must follow it:

- the latents the step callback hands back to the pipeline;
- the conditioning tensors the pipeline takes back from ``callback_on_step_end`` (a tensor of
  B rows is re-indexed directly; one of 2B rows is classifier-free guidance's [negative;
  positive] halves, each re-indexed);
- the scheduler's multistep state (DPM-Solver's ``model_outputs``, UniPC's ``last_sample``,
  Heun's ``prev_derivative``…): every tensor attribute, or tensor in a list attribute, with the
  latents' exact shape;
- the generators the scheduler draws its noise from, re-ordered in place (the pipeline holds
  the same list).

Only pipelines whose every batch tensor goes through the callback can shrink their batch
(:data:`REINDEXABLE`): SD3 and Flux keep pooled embeddings the callback never sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["REINDEXABLE", "DenoiserCounter", "reindex_rows", "reindex_scheduler"]

#: Pipelines whose batch the callback can re-index completely.
REINDEXABLE = frozenset(
    {"ShapesPipeline", "StableDiffusionPipeline", "StableDiffusionXLPipeline", "DrivenLoop"}
)


def reindex_rows(tensor: torch.Tensor, order: Sequence[int], lanes: int) -> torch.Tensor:
    """``tensor`` with its per-lane rows in ``order`` (``lanes`` the batch before)."""
    index = torch.tensor(list(order), dtype=torch.long, device=tensor.device)
    rows = tensor.shape[0] if tensor.ndim else 0
    if rows == lanes:
        return tensor[index]
    if rows == 2 * lanes:
        return torch.cat([tensor[:lanes][index], tensor[lanes:][index]])
    return tensor


def reindex_scheduler(scheduler: Any, order: Sequence[int], shape: torch.Size) -> int:
    """Re-index the scheduler's per-lane state (tensors of the latents' ``shape``); return how
    many tensors were re-indexed."""
    index: torch.Tensor | None = None
    count = 0

    def pick(value: torch.Tensor) -> torch.Tensor:
        nonlocal index, count
        if index is None:
            index = torch.tensor(list(order), dtype=torch.long, device=value.device)
        count += 1
        return value[index.to(value.device)]

    for name, value in list(vars(scheduler).items()):
        if isinstance(value, torch.Tensor) and value.shape == shape:
            setattr(scheduler, name, pick(value))
        elif isinstance(value, list) and any(_fits(v, shape) for v in value):
            setattr(scheduler, name, [pick(v) if _fits(v, shape) else v for v in value])
    return count


def _fits(value: object, shape: torch.Size) -> bool:
    return isinstance(value, torch.Tensor) and value.shape == shape


class DenoiserCounter:
    """Counts the denoiser's evaluations (rows of every forward call) and keeps each call's
    batch size. Install with :meth:`attach`; :meth:`detach` removes the hook."""

    def __init__(self) -> None:
        self.evaluations = 0
        self.batch_sizes: list[int] = []
        self._handle: Any = None

    def attach(self, pipeline: Any) -> None:
        """Count the forward calls of the pipeline's UNet or transformer."""
        denoiser = getattr(pipeline, "unet", None) or getattr(pipeline, "transformer", None)
        if isinstance(denoiser, torch.nn.Module):
            self._handle = denoiser.register_forward_pre_hook(self._seen, with_kwargs=True)

    def detach(self) -> None:
        """Remove the hook."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _seen(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        sample = args[0] if args else next(iter(kwargs.values()), None)
        if isinstance(sample, torch.Tensor):
            self.evaluations += int(sample.shape[0])
            self.batch_sizes.append(int(sample.shape[0]))
