"""Messages the server sends to a client.

Direct replies answer one client message (``welcome``, ``accepted``, ``subscribed``,
``unsubscribed``, ``error``, ``pong``). Run events (:data:`RunEvent`) describe a run; each
carries the ``run_id`` and the run's own sequence number ``seq`` (1, 2, 3, ... with no gaps),
and reaches every connection that watches the run. :data:`ServerMessage` is the union of all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, ClassVar, Final, TypeAlias, TypeVar

from . import limits
from .errors import ErrorCode, MessageError, ProtocolError, error_for
from .schema import ADDED, Length, Range
from .search import (
    SEARCH_SETTINGS,
    CandidateFate,
    CandidateIndex,
    Candidates,
    SearchSettingChange,
    SearchSettings,
)
from .values import (
    SETTINGS,
    Cfg,
    CheckMode,
    ControlScale,
    ControlToken,
    Count,
    Decision,
    Description,
    FinishReason,
    ImageSize,
    ModelId,
    Name,
    Patience,
    PreviewFormat,
    PreviewSize,
    Prompt,
    RequestId,
    RunId,
    RunState,
    ScaleFactor,
    Score,
    Seconds,
    Seed,
    Seq,
    Setting,
    Step,
    Steps,
    StopMode,
    Strength,
    Text,
    UploadId,
)

__all__ = [
    "Accepted",
    "CandidateResult",
    "CandidateScore",
    "SearchCompute",
    "Adjusted",
    "Applied",
    "Check",
    "Error",
    "Finished",
    "HistoryEntry",
    "Image",
    "ModelInfo",
    "Pong",
    "Preview",
    "Progress",
    "RunError",
    "RunEvent",
    "RunParameters",
    "ServerMessage",
    "SettingChange",
    "Started",
    "Subscribed",
    "Unsubscribed",
    "VerifierInfo",
    "Welcome",
    "stamp",
]

#: Named parts of a score, as the verifier reports them (any finite numbers).
Components: TypeAlias = Annotated[Mapping[Name, float], Length(0, limits.MAX_COMPONENTS)]
#: A list of names, such as a model's samplers.
Names: TypeAlias = Annotated[tuple[Name, ...], Length(0, limits.MAX_LISTED)]

# Parts of messages.


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A model the server serves, with the defaults ``start`` gets when it leaves one out."""

    #: The id ``start.model`` names.
    id: ModelId
    #: What the model draws, for people.
    description: Description
    default_steps: Steps
    default_cfg: Cfg
    default_cfg_max: Cfg
    default_width: ImageSize
    default_height: ImageSize
    default_sampler: Name
    default_scheduler: Name
    default_verifier: Name
    #: ``width`` and ``height`` must be multiples of this.
    size_multiple: Annotated[int, Range(1, limits.MAX_SIZE)]
    #: The samplers ``start.sampler`` may name.
    samplers: Names
    #: The schedulers ``start.scheduler`` may name.
    schedulers: Names
    #: The words a prompt may use, for models that know only these; ``None``: free text.
    vocabulary: Annotated[tuple[Name, ...], Length(1, limits.MAX_VOCABULARY_WORDS)] | None = None
    #: Whether the model makes only ``default_width`` × ``default_height`` images.
    fixed_size: bool = False
    #: The preview decoders ``start.preview_decoder`` may name, the model's default first;
    #: ``()``: not announced (a server that predates the field).
    preview_decoders: Names = field(default=(), metadata=ADDED)


@dataclass(frozen=True, slots=True)
class VerifierInfo:
    """A verifier the server has registered."""

    #: The id ``start.verifier`` names.
    id: Name
    #: What it scores, for people.
    description: Description
    #: The names of the score components its checks report.
    components: Annotated[tuple[Name, ...], Length(0, limits.MAX_COMPONENTS)]
    #: The threshold a run gets when ``start.quality_threshold`` is left out.
    default_threshold: Score


