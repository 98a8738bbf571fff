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
  the same list);
- every batch tensor the pipeline holds across steps without handing it to the callback (Flux's
  pooled embeddings and guidance vector, and, where a caller asks for them, Flux's true-CFG
  negatives, SD3's skip-layer-guidance embeddings, IP-Adapter embeddings in
  ``joint_attention_kwargs``; SD3 in diffusers 0.42 hands its pooled embeddings back):
  :class:`HeldRows`, a forward pre-hook on the denoiser, re-indexes them on their way in with a
  cumulative map from each lane to its row in the batch the pipeline built.

:data:`REINDEXABLE` lists the pipelines whose every per-lane tensor is covered, each tested
(prune shrinks the batch, an FK copy continues as its parent). Others are refused: a pipeline
may use held per-lane state outside the denoiser (inpainting blends its mask and image latents
into the latents after each step) where no hook sees it.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["REINDEXABLE", "DenoiserCounter", "HeldRows", "reindex_rows", "reindex_scheduler"]

#: Pipelines whose batch the callback and :class:`HeldRows` re-index completely.
REINDEXABLE = frozenset(
    {
        "ShapesPipeline",
        "StableDiffusionPipeline",
        "StableDiffusionXLPipeline",
        "StableDiffusion3Pipeline",
        "FluxPipeline",
        "DrivenLoop",
    }
)

#: Denoiser keywords that hold one row per token position, not per lane (Flux's rotary ids): an
#: image or prompt of as many tokens as the batch has lanes must not make them look per-lane.
POSITION_KEYWORDS = frozenset({"txt_ids", "img_ids"})


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


class HeldRows:
    """Keeps the batch tensors a pipeline holds across steps in the lanes' order.

    Until the first re-indexing it only remembers (weakly) every tensor of the batch's rows
    (``lanes`` or CFG's 2 × ``lanes``) that reaches the denoiser. From then on a tensor that is
    one of those very objects has never been re-indexed: it is in the order the pipeline built
    the batch, and goes in as ``rows[lane]`` for each lane (both halves for CFG's). Tensors the
    pipeline makes anew each step come from the latents, which are already in lane order, and a
    tensor the callback re-indexed is a new object; both pass untouched. :meth:`reorder` composes
    the map, so it stays right after any number of prunes and FK resamplings and when lanes hold
    different prompts. Install with :meth:`attach`; :meth:`detach` removes the hook.
    """

    def __init__(self, lanes: int) -> None:
        self.lanes = lanes
        #: For each lane now, its row in the batch the pipeline built.
        self.rows = list(range(lanes))
        self.reindexed = 0
        self._held: weakref.WeakValueDictionary[int, torch.Tensor] = weakref.WeakValueDictionary()
        self._frozen = False
        self._cache: dict[int, torch.Tensor] = {}
        self._handle: Any = None

    def attach(self, pipeline: Any) -> bool:
        """Hook the pipeline's UNet or transformer; False when it has none."""
        denoiser = getattr(pipeline, "unet", None) or getattr(pipeline, "transformer", None)
        if not isinstance(denoiser, torch.nn.Module):
            return False
        self._handle = denoiser.register_forward_pre_hook(self._before, with_kwargs=True)
        return True

    def detach(self) -> None:
        """Remove the hook."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def reorder(self, order: Sequence[int]) -> None:
        """Lane ``j`` continues from lane ``order[j]`` (call it where the callback re-indexes)."""
        self.rows = [self.rows[i] for i in order]
        self._frozen = True
        self._cache.clear()

    def _before(
        self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        new_args = tuple(self._follow(value) for value in args)
        new_kwargs = {
            name: value if name in POSITION_KEYWORDS else self._follow(value)
            for name, value in kwargs.items()
        }
        return new_args, new_kwargs

    def _follow(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return self._tensor(value)
        if isinstance(value, dict):
            return {k: v if k in POSITION_KEYWORDS else self._follow(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self._follow(v) for v in value)
        return value

    def _tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        if not tensor.ndim or tensor.shape[0] not in (self.lanes, 2 * self.lanes):
            return tensor
        if not self._frozen:
            self._held[id(tensor)] = tensor
            return tensor
        if self._held.get(id(tensor)) is not tensor:
            return tensor
        cached = self._cache.get(id(tensor))
        if cached is None:
            cached = reindex_rows(tensor, self.rows, self.lanes)
            self._cache[id(tensor)] = cached
            self.reindexed += 1
        return cached
