"""The client's exceptions: one small tree under :class:`StepwatchError`.

Everything the client raises on purpose is a :class:`StepwatchError`; failures of the
WebSocket library, the network and the protocol's codec are translated at the boundary (with
``raise ... from exc``, so the original stays in ``__cause__``). Server error codes arrive as
attributes (:attr:`Refused.code`, :attr:`RunFailed.code`), never as text to parse.

The tree::

    Exception
     └── StepwatchError            anything the client raises
          ├── ConnectionFailed     no session: server unreachable, handshake refused, no welcome,
          │    │                   or the session was closed while a call waited
          │    └── ConnectionLost  the connection dropped and did not come back within
          │                        ``reconnect_timeout`` (or dropped while a start was unanswered)
          ├── ProtocolViolation    the server sent a frame the protocol does not allow
          ├── Refused              a request was refused with an error code (code, field,
          │                        request_id, run_id), by the server or by the client's own
          │                        copy of the same checks before sending
          └── RunFailed            the run finished with reason ``failed`` (error, code, result)

When to expect which:

- :func:`~stepwatch.client.connect` raises :class:`ConnectionFailed`, or :class:`Refused` with
  ``ErrorCode.UNAUTHORIZED`` when the server wants another API token.
- ``generate``, ``watch``, ``stop`` and ``set`` raise :class:`Refused` for a bad request
  (``ErrorCode.INVALID_VALUE`` and the offending ``field``, ``UNKNOWN_MODEL``, ``FORBIDDEN``,
  ``RUN_FINISHED``, ...).
- Iterating a run, or ``await run.result()``, raises :class:`ConnectionLost` once the client has
  given up reconnecting, and :class:`ProtocolViolation` if the server broke the protocol.
- ``await run.result()`` raises :class:`RunFailed` for a failed run; iterating it does not (the
  ``finished`` event with reason ``failed`` is yielded like any other).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stepwatch.protocol import Error, ErrorCode, ProtocolError, RunError

if TYPE_CHECKING:
    from .runs import Result

__all__ = [
    "ConnectionFailed",
    "ConnectionLost",
    "ProtocolViolation",
    "Refused",
    "RunFailed",
    "StepwatchError",
]


class StepwatchError(Exception):
    """The root of everything the stepwatch client raises."""


class ConnectionFailed(StepwatchError):
    """The session could not be opened, or it was closed while a call was waiting.

    Raised by :func:`~stepwatch.client.connect` when the server cannot be reached, refuses the
    WebSocket handshake (an HTTP status, a missing subprotocol) or does not answer ``hello``
    with ``welcome``; and to calls still waiting when the session is closed.
    """


class ConnectionLost(ConnectionFailed):
    """The connection dropped and the client gave up.

    Raised when reconnecting did not succeed within the session's ``reconnect_timeout``, and
    by ``generate`` when the connection dropped after ``start`` was sent but before the server
    answered (the protocol cannot tell whether that run exists: ``accepted`` is not replayed).
    """


class ProtocolViolation(StepwatchError):
    """The server sent something the protocol does not allow.

    A frame the codec refuses (the decoder's :class:`~stepwatch.protocol.ProtocolError` is the
    ``__cause__``), or a valid message where none may come (a second ``welcome``, an
    ``accepted`` for no request). The session ends: nothing it delivers later could be trusted.
    """


class Refused(StepwatchError):
    """A request was refused with an error code.

    :attr:`code` is the :class:`~stepwatch.protocol.ErrorCode`, :attr:`field` the offending
    field (``"steps"``, ``"model"``, ...) when there is one, :attr:`request_id` and
    :attr:`run_id` say which request and run. :attr:`by_server` is ``False`` when the client's
    own copy of the protocol's checks refused the request before sending it; the code and
    field are the same ones the server would have sent.
    """

    code: ErrorCode
    message: str
    field: str | None
    request_id: str | None
    run_id: str | None
    by_server: bool

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        field: str | None = None,
        request_id: str | None = None,
        run_id: str | None = None,
        by_server: bool = True,
    ) -> None:
        self.code = code
        self.message = message
        self.field = field
        self.request_id = request_id
        self.run_id = run_id
        self.by_server = by_server
        super().__init__(code, message, field)

    @classmethod
    def from_error(cls, error: Error) -> Refused:
        """The exception for an ``error`` message the server sent."""
        return cls(
            error.code,
            error.message,
            field=error.field,
            request_id=error.request_id,
            run_id=error.run_id,
        )

    @classmethod
    def before_sending(cls, exc: ProtocolError, request_id: str | None = None) -> Refused:
        """The exception for a request the client's checks refused (``exc`` from the codec)."""
        return cls(exc.code, exc.message, field=exc.field, request_id=request_id, by_server=False)

    def __str__(self) -> str:
        where = f" (field {self.field})" if self.field is not None else ""
        return f"{self.code.value}: {self.message}{where}"


class RunFailed(StepwatchError):
    """The run finished with reason ``failed``.

    :attr:`error` is the run's :class:`~stepwatch.protocol.RunError` (:attr:`code` is its code,
    e.g. ``ErrorCode.INTERNAL``); :attr:`result` is everything the run produced before it failed
    (its history, usually no image).
    """

    error: RunError
    result: Result

    def __init__(self, error: RunError, result: Result) -> None:
        self.error = error
        self.result = result
        super().__init__(error.code, error.message)

    @property
    def code(self) -> ErrorCode:
        """The run's error code."""
        return self.error.code

    def __str__(self) -> str:
        return f"run {self.result.run_id} failed: {self.error.code.value}: {self.error.message}"
