"""Handles on runs: iterate their events, await their result, steer the ones you own.

A :class:`RunHandle` is what :meth:`Session.watch <stepwatch.client.Session.watch>` returns:
a read-only view of any run. A :class:`Run` is what :meth:`Session.generate
<stepwatch.client.Session.generate>` returns: the same view plus :meth:`Run.stop` and
:meth:`Run.set`, which only the run's owner (the holder of its control token) may call.

Each handle keeps its own buffer of events, filled by the session's one reader task, so any
number of runs on one connection are iterated independently and none waits for another. The
handle remembers the highest ``seq`` it has delivered and drops every event at or below it, so
the replay that follows a reconnect never shows an event twice.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Self, TypedDict

from stepwatch.protocol import (
    Applied,
    CandidateResult,
    CheckMode,
    Finished,
    FinishReason,
    HistoryEntry,
    Image,
    Preview,
    PreviewFormat,
    ProtocolError,
    RunError,
    RunEvent,
    RunParameters,
    SearchCompute,
    SearchSettings,
    Set,
    Started,
    Stop,
    StopMode,
)

from .errors import Refused, RunFailed, StepwatchError

if TYPE_CHECKING:
    import PIL.Image

__all__ = ["Result", "Run", "RunHandle", "RunOptions", "Steering", "open_image"]


def open_image(source: Preview | Image | bytes) -> PIL.Image.Image:
    """Decode a preview thumbnail, a final image or encoded image bytes with Pillow.

    Pillow is imported on the first call, so importing the client never loads it::

        for_check = open_image(check.preview)      # a check event's thumbnail (WebP by default)
        final = open_image(result.png)             # the final PNG
    """
    from PIL import Image as PILImage

    data = source if isinstance(source, bytes) else source.data
    picture = PILImage.open(io.BytesIO(data))
    picture.load()
    return picture


@dataclass(frozen=True, slots=True)
class Result:
    """What a finished run produced: :meth:`RunHandle.result` returns it."""

    run_id: str
    #: Why the run ended: ``completed``, ``early_stop``, ``stopped``, ``failed``, ``abandoned``
    #: or ``shutdown``.
    reason: FinishReason
    #: Steps actually taken.
    steps_run: int
    #: Seconds from ``started`` to the end.
    elapsed: float
    #: The last check's score; ``None`` if no check ran.
    final_score: float | None
    #: Every check of the run, in order.
    history: tuple[HistoryEntry, ...]
    #: The final image as a PNG file; ``None`` after an abort, a failure, or no step.
    png: bytes | None
    #: Every parameter, resolved, as ``started`` reported it; ``None`` when this handle did not
    #: see ``started`` (a run stopped while queued, or watched from a later ``seq``).
    parameters: RunParameters | None
    #: Why the run failed; given exactly when :attr:`reason` is ``failed``.
    error: RunError | None
    #: A search's candidates at its end, by number (empty for a single run); the image, history
    #: and final score above are the chosen candidate's.
    candidates: tuple[CandidateResult, ...] = ()
    #: What a search spent (denoiser evaluations, verifier calls, preview decodes).
    compute: SearchCompute | None = None

    @classmethod
    def from_finished(cls, finished: Finished, parameters: RunParameters | None) -> Result:
        """The result a ``finished`` event reports."""
        return cls(
            run_id=finished.run_id,
            reason=finished.reason,
            steps_run=finished.steps_run,
            elapsed=finished.elapsed,
            final_score=finished.final_score,
            history=finished.history,
            png=None if finished.image is None else finished.image.data,
            parameters=parameters,
            error=finished.error,
            candidates=finished.candidates,
            compute=finished.compute,
        )

    def image(self) -> PIL.Image.Image | None:
        """The final image decoded with Pillow, or ``None`` when there is none."""
        return None if self.png is None else open_image(self.png)

    def save(self, path: str | Path) -> bool:
        """Write the final PNG to ``path``; return whether there was an image to write."""
        if self.png is None:
            return False
        Path(path).write_bytes(self.png)
        return True

    def candidate_pngs(self) -> dict[int, bytes]:
        """Every finished candidate's final PNG of a search, by candidate number: the chosen
        one's (:attr:`png`) and, when the run asked for ``SearchSettings(images="all")``,
        every other finished one's. Pruned and stopped candidates have none.

        >>> result = await run.result()  # doctest: +SKIP
        >>> for number, png in result.candidate_pngs().items():  # doctest: +SKIP
        ...     Path(f"cat-{number}.png").write_bytes(png)
        """
        pngs = {c.candidate: c.image.data for c in self.candidates if c.image is not None}
        chosen = next((c.candidate for c in self.candidates if c.fate == "chosen"), None)
        if chosen is not None and self.png is not None:
            pngs[chosen] = self.png
        return dict(sorted(pngs.items()))


class RunOptions(TypedDict, total=False):
    """The parameters of ``Session.generate`` besides the prompt: the fields of ``start``.

    Each left out (or ``None``) takes the server's default for the model, listed in
    :attr:`Session.models`; the protocol README's ``start`` table says what each one means.
    """

    model: str | None
    negative_prompt: str
    seed: int | None
    steps: int | None
    cfg: float | None
    sampler: str | None
    scheduler: str | None
    width: int | None
    height: int | None
    verifier: str | None
    check_interval: int
    quality_threshold: float | None
    scale_factor: float
    cfg_max: float | None
    early_stop: bool
    patience: int
    min_steps: int | None
    preview_size: int
    preview_format: PreviewFormat
    preview_decoder: str | None
    candidates: int
    search: SearchSettings | None
    #: Input images by upload id (:meth:`Session.upload`), and their settings.
    image: str | None
    mask: str | None
    control_image: str | None
    strength: float | None
    control_scale: float | None
    checks: CheckMode | None


class RunHandle:
    """A run this session receives the events of.

    ``async for event in handle`` yields the run's events (:data:`~stepwatch.protocol.RunEvent`:
    ``Started``, ``Progress``, ``Check``, ``Adjusted``, ``Applied``, ``Finished``) in ``seq``
    order, each at most once, and ends after ``Finished``. Events wait in the handle until
    they are iterated, so a loop may start late and still see them all; ``progress`` events
    may be coalesced by the server for a slow client, nothing else is ever left out.

    :meth:`result` waits for the end without iterating. Both raise
    :class:`~stepwatch.client.ConnectionLost` if the session gives up reconnecting.
    """

    def __init__(self, run_id: str, after_seq: int = 0) -> None:
        #: The run's id, as the server named it.
        self.run_id = run_id
        #: How many events the handle dropped because it had seen their ``seq`` already
        #: (replays after a reconnect); for diagnostics.
        self.duplicates = 0
        self._last_seq = after_seq
        self._events: asyncio.Queue[RunEvent | StepwatchError] = asyncio.Queue()
        self._ended = asyncio.Event()
        self._exhausted = False
        self._parameters: RunParameters | None = None
        self._result: Result | None = None
        self._failure: StepwatchError | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.run_id} seq={self._last_seq}>"

    @property
    def last_seq(self) -> int:
        """The highest ``seq`` received of this run (0: none yet); a reconnect resumes after it."""
        return self._last_seq

    @property
    def parameters(self) -> RunParameters | None:
        """The run's resolved parameters once ``started`` has arrived, else ``None``."""
        return self._parameters

    @property
    def done(self) -> bool:
        """Whether ``finished`` has arrived, or the handle failed (the session gave up)."""
        return self._ended.is_set()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> RunEvent:
        if self._exhausted:
            if self._failure is not None and self._result is None:
                raise self._failure
            raise StopAsyncIteration
        item = await self._events.get()
        if isinstance(item, StepwatchError):
            self._exhausted = True
            raise item
        if isinstance(item, Finished):
            self._exhausted = True
        return item

    async def result(self) -> Result:
        """Wait until the run finishes and return its :class:`Result`.

        Raises :class:`~stepwatch.client.RunFailed` when the run failed, and the session's
        error if it gave up before ``finished`` arrived. Does not consume the iteration.
        """
        await self._ended.wait()
        if self._result is None:
            assert self._failure is not None
            raise self._failure
        if self._result.error is not None:
            raise RunFailed(self._result.error, self._result)
        return self._result

    def _deliver(self, event: RunEvent) -> bool:
        """Take one event from the session's reader; return whether it was new.

        Called by the session only. Events at or below :attr:`last_seq` are dropped.
        """
        if event.seq <= self._last_seq or self._ended.is_set():
            self.duplicates += 1
            return False
        self._last_seq = event.seq
        if isinstance(event, Started):
            self._parameters = event.parameters
        self._events.put_nowait(event)
        if isinstance(event, Finished):
            self._result = Result.from_finished(event, self._parameters)
            self._ended.set()
        return True

    def _fail(self, error: StepwatchError) -> None:
        """End the handle with ``error`` unless the run already finished (session only)."""
        if self._ended.is_set():
            return
        self._failure = error
        self._events.put_nowait(error)
        self._ended.set()


