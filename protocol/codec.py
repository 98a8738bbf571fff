"""Messages to frames and frames to messages, with no I/O.

A frame is one WebSocket binary message holding one msgpack map: ``type`` (the message's
name), ``v`` (the protocol version) and the message's fields by name. Call :func:`encode` to
turn a message into the bytes of a frame; call :func:`decode_client` on the server for every
frame a client sends, and :func:`decode_server` on the client for every frame the server sends.

The decoders check everything before they build a message and raise nothing but
:class:`~stepwatch.protocol.ProtocolError` (its subclasses :class:`FrameError` and
:class:`MessageError`), whatever the bytes. :func:`encode` applies the same checks to what it
sends, so a message a decoder would refuse is never put on the wire.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, cast

import msgpack  # type: ignore[import-untyped]  # msgpack ships no type hints

from . import limits
from .client_messages import ClientMessage
from .errors import ErrorCode, FrameError, MessageError
from .messages import CLIENT_MESSAGE_TYPES, SERVER_MESSAGE_TYPES, Message
from .schema import RecordSpec, compile_record, describe, unpack_limits
from .server_messages import ServerMessage

__all__ = [
    "PROTOCOL_VERSION",
    "SUBPROTOCOL",
    "SUPPORTED_VERSIONS",
    "decode_client",
    "decode_server",
    "encode",
    "peek",
]

#: The version this module speaks, carried in every frame's ``v``.
PROTOCOL_VERSION: Final = 1
#: The versions the decoders accept.
SUPPORTED_VERSIONS: Final = frozenset({PROTOCOL_VERSION})
#: The WebSocket subprotocol a client offers and a server selects.
SUBPROTOCOL: Final = f"stepwatch.v{PROTOCOL_VERSION}"

#: The keys every frame has besides the message's fields.
TYPE_KEY: Final = "type"
VERSION_KEY: Final = "v"


@dataclass(frozen=True, slots=True)
class _Direction:
    """What may travel one way: the message types by wire name and the bounds of a frame."""

    sender: str
    specs: Mapping[str, RecordSpec]
    max_frame_bytes: int
    unpack_limits: Mapping[str, int]


def _direction(sender: str, classes: Iterable[type[Any]], max_frame_bytes: int) -> _Direction:
    specs = {cls.TYPE: compile_record(cls) for cls in classes}
    names = {TYPE_KEY: max(map(len, specs)), VERSION_KEY: 0}
    bounds = unpack_limits(specs.values(), names, floor=limits.MAX_NAME_CHARS)
    return _Direction(sender, specs, max_frame_bytes, bounds)


_FROM_CLIENT: Final = _direction("client", CLIENT_MESSAGE_TYPES, limits.MAX_CLIENT_FRAME_BYTES)
_FROM_SERVER: Final = _direction("server", SERVER_MESSAGE_TYPES, limits.MAX_SERVER_FRAME_BYTES)
_DIRECTION_OF: Final = {
    spec.cls: direction
    for direction in (_FROM_CLIENT, _FROM_SERVER)
    for spec in direction.specs.values()
}


def encode(message: Message) -> bytes:
    """Return the frame that carries ``message``.

    Raises :class:`~stepwatch.protocol.ProtocolError` if the receiving side's decoder would
    refuse it: a value out of range or too long (``invalid_value``), a frame over the size
    limit (``frame_too_large``). Raises :class:`TypeError` for an object that is no message.
    """
    direction = _DIRECTION_OF.get(type(message))
    if direction is None:
        raise TypeError(f"{type(message).__name__} is not a stepwatch message")
    spec = direction.specs[message.TYPE]
    body = spec.write(message)
    # Check what we send exactly as the peer will, so a bad value fails here, at its source.
    spec.read(body, "")
    try:
        frame = msgpack.packb({TYPE_KEY: message.TYPE, VERSION_KEY: PROTOCOL_VERSION, **body})
    # The only value that passes the checks but cannot be packed: a str holding a lone
    # surrogate, which has no UTF-8 form (no decoded frame ever produces one).
    except UnicodeEncodeError as exc:
        raise MessageError(
            ErrorCode.INVALID_VALUE, f"a string is not valid Unicode: {exc}"
        ) from exc
    assert isinstance(frame, bytes)
    _check_size(frame, direction)
    return frame


def decode_client(data: bytes | str) -> ClientMessage:
    """Read one frame a client sent. A text WebSocket message (``str``) is refused too."""
    return cast(ClientMessage, _decode(data, _FROM_CLIENT))


def decode_server(data: bytes | str) -> ServerMessage:
    """Read one frame the server sent. A text WebSocket message (``str``) is refused too."""
    return cast(ServerMessage, _decode(data, _FROM_SERVER))


@dataclass(frozen=True, slots=True)
class FrameIds:
    """What a frame says about itself, read even from a frame that is no valid message:
    its ``type`` and its ``request_id``, each ``None`` unless it is a string of a length the
    protocol allows there."""

    type: str | None = None
    request_id: str | None = None


def peek(data: bytes | str) -> FrameIds:
    """Read a client frame's ``type`` and ``request_id`` without checking anything else.

    Call it for a frame :func:`decode_client` refused, so that the ``error`` can name the
    request that failed. It never raises: unreadable bytes give an empty :class:`FrameIds`.
    """
    if isinstance(data, str) or len(data) > _FROM_CLIENT.max_frame_bytes:
        return FrameIds()
    try:
        frame = _unpack(data, _FROM_CLIENT)
    except FrameError:
        return FrameIds()
    if not isinstance(frame, dict):
        return FrameIds()
    kind, request_id = frame.get(TYPE_KEY), frame.get("request_id")
    return FrameIds(
        kind if isinstance(kind, str) else None,
        request_id
        if isinstance(request_id, str) and 1 <= len(request_id) <= limits.MAX_ID_CHARS
        else None,
    )


def _decode(data: bytes | str, direction: _Direction) -> object:
    if isinstance(data, str):
        raise FrameError(ErrorCode.MALFORMED_FRAME, "frames are binary, not text")
    _check_size(data, direction)
    frame = _unpack(data, direction)
    if not isinstance(frame, dict):
        message = f"a frame is a msgpack map, got {describe(frame)}"
        raise MessageError(ErrorCode.INVALID_MESSAGE, message)
    _check_version(frame)
    spec = _spec_for(frame, direction)
    body = {key: value for key, value in frame.items() if key not in (TYPE_KEY, VERSION_KEY)}
    return spec.read(body, "")


def _check_size(data: bytes, direction: _Direction) -> None:
    if len(data) > direction.max_frame_bytes:
        message = (
            f"a {direction.sender} frame of {len(data)} bytes exceeds the limit of "
            f"{direction.max_frame_bytes}"
        )
        raise FrameError(ErrorCode.FRAME_TOO_LARGE, message)


def _unpack(data: bytes, direction: _Direction) -> object:
    try:
        frame: object = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=False,
            max_ext_len=0,
            **direction.unpack_limits,
        )
    # msgpack reports every malformed input as a ValueError (its own exceptions and
    # UnicodeDecodeError derive from it); its pure-Python fallback can also exhaust the
    # recursion limit on deep nesting.
    except (ValueError, RecursionError) as exc:
        raise FrameError(ErrorCode.MALFORMED_FRAME, f"not one msgpack value: {exc}") from exc
    if _nested_deeper_than(frame, limits.MAX_NESTING_DEPTH):
        message = f"nesting deeper than {limits.MAX_NESTING_DEPTH} levels"
        raise FrameError(ErrorCode.MALFORMED_FRAME, message)
    return frame


def _nested_deeper_than(value: object, depth_limit: int) -> bool:
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children: Iterable[object] = item.values()
        elif type(item) is tuple:  # exactly: msgpack's ExtType is a named tuple
            children = cast(tuple[object, ...], item)
        else:
            continue
        if depth > depth_limit:
            return True
        pending.extend((child, depth + 1) for child in children)
    return False


def _check_version(frame: dict[object, object]) -> None:
    if VERSION_KEY not in frame:
        raise MessageError(ErrorCode.MISSING_FIELD, "a frame needs a version", VERSION_KEY)
    version = frame[VERSION_KEY]
    if not isinstance(version, int) or isinstance(version, bool):
        message = f"the version is an integer, got {describe(version)}"
        raise MessageError(ErrorCode.INVALID_VALUE, message, VERSION_KEY)
    if version not in SUPPORTED_VERSIONS:
        supported = ", ".join(map(str, sorted(SUPPORTED_VERSIONS)))
        message = f"protocol version {version} is not supported (supported: {supported})"
        raise MessageError(ErrorCode.UNSUPPORTED_VERSION, message, VERSION_KEY)


def _spec_for(frame: dict[object, object], direction: _Direction) -> RecordSpec:
    if TYPE_KEY not in frame:
        raise MessageError(ErrorCode.MISSING_FIELD, "a frame needs a type", TYPE_KEY)
    name = frame[TYPE_KEY]
    if not isinstance(name, str):
        message = f"the type is a string, got {describe(name)}"
        raise MessageError(ErrorCode.INVALID_VALUE, message, TYPE_KEY)
    spec = direction.specs.get(name)
    if spec is None:
        message = f"{name[:40]!r} is not a message a {direction.sender} sends"
        raise MessageError(ErrorCode.UNKNOWN_TYPE, message, TYPE_KEY)
    return spec