@dataclass(frozen=True, slots=True)
class RunParameters:
    """Every parameter of a run after the server filled in its defaults (see ``start``)."""

    model: ModelId
    prompt: Prompt
    negative_prompt: Prompt
    seed: Seed
    steps: Steps
    cfg: Cfg
    sampler: Name
    scheduler: Name
    width: ImageSize
    height: ImageSize
    verifier: Name
    check_interval: Steps
    quality_threshold: Score
    scale_factor: ScaleFactor
    cfg_max: Cfg
    early_stop: bool
    patience: Patience
    min_steps: Step
    preview_size: PreviewSize
    preview_format: PreviewFormat
    #: The preview decoder the checks use, when ``start`` named one; ``None``: the model's
    #: default (the first of its ``ModelInfo.preview_decoders``).
    preview_decoder: Name | None = field(default=None, metadata=ADDED)
    #: How many candidates the run denoises (1: a single run; see :mod:`.search`).
    candidates: Candidates = field(default=1, metadata=ADDED)
    #: The search's strategy and settings; ``None`` for a single run.
    search: SearchSettings | None = field(default=None, metadata=ADDED)
    #: The input images' upload ids (see ``start``), and the strength and ControlNet scale
    #: the run uses (``None`` where the model takes none).
    image: UploadId | None = field(default=None, metadata=ADDED)
    mask: UploadId | None = field(default=None, metadata=ADDED)
    control_image: UploadId | None = field(default=None, metadata=ADDED)
    strength: Strength | None = field(default=None, metadata=ADDED)
    control_scale: ControlScale | None = field(default=None, metadata=ADDED)
    #: How the checks ran (a search's always run ``strict``).
    checks: CheckMode = field(default="strict", metadata=ADDED)


@dataclass(frozen=True, slots=True)
class Preview:
    """A thumbnail of the decoded x0 estimate, encoded as ``format``."""

    format: PreviewFormat
    width: Annotated[int, Range(1, limits.MAX_PREVIEW_SIZE)]
    height: Annotated[int, Range(1, limits.MAX_PREVIEW_SIZE)]
    #: The encoded image (msgpack bin).
    data: Annotated[bytes, Length(1, limits.MAX_PREVIEW_BYTES)]


@dataclass(frozen=True, slots=True)
class Image:
    """The run's final image as PNG."""

    width: ImageSize
    height: ImageSize
    #: The PNG file (msgpack bin).
    data: Annotated[bytes, Length(1, limits.MAX_IMAGE_BYTES)]


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One check of a run, as its ``check`` event reported it (without the preview)."""

    step: Steps
    score: Score
    components: Components
    decision: Decision
    #: The CFG in force when the check was made.
    cfg: Cfg
    #: The threshold in force when the check was made.
    threshold: Score
    #: Seconds since the run started.
    elapsed: Seconds


@dataclass(frozen=True, slots=True)
class SettingChange:
    """One setting's value before and after a change."""

    setting: Setting
    old: float
    new: float


@dataclass(frozen=True, slots=True)
class RunError:
    """Why a run failed."""

    code: ErrorCode
    message: Text


# Direct replies.


@dataclass(frozen=True, slots=True)
class Welcome:
    """Answers ``hello``: what this server is, can do and allows."""

    TYPE: ClassVar[str] = "welcome"

    #: The server's name and version, e.g. ``stepwatch/0.1.0``.
    server: Name
    #: Optional features this server has (see the protocol README).
    capabilities: Names
    #: The limits in force, by name; never looser than the protocol's own.
    limits: Annotated[Mapping[Name, Count], Length(0, limits.MAX_LISTED)]
    #: The models ``start`` may name; the first is the default.
    models: Annotated[tuple[ModelInfo, ...], Length(0, limits.MAX_LISTED)]
    #: The verifiers ``start`` may name.
    verifiers: Annotated[tuple[VerifierInfo, ...], Length(0, limits.MAX_LISTED)]