class Steering(Protocol):
    """What a :class:`Run` needs from its session to steer: implemented by ``Session``."""

    def next_request_id(self) -> str:
        """A request id not used before on this session."""
        ...

    async def steer(self, request: Stop | Set) -> Applied:
        """Send ``request`` and return the run's ``applied`` that acknowledges it."""
        ...


class Run(RunHandle):
    """A run this session started: a :class:`RunHandle` that may also be steered.

    The session keeps the run's control token and presents it on every :meth:`stop` and
    :meth:`set`, also after a reconnect.
    """

    def __init__(
        self, run_id: str, control_token: str, queue_position: int, steering: Steering
    ) -> None:
        super().__init__(run_id)
        #: The secret that lets its holder steer the run; give it to another client to hand
        #: over control (it may steer from any connection).
        self.control_token = control_token
        #: Runs that were ahead of this one when it was accepted (0: it started at once).
        self.queue_position = queue_position
        self._steering = steering

    async def stop(self, mode: StopMode = "finish") -> Applied:
        """End the run and return the ``applied`` event that acknowledges it.

        ``mode="finish"`` finishes quickly: the remaining steps are re-planned into a short tail
        to zero noise, and its finished image is the result; ``"estimate"`` keeps the decoded x0
        estimate of the step it stopped at; ``"abort"`` returns no image. ``applied.step`` is
        the number of steps done when the stop took effect. ``finished`` (reason ``stopped``)
        follows among the run's events. Raises :class:`~stepwatch.client.Refused`
        (``ErrorCode.RUN_FINISHED`` if the run ended first, ``ErrorCode.FORBIDDEN`` for a wrong
        token).
        """
        request = Stop(
            request_id=self._steering.next_request_id(),
            run_id=self.run_id,
            token=self.control_token,
            mode=mode,
        )
        return await self._steering.steer(request)

    async def stop_candidate(self, candidate: int) -> Applied:
        """Stop one candidate of a search; the search goes on with the others.

        The candidate leaves the batch at the next step boundary, as a pruned one does (it
        costs nothing more); ``applied.candidate_stopped`` names it, and its entry in
        ``Result.candidates`` says ``pruned`` with ``by_owner``. Raises
        :class:`~stepwatch.client.Refused` (``ErrorCode.INVALID_VALUE``, field ``candidate``)
        for a run of one candidate, a candidate that is not live, or the last live one.

        >>> run = await session.generate("a cat", candidates=8)  # doctest: +SKIP
        >>> await run.stop_candidate(3)  # doctest: +SKIP
        """
        return await self._candidate(candidate, None)

    async def keep_candidate(self, candidate: int) -> Applied:
        """Keep one candidate of a search: every other live one stops at the next step
        boundary, and this one runs to the end as the run's result.

        ``applied.candidate_kept`` names it; in ``Result.candidates`` it is ``chosen`` with
        ``by_owner`` and the others ``pruned`` with ``by_owner``. Refused as
        :meth:`stop_candidate` is (field ``keep``).

        >>> await run.keep_candidate(5)  # doctest: +SKIP
        >>> (await run.result()).candidates[5].fate  # doctest: +SKIP
        'chosen'
        """
        return await self._candidate(None, candidate)

    async def _candidate(self, candidate: int | None, keep: int | None) -> Applied:
        request = Stop(
            request_id=self._steering.next_request_id(),
            run_id=self.run_id,
            token=self.control_token,
            candidate=candidate,
            keep=keep,
        )
        return await self._steering.steer(request)

    async def set(
        self,
        *,
        quality_threshold: float | None = None,
        cfg: float | None = None,
        check_interval: int | None = None,
        scale_factor: float | None = None,
        keep_fraction: float | None = None,
        prune_every: int | None = None,
        fk_lambda: float | None = None,
        resample_every: int | None = None,
        ess_threshold: float | None = None,
    ) -> Applied:
        """Change settings of the running run; return the ``applied`` that acknowledges them.

        Give at least one setting. ``applied.changes`` lists each change with its old and new
        value; ``applied.step`` is the number of steps done when they took effect (they apply
        to every later step). A setting the model cannot change mid-run (CFG on a pipeline
        that reads it once) is missing from ``changes``; the server's reason is logged on the
        ``stepwatch.client`` logger, and a ``set`` of nothing but such settings is refused.

        A search's strategy settings change from its next check on: ``keep_fraction`` and
        ``prune_every`` for ``prune``, ``fk_lambda``, ``resample_every`` and ``ess_threshold``
        for ``fk``; ``applied.search_changes`` lists them. One the strategy has no use for is
        refused (``ErrorCode.INVALID_VALUE`` naming it).

        >>> prune = SearchSettings("prune")
        >>> run = await session.generate("a cat", candidates=8, search=prune)  # doctest: +SKIP
        >>> applied = await run.set(keep_fraction=0.25)  # doctest: +SKIP
        >>> applied.search_changes[0].new  # doctest: +SKIP
        0.25

        Raises :class:`~stepwatch.client.Refused` for a value out of range
        (``ErrorCode.INVALID_VALUE`` naming the field), for no setting at all
        (``ErrorCode.INVALID_MESSAGE``), or when the run has finished.
        """
        request_id = self._steering.next_request_id()
        try:
            request = Set(
                request_id=request_id,
                run_id=self.run_id,
                token=self.control_token,
                quality_threshold=quality_threshold,
                scale_factor=scale_factor,
                check_interval=check_interval,
                cfg=cfg,
                keep_fraction=keep_fraction,
                prune_every=prune_every,
                fk_lambda=fk_lambda,
                resample_every=resample_every,
                ess_threshold=ess_threshold,
            )
        except ProtocolError as exc:  # Set refuses to change nothing, before any I/O
            raise Refused.before_sending(exc, request_id) from exc
        return await self._steering.steer(request)
