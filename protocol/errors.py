"""Errors of the stepwatch protocol, and the one list of error codes the whole system uses.

Every failure a peer can be told about has a stable :class:`ErrorCode`. The codec raises
:class:`ProtocolError` with one of the *frame* codes whenever it refuses a frame; the server
reports the *service* codes in an ``error`` message (or in a failed run's ``finished``), and the
client raises them as :class:`ProtocolError` too, so both sides share one vocabulary.

The tree::

    Exception
     └── ProtocolError               every coded failure; carries code, message, field
          ├── FrameError             the bytes are not one acceptable msgpack frame
          │                          (frame_too_large, malformed_frame)
          └── MessageError           the frame is msgpack but not a valid message
                                     (invalid_message, unknown_type, unsupported_version,
                                     unknown_field, missing_field, invalid_value)

Service codes (``unauthorized``, ``unknown_run``, ``queue_full``, ...) are raised as plain
:class:`ProtocolError`; :func:`error_for` picks the class that matches a code.
"""

from __future__ import annotations

from enum import StrEnum

from .limits import MAX_FIELD_PATH_CHARS, MAX_MESSAGE_CHARS

__all__ = ["ErrorCode", "FrameError", "MessageError", "ProtocolError", "error_for"]


class ErrorCode(StrEnum):
    """Every coded error in stepwatch, as it travels on the wire (the member's value).

    Codes the decoder produces (any peer, any frame):
    """

    #: The frame is longer than the receiving side accepts; it was not parsed.
    FRAME_TOO_LARGE = "frame_too_large"
    #: The frame is not exactly one well-formed msgpack value: truncated, trailing bytes,
    #: invalid UTF-8, a map key that is not a string, nesting deeper than the limit, or a
    #: string, binary, array or map longer than any field of any message allows.
    MALFORMED_FRAME = "malformed_frame"
    #: The frame is msgpack but not a message map, or its fields contradict each other
    #: (a ``set`` that changes nothing, a ``finished`` whose error does not match its reason).
    INVALID_MESSAGE = "invalid_message"
    #: The ``type`` names no message the receiving side accepts.
    UNKNOWN_TYPE = "unknown_type"
    #: A field that the message type does not define; ``field`` names it.
    UNKNOWN_FIELD = "unknown_field"
    #: A required field is absent; ``field`` names it.
    MISSING_FIELD = "missing_field"
    #: A field has the wrong type, is out of range, too long, or not one of its allowed values.
    INVALID_VALUE = "invalid_value"
    #: The frame's protocol version ``v`` is not one the receiver speaks.
    UNSUPPORTED_VERSION = "unsupported_version"

    # Codes the server produces (session, authorisation, run management).

    #: A message other than ``hello`` arrived before the handshake finished.
    HELLO_REQUIRED = "hello_required"
    #: A message that is valid but not in the connection's current state (a second ``hello``).
    UNEXPECTED_MESSAGE = "unexpected_message"
    #: The server requires an API token and ``hello`` carried none or a wrong one.
    UNAUTHORIZED = "unauthorized"
    #: ``stop`` or ``set`` carried a control token that does not own the run.
    FORBIDDEN = "forbidden"
    #: No run with this ``run_id`` is known (never existed or was forgotten).
    UNKNOWN_RUN = "unknown_run"
    #: ``start`` named a model the server does not serve.
    UNKNOWN_MODEL = "unknown_model"
    #: ``start`` named a verifier the server has not registered.
    UNKNOWN_VERIFIER = "unknown_verifier"
    #: ``start`` named a sampler the model does not offer.
    UNKNOWN_SAMPLER = "unknown_sampler"
    #: ``start`` named a scheduler the model does not offer.
    UNKNOWN_SCHEDULER = "unknown_scheduler"
    #: The prompt cannot be understood by the model (e.g. words outside its vocabulary).
    INVALID_PROMPT = "invalid_prompt"
    #: The run queue is full; try again later.
    QUEUE_FULL = "queue_full"
    #: This connection sends faster than the server allows; the frame was dropped.
    RATE_LIMITED = "rate_limited"
    #: This connection already owns as many unfinished runs as the server allows.
    TOO_MANY_RUNS = "too_many_runs"
    #: ``stop`` or ``set`` addressed a run that has already finished.
    RUN_FINISHED = "run_finished"
    #: The connection did not read its events in time; the server closes it (resume later).
    SLOW_CONSUMER = "slow_consumer"
    #: The server is shutting down and accepts no new runs.
    SHUTTING_DOWN = "shutting_down"
    #: An unexpected failure inside the server (a failed run reports it in ``finished``).
    INTERNAL = "internal"
    #: The server cannot write its store: a run's result was not kept (a failed run reports
    #: it in ``finished``), and ``start`` is refused until the store can write again.
    STORE_FAILED = "store_failed"

    #: ``start`` named an upload id the server does not hold (``GET``: no such upload).
    UNKNOWN_UPLOAD = "unknown_upload"
    #: An upload is not a whole PNG, JPEG or WebP image of a mode the server can convert (the
    #: wrong content type, truncated, corrupt, animated), or its size does not fit its use.
    INVALID_UPLOAD = "invalid_upload"
    #: An upload has more bytes or more pixels than the server accepts (a decompression bomb
    #: is refused from its header, before it is decoded).
    UPLOAD_TOO_LARGE = "upload_too_large"

    # Codes a failed run reports in ``finished.error``.

    #: The model's estimate or image held NaN or infinity (often a half-precision overflow).
    NAN_DETECTED = "nan_detected"
    #: The verifier raised, or returned a score outside [0, 1].
    VERIFIER_FAILED = "verifier_failed"
    #: The device ran out of memory.
    OUT_OF_MEMORY = "out_of_memory"
    #: The engine cannot take the x0 estimate from the scheduler the run asked for.
    UNSUPPORTED_SCHEDULER = "unsupported_scheduler"