@dataclass(frozen=True, slots=True)
class Accepted:
    """Answers ``start``: the run exists. Sent only to the client that started it."""

    TYPE: ClassVar[str] = "accepted"

    #: The ``start`` this answers.
    request_id: RequestId
    run_id: RunId
    #: The secret that ``stop`` and ``set`` must present; keep it to steer the run later.
    control_token: ControlToken
    #: Runs ahead of this one; 0 means it starts now. The client is subscribed to the run.
    queue_position: Count


@dataclass(frozen=True, slots=True)
class Subscribed:
    """Answers ``subscribe`` (and each ``hello`` resume point) before the replayed events."""

    TYPE: ClassVar[str] = "subscribed"

    run_id: RunId
    #: Where the run is now.
    state: RunState
    #: The ``seq`` of the run's latest event (0: none yet); replay ends with this one.
    last_seq: Count


@dataclass(frozen=True, slots=True)
class Unsubscribed:
    """Answers ``unsubscribe``: no more events of this run reach this connection."""

    TYPE: ClassVar[str] = "unsubscribed"

    run_id: RunId


@dataclass(frozen=True, slots=True)
class Error:
    """A request failed, or a frame was refused. The connection stays open unless the code
    is ``slow_consumer``, ``unauthorized`` or ``unsupported_version``."""

    TYPE: ClassVar[str] = "error"

    code: ErrorCode
    message: Text
    #: The offending field, as a path such as ``history[3].score``.
    field: Annotated[str, Length(1, limits.MAX_FIELD_PATH_CHARS)] | None = None
    #: The request that failed, when it had one.
    request_id: RequestId | None = None
    #: The run concerned, when there is one.
    run_id: RunId | None = None

    @classmethod
    def from_exception(
        cls, exc: ProtocolError, request_id: str | None = None, run_id: str | None = None
    ) -> Error:
        """The message that tells the peer about ``exc``."""
        return cls(exc.code, exc.message, exc.field or None, request_id, run_id)

    def to_exception(self) -> ProtocolError:
        """The exception a client raises for this message."""
        return error_for(self.code, self.message, self.field)


@dataclass(frozen=True, slots=True)
class Pong:
    """Answers ``ping``."""

    TYPE: ClassVar[str] = "pong"

    #: The ping's nonce.
    nonce: Count


# Run events.
#
# A run event is made without its ``run_id`` and ``seq`` (the engine that emits it knows
# neither) and stamped with both by the service that numbers the run's events (:func:`stamp`).
# The two fields are keyword-only and empty until then; on the wire they are required all the
# same, and an unstamped event (``run_id`` empty, ``seq`` 0) is refused by :func:`encode`.

#: The metadata of the stamped fields: required on the wire although they have a default.
STAMPED: Final[Mapping[str, bool]] = {"wire_required": True}


@dataclass(frozen=True, slots=True)
class Started:
    """The run left the queue and began sampling."""

    TYPE: ClassVar[str] = "started"

    run_id: RunId = field(default="", kw_only=True, metadata=STAMPED)
    seq: Seq = field(default=0, kw_only=True, metadata=STAMPED)
    #: Every parameter, resolved; ``parameters.steps`` is the number of steps it will run.
    parameters: RunParameters


@dataclass(frozen=True, slots=True)
class Progress:
    """A step finished. Sent every step; a slow watcher may only see the latest."""

    TYPE: ClassVar[str] = "progress"

    run_id: RunId = field(default="", kw_only=True, metadata=STAMPED)
    seq: Seq = field(default=0, kw_only=True, metadata=STAMPED)
    #: The step that finished, from 1.
    step: Steps
    #: The steps the run will take if it does not stop early.
    total: Steps
    #: Seconds since the run started.
    elapsed: Seconds
    #: Estimated seconds until the last step; ``None`` until there is an estimate.
    eta: Seconds | None


