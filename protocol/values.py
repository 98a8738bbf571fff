"""The bounded value types that messages are made of.

Each alias is a plain Python type to the type checker and, through its ``Annotated`` marker,
a bound to the codec (see :mod:`stepwatch.protocol.schema`). Message fields use these aliases
rather than bare ``int`` or ``str``, so the limits of :mod:`stepwatch.protocol.limits` apply
everywhere the same value appears.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal, TypeAlias, get_args

from . import limits
from .schema import Length, Range

__all__ = [
    "ApiToken",
    "Cfg",
    "ControlToken",
    "Count",
    "Decision",
    "Description",
    "FinishReason",
    "ImageSize",
    "ModelId",
    "Name",
    "Patience",
    "PreviewFormat",
    "PreviewSize",
    "Prompt",
    "RequestId",
    "RunId",
    "RunState",
    "SETTINGS",
    "ScaleFactor",
    "Score",
    "Seconds",
    "Seed",
    "Seq",
    "Setting",
    "Step",
    "Steps",
    "StopMode",
    "Text",
    "UploadId",
    "Strength",
    "ControlScale",
]

# Identifiers and text.

#: A short name: a sampler, scheduler, verifier, capability, score component.
Name: TypeAlias = Annotated[str, Length(1, limits.MAX_NAME_CHARS)]
#: A model identifier as the server lists it in ``welcome``.
ModelId: TypeAlias = Annotated[str, Length(1, limits.MAX_MODEL_ID_CHARS)]
#: A run's identifier, made by the server.
RunId: TypeAlias = Annotated[str, Length(1, limits.MAX_ID_CHARS)]
#: A request's identifier, made by the client and echoed in the reply.
RequestId: TypeAlias = Annotated[str, Length(1, limits.MAX_ID_CHARS)]
#: The secret that lets its holder steer a run.
ControlToken: TypeAlias = Annotated[
    str, Length(limits.MIN_CONTROL_TOKEN_CHARS, limits.MAX_TOKEN_CHARS)
]
#: The secret a server may require in ``hello``.
ApiToken: TypeAlias = Annotated[str, Length(1, limits.MAX_TOKEN_CHARS)]
#: A prompt or negative prompt; empty is allowed.
Prompt: TypeAlias = Annotated[str, Length(0, limits.MAX_PROMPT_CHARS)]
#: A description of a model or verifier.
Description: TypeAlias = Annotated[str, Length(0, limits.MAX_DESCRIPTION_CHARS)]
#: An uploaded image's id (the SHA-256 of its bytes, hex), as ``POST /api/uploads`` answers.
UploadId: TypeAlias = Annotated[str, Length(limits.UPLOAD_ID_CHARS, limits.UPLOAD_ID_CHARS)]
#: An error message, or the reason given for a decision.
Text: TypeAlias = Annotated[str, Length(0, limits.MAX_MESSAGE_CHARS)]

# Numbers.

#: A count or position that cannot be negative.
Count: TypeAlias = Annotated[int, Range(0, limits.MAX_INT)]
#: A per-run event sequence number; the first event of a run has seq 1.
Seq: TypeAlias = Annotated[int, Range(1, limits.MAX_INT)]
#: A step number; step ``n`` is the ``n``-th of the run's steps, counted from 1 (0: before any).
Step: TypeAlias = Annotated[int, Range(0, limits.MAX_STEPS)]
#: A number of denoising steps.
Steps: TypeAlias = Annotated[int, Range(limits.MIN_STEPS, limits.MAX_STEPS)]
#: A random seed.
Seed: TypeAlias = Annotated[int, Range(0, limits.MAX_INT)]
#: An image width or height in pixels.
ImageSize: TypeAlias = Annotated[int, Range(limits.MIN_SIZE, limits.MAX_SIZE)]
#: The longest side of a preview thumbnail; 0 means no thumbnails.
PreviewSize: TypeAlias = Annotated[int, Range(0, limits.MAX_PREVIEW_SIZE)]
#: A classifier-free guidance scale.
Cfg: TypeAlias = Annotated[float, Range(limits.MIN_CFG, limits.MAX_CFG)]
#: The factor CFG is multiplied by when quality is low.
ScaleFactor: TypeAlias = Annotated[float, Range(limits.MIN_SCALE_FACTOR, limits.MAX_SCALE_FACTOR)]
#: A verifier score or a quality threshold, in [0, 1].
Score: TypeAlias = Annotated[float, Range(limits.MIN_SCORE, limits.MAX_SCORE)]
#: Checks at or above the threshold needed in a row before an early stop.
Patience: TypeAlias = Annotated[int, Range(limits.MIN_PATIENCE, limits.MAX_PATIENCE)]
#: A duration in seconds.
Seconds: TypeAlias = Annotated[float, Range(0.0, limits.MAX_SECONDS)]

#: How much of an init image an image-to-image run re-noises: 1.0 all of it, 0.0 none.
Strength: TypeAlias = Annotated[float, Range(0.0, 1.0)]
#: How strongly a ControlNet's control image steers the run.
ControlScale: TypeAlias = Annotated[float, Range(0.0, limits.MAX_CONTROL_SCALE)]

# Choices.

#: What the policy decided at a check.
Decision: TypeAlias = Literal["continue", "raise_cfg", "early_stop"]
#: Why a run ended: it ran all its steps; quality held and it stopped early; its owner stopped
#: it; it failed (see its error); the server gave it up after its owner's connection went away;
#: the server shut down.
FinishReason: TypeAlias = Literal[
    "completed", "early_stop", "stopped", "failed", "abandoned", "shutdown"
]
#: ``finish``: finish quickly, re-planning the remaining steps into a short tail to zero noise,
#: and return that finished image; ``estimate``: end now and return the decoded x0 estimate of
#: the current step; ``abort``: end now and return no image.
StopMode: TypeAlias = Literal["finish", "estimate", "abort"]
#: The run settings that may change while a run goes on.
Setting: TypeAlias = Literal["quality_threshold", "scale_factor", "check_interval", "cfg"]
#: Every :data:`Setting`, in order.
SETTINGS: Final[tuple[str, ...]] = get_args(Setting)
#: How a run's checks are computed: ``strict`` on the sampler's thread, the decision applied at
#: the check's own step; ``overlapped`` beside the sampler, the decision applied one step later.
CheckMode: TypeAlias = Literal["strict", "overlapped"]
#: The encodings of preview thumbnails.
PreviewFormat: TypeAlias = Literal["webp", "jpeg", "png"]
#: Where a run is in its life.
RunState: TypeAlias = Literal["queued", "running", "finished"]
