"""Messages a client sends to the server.

Each is a frozen dataclass whose ``TYPE`` is its ``type`` on the wire and whose fields are the
other keys of its msgpack map. Fields with a default may be left out of the frame; ``None``
travels as nil. :data:`ClientMessage` is the union of them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, ClassVar, TypeAlias

from . import limits
from .errors import ErrorCode, MessageError
from .schema import ADDED, Length
from .search import (
    SEARCH_SETTINGS,
    CandidateIndex,
    Candidates,
    Every,
    Fraction,
    SearchSettings,
    Sharpness,
)
from .values import (
    ApiToken,
    Cfg,
    CheckMode,
    ControlScale,
    ControlToken,
    Count,
    ImageSize,
    ModelId,
    Name,
    Patience,
    PreviewFormat,
    PreviewSize,
    Prompt,
    RequestId,
    RunId,
    ScaleFactor,
    Score,
    Seed,
    Step,
    Steps,
    StopMode,
    Strength,
    UploadId,
)

__all__ = [
    "ClientMessage",
    "Hello",
    "Ping",
    "ResumePoint",
    "Set",
    "Start",
    "Stop",
    "Subscribe",
    "Unsubscribe",
]


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """A run to watch again after a reconnect, and the last event of it the client saw."""

    #: The run to resume.
    run_id: RunId
    #: The ``seq`` of the last event received; the server sends every later one.
    after_seq: Count


@dataclass(frozen=True, slots=True)
class Hello:
    """Opens the session; must be the first message on a connection.

    The server answers :class:`~stepwatch.protocol.Welcome`, then, for each resume point, a
    ``subscribed`` followed by the events the client missed.
    """

    TYPE: ClassVar[str] = "hello"

    #: The client's name and version, e.g. ``stepwatch-python/0.1.0``, for the server's logs.
    client: Name
    #: The API token, when the server requires one.
    token: ApiToken | None = None
    #: Runs to watch again, with the last ``seq`` seen of each.
    resume: Annotated[tuple[ResumePoint, ...], Length(0, limits.MAX_RESUME_RUNS)] = ()
    #: The fields added to version 1 after its first release that this client reads, by name
    #: (see :mod:`stepwatch.protocol.evolution`); the server leaves out the others.
    features: Annotated[tuple[Name, ...], Length(0, limits.MAX_LISTED)] = field(
        default=(), metadata=ADDED
    )


@dataclass(frozen=True, slots=True)
class Start:
    """Asks for a new run. Answered by ``accepted`` (or ``error``); its events follow.

    ``None`` means "the server's default for the model" (listed in ``welcome``); the resolved
    value of every parameter is in the run's ``started`` event.
    """

    TYPE: ClassVar[str] = "start"

    #: Chosen by the client, echoed in ``accepted`` or ``error``.
    request_id: RequestId
    #: What to draw.
    prompt: Prompt
    #: One of the ``welcome.models`` ids; ``None`` for the server's first model.
    model: ModelId | None = None
    #: What to steer away from.
    negative_prompt: Prompt = ""
    #: The random seed; ``None`` lets the server pick one (reported in ``started``).
    seed: Seed | None = None
    #: Denoising steps.
    steps: Steps | None = None
    #: Classifier-free guidance scale at the start of the run.
    cfg: Cfg | None = None
    #: One of the model's samplers.
    sampler: Name | None = None
    #: One of the model's schedulers.
    scheduler: Name | None = None
    #: Image width in pixels, a multiple of the model's ``size_multiple``.
    width: ImageSize | None = None
    #: Image height in pixels, a multiple of the model's ``size_multiple``.
    height: ImageSize | None = None
    #: One of the ``welcome.verifiers`` ids; ``None`` for the model's default verifier.
    verifier: Name | None = None
    #: Score the x0 estimate every this many steps.
    check_interval: Steps = 5
    #: The score the run must reach; ``None`` for the verifier's default threshold.
    quality_threshold: Score | None = None
    #: Multiply CFG by this when a check scores below the threshold (1.0: never raise it).
    scale_factor: ScaleFactor = 1.25
    #: CFG is never raised above this; ``None`` for the model's default.
    cfg_max: Cfg | None = None
    #: Whether the run may stop early once quality holds.
    early_stop: bool = True
    #: Checks in a row at or above the threshold before an early stop.
    patience: Patience = 1
    #: No early stop before this step; ``None`` for the server's default (a share of steps).
    min_steps: Step | None = None
    #: Longest side of the preview thumbnails in ``check`` events; 0 sends none.
    preview_size: PreviewSize = 128
    #: Encoding of the preview thumbnails.
    preview_format: PreviewFormat = "jpeg"
    #: One of the model's ``preview_decoders``; ``None`` for its default.
    preview_decoder: Name | None = field(default=None, metadata=ADDED)
    #: Candidates to denoise as one batch (1: a single run); see :mod:`.search`.
    candidates: Candidates = field(default=1, metadata=ADDED)
    #: The search's strategy and settings; ``None`` for best-of-N with the defaults.
    search: SearchSettings | None = field(default=None, metadata=ADDED)
    #: Input images by upload id (``POST /api/uploads``): the init image of an image-to-image
    #: or inpainting model, the inpainting mask (white is repainted; the init image's size),
    #: the ControlNet's control image. A model that needs one refuses a ``start`` without it.
    image: UploadId | None = field(default=None, metadata=ADDED)
    mask: UploadId | None = field(default=None, metadata=ADDED)
    control_image: UploadId | None = field(default=None, metadata=ADDED)
    #: How much of the init image is re-noised; ``None`` for the model's default. The run
    #: takes about ``strength x steps`` steps.
    strength: Strength | None = field(default=None, metadata=ADDED)
    #: The ControlNet's conditioning scale; ``None`` for the model's default.
    control_scale: ControlScale | None = field(default=None, metadata=ADDED)
    #: ``overlapped``: checks run beside the sampler and each decision applies one step after
    #: its check; ``strict``: the sampler waits for each check; ``None`` for the server's default.
    checks: CheckMode | None = field(default=None, metadata=ADDED)


@dataclass(frozen=True, slots=True)
class Stop:
    """Ends a run its sender owns. Acknowledged by the run's ``applied``; ``finished`` follows."""

    TYPE: ClassVar[str] = "stop"

    #: Chosen by the client, echoed in ``applied`` or ``error``.
    request_id: RequestId
    #: The run to stop.
    run_id: RunId
    #: The run's control token from ``accepted``.
    token: ControlToken
    #: ``finish`` returns the decoded x0 estimate of the current step; ``abort`` returns none.
    mode: StopMode = "finish"
    #: In a search: stop only this candidate (it leaves the batch as a pruned one does; the
    #: search goes on, and ``mode`` does not apply).
    candidate: CandidateIndex | None = field(default=None, metadata=ADDED)
    #: In a search: stop every other candidate; this one finishes as the run's result.
    keep: CandidateIndex | None = field(default=None, metadata=ADDED)

    def __post_init__(self) -> None:
        if self.candidate is not None and self.keep is not None:
            raise MessageError(ErrorCode.INVALID_MESSAGE, "stop names candidate or keep, not both")