@dataclass(frozen=True, slots=True)
class CandidateScore:
    """One candidate of a search at a check (see :mod:`.search`)."""

    candidate: CandidateIndex
    score: Score
    components: Components
    fate: CandidateFate
    #: For ``resampled``: the candidate whose state this one continues from now on.
    parent: CandidateIndex | None = None
    #: Its thumbnail (shared out as ``protocol/README.md`` says), or ``None``.
    preview: Preview | None = None


@dataclass(frozen=True, slots=True)
class CandidateResult:
    """One candidate of a search at its end."""

    candidate: CandidateIndex
    #: Its last score (of the final image for those that finished); ``None`` if never scored.
    final_score: Score | None
    #: ``chosen``, ``finished`` or ``pruned``.
    fate: CandidateFate
    #: The steps it was denoised for.
    steps_run: Step
    #: The candidates it descends from by resampling, oldest first.
    lineage: Annotated[tuple[CandidateIndex, ...], Length(0, limits.MAX_STEPS)] = ()
    #: Its final image, for a ``finished`` candidate of a search whose ``images`` is ``all``
    #: (the chosen one's is ``Finished.image``).
    image: Image | None = field(default=None, metadata=ADDED)
    #: Whether its owner decided its fate: a ``pruned`` one was stopped by the owner (a
    #: ``stop`` of it, or of the others by a ``keep``), a ``chosen`` one kept.
    by_owner: bool = field(default=False, metadata=ADDED)


@dataclass(frozen=True, slots=True)
class SearchCompute:
    """What a search spent: the denoiser's evaluations (one per candidate and pass; CFG's
    two passes count two), the verifier's scored images and the preview decoder's images."""

    denoiser_evaluations: Count
    verifier_calls: Count
    preview_decodes: Count
    #: What one candidate run alone to the end would have cost the denoiser.
    single_run_evaluations: Count


@dataclass(frozen=True, slots=True)
class Check:
    """The x0 estimate was scored at a check step, and the policy decided."""

    TYPE: ClassVar[str] = "check"

    run_id: RunId = field(default="", kw_only=True, metadata=STAMPED)
    seq: Seq = field(default=0, kw_only=True, metadata=STAMPED)
    step: Steps
    #: The verifier's score of the decoded x0 estimate.
    score: Score
    components: Components
    #: The threshold in force.
    threshold: Score
    decision: Decision
    #: Why the policy decided so, for people.
    reason: Text
    #: The CFG in force when the estimate was made.
    cfg: Cfg
    #: The thumbnail; ``None`` when previews are off or were collapsed in a replay.
    preview: Preview | None
    #: A search's candidates (``score`` and ``preview`` above are the best one's).
    candidates: Annotated[tuple[CandidateScore, ...], Length(0, limits.MAX_CANDIDATES)] = field(
        default=(), metadata=ADDED
    )
    #: The steps done when the decision took effect, when later than ``step`` (an overlapped
    #: check applies one step after its estimate); ``None``: at ``step``.
    applied_step: Step | None = field(default=None, metadata=ADDED)

    def entry(self, elapsed: float) -> HistoryEntry:
        """The check as the run's quality history keeps it, made ``elapsed`` seconds into
        the run."""
        return HistoryEntry(
            self.step, self.score, self.components, self.decision, self.cfg, self.threshold, elapsed
        )


@dataclass(frozen=True, slots=True)
class Adjusted:
    """The policy changed a setting (it raised CFG)."""

    TYPE: ClassVar[str] = "adjusted"

    run_id: RunId = field(default="", kw_only=True, metadata=STAMPED)
    seq: Seq = field(default=0, kw_only=True, metadata=STAMPED)
    #: The steps done when the setting changed; the new value applies to the steps after it.
    step: Step
    setting: Setting
    old: float
    new: float
    #: Why, for people.
    reason: Text
    #: The step of the check that decided it, when earlier than ``step`` (overlapped checks).
    check_step: Step | None = field(default=None, metadata=ADDED)