#: The codes that mean "these bytes are not a frame": they get :class:`FrameError`.
FRAME_CODES = frozenset({ErrorCode.FRAME_TOO_LARGE, ErrorCode.MALFORMED_FRAME})
#: The codes that mean "a frame, but not a valid message": they get :class:`MessageError`.
MESSAGE_CODES = frozenset(
    {
        ErrorCode.INVALID_MESSAGE,
        ErrorCode.UNKNOWN_TYPE,
        ErrorCode.UNKNOWN_FIELD,
        ErrorCode.MISSING_FIELD,
        ErrorCode.INVALID_VALUE,
        ErrorCode.UNSUPPORTED_VERSION,
    }
)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ProtocolError(Exception):
    """A coded failure: what went wrong (:attr:`code`), in words (:attr:`message`), and where
    (:attr:`field`, a path such as ``history[3].score``, or ``None``).

    The message and field are clipped to the protocol's limits, so every instance can be sent
    back to the peer as an ``error`` message as it is.
    """

    code: ErrorCode
    message: str
    field: str | None

    def __init__(self, code: ErrorCode, message: str, field: str | None = None) -> None:
        self.code = ErrorCode(code)
        self.message = _clip(message, MAX_MESSAGE_CHARS)
        self.field = None if field is None else _clip(field, MAX_FIELD_PATH_CHARS)
        super().__init__(self.code, self.message, self.field)

    def __str__(self) -> str:
        where = f" (field {self.field})" if self.field is not None else ""
        return f"{self.code.value}: {self.message}{where}"


class FrameError(ProtocolError):
    """The received bytes are not one acceptable msgpack frame."""


class MessageError(ProtocolError):
    """The frame decoded, but it is not a valid message of this protocol."""


def error_for(code: ErrorCode, message: str, field: str | None = None) -> ProtocolError:
    """Build the error of the right class for ``code``.

    Call this when re-raising a code received from the peer (the client does, for ``error``
    messages), so ``except FrameError`` and ``except MessageError`` keep their meaning.
    """
    if code in FRAME_CODES:
        return FrameError(code, message, field)
    if code in MESSAGE_CODES:
        return MessageError(code, message, field)
    return ProtocolError(code, message, field)