@dataclass(frozen=True, slots=True)
class Set:
    """Changes settings of a running run its sender owns; at least one must be given.

    Acknowledged by the run's ``applied`` with the step at which the change took effect.
    """

    TYPE: ClassVar[str] = "set"

    #: Chosen by the client, echoed in ``applied`` or ``error``.
    request_id: RequestId
    #: The run to change.
    run_id: RunId
    #: The run's control token from ``accepted``.
    token: ControlToken
    #: The new quality threshold.
    quality_threshold: Score | None = None
    #: The new factor for raising CFG.
    scale_factor: ScaleFactor | None = None
    #: The new number of steps between checks.
    check_interval: Steps | None = None
    #: The CFG to use from the next step on.
    cfg: Cfg | None = None
    #: A search's :class:`~.search.SearchSettings` of the same names, from the next check on;
    #: each is refused where the run's strategy has no use for it.
    keep_fraction: Fraction | None = field(default=None, metadata=ADDED)
    prune_every: Every | None = field(default=None, metadata=ADDED)
    fk_lambda: Sharpness | None = field(default=None, metadata=ADDED)
    resample_every: Every | None = field(default=None, metadata=ADDED)
    ess_threshold: Fraction | None = field(default=None, metadata=ADDED)

    def __post_init__(self) -> None:
        changes = (
            self.quality_threshold,
            self.scale_factor,
            self.check_interval,
            self.cfg,
            *(getattr(self, name) for name in SEARCH_SETTINGS),
        )
        if all(change is None for change in changes):
            raise MessageError(ErrorCode.INVALID_MESSAGE, "set changes nothing")


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Starts watching a run (any run, owned or not).

    Answered by ``subscribed``, then every event of the run with ``seq`` above ``after_seq`` in
    order, then its live events until ``finished`` or ``unsubscribe``.
    """

    TYPE: ClassVar[str] = "subscribe"

    #: The run to watch.
    run_id: RunId
    #: The last ``seq`` already seen; 0 replays the run from its first event.
    after_seq: Count = 0


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """Stops watching a run. Answered by ``unsubscribed``; the run itself goes on."""

    TYPE: ClassVar[str] = "unsubscribe"

    #: The run to stop watching.
    run_id: RunId


@dataclass(frozen=True, slots=True)
class Ping:
    """Asks for a ``pong`` carrying the same nonce (an application-level liveness check)."""

    TYPE: ClassVar[str] = "ping"

    #: Any number; echoed in the ``pong``.
    nonce: Count = 0


#: Every message a client may send.
ClientMessage: TypeAlias = Hello | Start | Stop | Set | Subscribe | Unsubscribe | Ping
