"""Checks beside the sampler: decode, score and encode an x0 estimate off its critical path.

A check has two halves. *Taking* it belongs to the sampler's thread: the monitored run reads the
x0 estimate of the step that just ran (:class:`~.x0.StepCapture`, which reads the scheduler), and
:meth:`CheckRunner.submit` hands it over. *Computing* it (the NaN test, the preview decode, the
verifier's score, the thumbnail: :meth:`CheckWork.compute`) touches no scheduler state, and the
runner does it where the run's :data:`~stepwatch.protocol.CheckMode` says:

- ``strict``: at once, on the sampler's thread, which waits for it; the decision applies at the
  check's own step. This is the engine as it always was, step for step.
- ``overlapped``: on one worker thread per run while the sampler goes on, from a clone of x0 (the
  sampler's next step may overwrite the tensors the estimate came from). On CUDA the worker runs
  on a side stream of its own, ordered after the clone by an event recorded on the sampler's
  stream, so the decode and the verifier overlap the next denoising step on the device too; on
  the CPU no stream or event is made. The check is *due* at a fixed step: the boundary after the
  next step (:data:`OVERLAP_LAG` steps after it) or the run's last step, whichever comes first.
  The sampler waits there only if the check is not ready yet (:meth:`CheckRunner.due`).

The step a decision applies at is fixed by the step its check was taken at, never by how long the
check took, so an overlapped run's decisions and image are the same on a fast machine and a slow
one. The monitored run decides on the sampler's thread when a check is due, before that step's
controls, with the history, settings and CFG that strict mode would have decided with at the
check's own step: from the same scores, the two modes make the same decisions, one step apart.
What the lag costs: an overlapped run stops early one step later and a CFG raise takes effect one
step later than in strict mode. The owner's ``stop`` and ``set`` apply at the step they are read,
in both modes. A search (:mod:`.search`) always checks strict: it reorders its batch from each
check.

A check that fails (a NaN estimate, a verifier's failure) raises :class:`CheckFailed` with the
protocol's code where it is due; any other exception in the worker is raised there as it was.
This module imports no part of the pipeline machinery; the monitored run drives it.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final

import torch

from stepwatch.protocol import Check, CheckMode, ErrorCode, Preview, PreviewFormat, RunError

from .errors import VerifierError
from .events import fit_cfg, fit_components, fit_score, fit_text
from .policy import PolicyDecision
from .previews import PreviewDecoder, encode_thumbnail, to_uint8
from .verifiers import Verifier, score_batch

__all__ = ["OVERLAP_LAG", "CheckFailed", "CheckOutcome", "CheckRunner", "CheckWork"]

#: Steps between an overlapped check's estimate and the boundary its decision applies at.
OVERLAP_LAG: Final = 1


class CheckFailed(Exception):
    """A check's estimate or score is unusable; ``error`` is what the run fails with."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.error = RunError(code, fit_text(message))


@dataclass(frozen=True)
class CheckOutcome:
    """What a computed check found: the estimate's score and thumbnail, before any decision.

    ``cfg`` is the guidance in force when the estimate was made; ``due`` the step at whose
    boundary the decision applies.
    """

    step: int
    due: int
    cfg: float
    score: float
    components: Mapping[str, float]
    preview: Preview | None

    def event(self, decision: PolicyDecision, threshold: float, applied: int) -> Check:
        """The ``check`` event of this outcome, decided so and applied after step ``applied``."""
        return Check(
            step=self.step,
            score=fit_score(self.score),
            components=self.components,
            threshold=fit_score(threshold),
            decision=decision.decision,
            reason=fit_text(decision.reason),
            cfg=fit_cfg(self.cfg),
            preview=self.preview,
            applied_step=applied if applied > self.step else None,
        )


