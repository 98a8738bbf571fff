"""What a monitored run and a search share about calling the pipeline and ending a run:
the call's arguments, the last event, and the failure an unexpected exception becomes."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from stepwatch.protocol import ErrorCode, Finished, RunError, RunParameters

from .events import EventSink, fit_text
from .inputs import InputImages, input_arguments
from .model import LoadedModel

__all__ = ["call_arguments", "classify_failure", "emit_finished"]

logger = logging.getLogger(__name__)

StepCallback = Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]]


def call_arguments(
    model: LoadedModel,
    params: RunParameters,
    *,
    cfg: float,
    images: int,
    generator: torch.Generator | list[torch.Generator],
    callback: StepCallback,
    tensor_inputs: Sequence[str],
    latents: torch.Tensor | None = None,
    inputs: InputImages | None = None,
) -> dict[str, Any]:
    """The keyword arguments of the pipeline call for ``images`` images of ``params``, with
    ``callback`` at every step end and the run's input images; only those the pipeline's
    ``__call__`` takes."""
    arguments: dict[str, Any] = {
        "prompt": params.prompt,
        "negative_prompt": params.negative_prompt or None,
        "num_inference_steps": params.steps,
        "guidance_scale": cfg,
        "height": params.height,
        "width": params.width,
        "num_images_per_prompt": images,
        "generator": generator,
        "output_type": "pt",
        "return_dict": True,
        "callback_on_step_end": callback,
        "callback_on_step_end_tensor_inputs": list(tensor_inputs),
    }
    if latents is not None:
        arguments["latents"] = latents
    arguments.update(input_arguments(model.inputs, inputs, params.strength, params.control_scale))
    accepted = model.call_parameters
    return {k: v for k, v in arguments.items() if k in accepted}


def emit_finished(sink: EventSink, result: Finished) -> None:
    """Hand a run's last event to its sink; a sink that fails now cannot change the result."""
    try:
        sink(result)
    except Exception:  # the run is over; a broken sink cannot change its result
        logger.exception("the event sink failed on the finished event")


def classify_failure(exc: Exception) -> RunError:
    """Turn an unexpected exception from inside a run into a coded failure."""
    text = str(exc)
    if isinstance(exc, torch.OutOfMemoryError | MemoryError) or "out of memory" in text.lower():
        return RunError(ErrorCode.OUT_OF_MEMORY, fit_text(f"out of memory: {text}"))
    logger.exception("a run failed")
    return RunError(ErrorCode.INTERNAL, fit_text(f"{type(exc).__name__}: {text}"))