@dataclass(frozen=True, slots=True)
class Applied:
    """A ``set`` or ``stop`` of the run's owner took effect. Exactly one of these is given:
    the changes of a ``set`` (``changes``, ``search_changes`` or both), ``stop``,
    ``candidate_stopped`` and ``candidate_kept``."""

    TYPE: ClassVar[str] = "applied"

    run_id: RunId = field(default="", kw_only=True, metadata=STAMPED)
    seq: Seq = field(default=0, kw_only=True, metadata=STAMPED)
    #: The ``set`` or ``stop`` this acknowledges.
    request_id: RequestId
    #: The steps done when it took effect; it applies to the steps after it (0: to every step).
    step: Step
    #: The settings a ``set`` changed.
    changes: Annotated[tuple[SettingChange, ...], Length(0, len(SETTINGS))]
    #: The mode of a ``stop``.
    stop: StopMode | None
    #: The search settings a ``set`` changed.
    search_changes: Annotated[tuple[SearchSettingChange, ...], Length(0, len(SEARCH_SETTINGS))] = (
        field(default=(), metadata=ADDED)
    )
    #: The candidate a ``stop`` of one candidate stopped.
    candidate_stopped: CandidateIndex | None = field(default=None, metadata=ADDED)
    #: The candidate a ``stop`` with ``keep`` kept (every other one stopped).
    candidate_kept: CandidateIndex | None = field(default=None, metadata=ADDED)

    def __post_init__(self) -> None:
        given = (
            bool(self.changes or self.search_changes),
            self.stop is not None,
            self.candidate_stopped is not None,
            self.candidate_kept is not None,
        )
        if sum(given) != 1:
            message = "applied needs exactly one of changes, a stop mode or a candidate"
            raise MessageError(ErrorCode.INVALID_MESSAGE, message)


@dataclass(frozen=True, slots=True)
class Finished:
    """The run ended; the last event of every run. Results are stored before it is sent."""

    TYPE: ClassVar[str] = "finished"

    run_id: RunId = field(default="", kw_only=True, metadata=STAMPED)
    seq: Seq = field(default=0, kw_only=True, metadata=STAMPED)
    reason: FinishReason
    #: Steps actually taken.
    steps_run: Step
    #: Seconds the run took from ``started``.
    elapsed: Seconds
    #: The last check's score; ``None`` if no check ran.
    final_score: Score | None
    #: Every check of the run, in order.
    history: Annotated[tuple[HistoryEntry, ...], Length(0, limits.MAX_STEPS)]
    #: The image; ``None`` after an abort or a failure.
    image: Image | None
    #: Why it failed; given exactly when ``reason`` is ``failed``.
    error: RunError | None
    #: A search's candidates at its end (``image`` and ``history`` are the chosen one's).
    candidates: Annotated[tuple[CandidateResult, ...], Length(0, limits.MAX_CANDIDATES)] = field(
        default=(), metadata=ADDED
    )
    #: What a search spent.
    compute: SearchCompute | None = field(default=None, metadata=ADDED)

    def __post_init__(self) -> None:
        if (self.reason == "failed") != (self.error is not None):
            message = "finished carries an error exactly when its reason is failed"
            raise MessageError(ErrorCode.INVALID_MESSAGE, message)


#: The events of a run, each with ``run_id`` and ``seq``.
RunEvent: TypeAlias = Started | Progress | Check | Adjusted | Applied | Finished

E = TypeVar("E", bound=RunEvent)


def stamp(event: E, run_id: str, seq: int) -> E:
    """``event`` as event ``seq`` of run ``run_id``."""
    return dataclasses.replace(event, run_id=run_id, seq=seq)


#: Every message a server may send.
ServerMessage: TypeAlias = Welcome | Accepted | Subscribed | Unsubscribed | Error | Pong | RunEvent