@dataclass(frozen=True)
class CheckWork:
    """What a run's checks compute with: its decoder, its verifier and the prompt it scores."""

    decoder: PreviewDecoder
    verifier: Verifier
    verifier_id: str
    prompt: str
    preview_size: int
    preview_format: PreviewFormat

    def compute(self, step: int, due: int, x0: torch.Tensor, cfg: float) -> CheckOutcome:
        """Decode ``x0`` (the model's spatial latent layout) once, score that image and encode
        its thumbnail. Raises :class:`CheckFailed` for a non-finite estimate or a failing
        verifier."""
        if not bool(torch.isfinite(x0).all()):
            raise CheckFailed(
                ErrorCode.NAN_DETECTED, f"the x0 estimate at step {step} is not finite"
            )
        images = self.decoder.decode(x0)
        try:
            score = score_batch(self.verifier, images, self.prompt)[0]
        except VerifierError as exc:
            message = f"verifier {self.verifier_id}: {exc}"
            raise CheckFailed(ErrorCode.VERIFIER_FAILED, message) from exc
        preview = None
        if self.preview_size > 0:
            pixels = to_uint8(images[:1])[0]
            preview = encode_thumbnail(pixels, self.preview_size, self.preview_format)
        return CheckOutcome(step, due, cfg, score.value, fit_components(score.components), preview)


class CheckRunner:
    """Computes one run's checks in its mode; at most one check is in flight at a time.

    Call :meth:`submit` at a check step, :meth:`due` at every step boundary, :meth:`drain` when
    the pipeline's loop has ended and :meth:`close` when the run ends, however it ends (it waits
    for a check still in flight, which uses the model's decoder and verifier).
    """

    def __init__(self, work: CheckWork, mode: CheckMode) -> None:
        self.work = work
        self.mode: CheckMode = mode
        self.lag = OVERLAP_LAG if mode == "overlapped" else 0
        self._ready: CheckOutcome | None = None
        self._pending: tuple[int, Future[CheckOutcome]] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._stream: torch.cuda.Stream | None = None

    def due_step(self, step: int, total: int) -> int:
        """The step at whose boundary a check taken after ``step`` of ``total`` applies."""
        return max(step, min(step + self.lag, total))

    def submit(self, step: int, x0: torch.Tensor, cfg: float, total: int) -> None:
        """Take the check of ``step``: ``x0`` is the estimate, ``cfg`` the guidance it was made
        with. A check due at once (strict mode, or the last step) is computed here, and its
        failure raised here."""
        if self._ready is not None or self._pending is not None:
            raise RuntimeError("a check is already in flight")
        due = self.due_step(step, total)
        if due == step:
            self._ready = self.work.compute(step, due, x0, cfg)
            return
        # The sampler's next step may write into the tensors x0 came from.
        x0 = x0.detach().clone()
        ready = None
        if x0.is_cuda:
            ready = torch.cuda.Event()  # type: ignore[no-untyped-call]
            ready.record(torch.cuda.current_stream(x0.device))
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stepwatch-check")
        self._pending = (due, self._executor.submit(self._beside, step, due, x0, cfg, ready))

    def due(self, step: int) -> CheckOutcome | None:
        """The check whose decision applies at ``step``'s boundary, if any; waits for it when it
        is still being computed, and raises what computing it raised."""
        if self._ready is None and (self._pending is None or self._pending[0] > step):
            return None
        return self.drain()

    def drain(self) -> CheckOutcome | None:
        """The check in flight, whenever it was due (the loop ended before its step)."""
        if self._ready is not None:
            ready, self._ready = self._ready, None
            return ready
        if self._pending is None:
            return None
        _, future = self._pending
        self._pending = None
        return future.result()

    def close(self) -> None:
        """Drop a check in flight (waiting for it to leave the decoder) and stop the worker."""
        if self._pending is not None:
            _, future = self._pending
            self._pending = None
            future.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _beside(
        self, step: int, due: int, x0: torch.Tensor, cfg: float, ready: torch.cuda.Event | None
    ) -> CheckOutcome:
        """Compute a check on the worker thread (whose autograd state is its own)."""
        with torch.no_grad():
            if ready is None:
                return self.work.compute(step, due, x0, cfg)
            if self._stream is None:
                self._stream = torch.cuda.Stream(device=x0.device)  # type: ignore[no-untyped-call]
            stream = self._stream
            with torch.cuda.stream(stream):
                stream.wait_event(ready)
                # The clone was made on the sampler's stream: keep its memory until this
                # stream is done with it.
                x0.record_stream(stream)
                outcome = self.work.compute(step, due, x0, cfg)
            stream.synchronize()
            return outcome
