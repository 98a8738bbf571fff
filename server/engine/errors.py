"""The engine's errors, one small tree.

::

    EngineError
    ├── ParamError            a run parameter or a settings change is invalid (names the field)
    ├── ModelError            a model cannot be loaded, or cannot do what a run asks of it
    ├── UnsupportedScheduler  the engine cannot derive the x0 estimate from this scheduler
    └── VerifierError         a verifier is unknown, cannot be loaded, or returned bad scores

Errors raised by torch, diffusers or a verifier's own code are translated at the boundary with
``raise ... from exc``. Inside a run none of them escapes: :func:`~.monitor.run_monitored`
turns each into a ``failed`` result with the protocol's :class:`~stepwatch.protocol.ErrorCode`.
"""

from __future__ import annotations

from stepwatch.protocol import ErrorCode


class EngineError(Exception):
    """The root of every error the engine raises on purpose."""


class ParamError(EngineError, ValueError):
    """A run parameter or settings change is invalid; :attr:`field` names the offending field
    and :attr:`code` is the protocol's code for the refusal (``invalid_value`` unless a more
    precise one applies, such as ``invalid_prompt`` or ``unknown_sampler``)."""

    def __init__(self, field: str, message: str, code: ErrorCode = ErrorCode.INVALID_VALUE) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.code = code


class ModelError(EngineError):
    """A model cannot be loaded, or does not support what a run asks of it."""


class UnsupportedScheduler(EngineError):
    """The x0 estimate cannot be captured or derived for this scheduler.

    Raised instead of falling back to the noisy latent, which would look like a preview but show
    noise the verifier would score as if it were the image.
    """


class VerifierError(EngineError):
    """A verifier is unknown, cannot be loaded, or returned scores outside its contract."""
