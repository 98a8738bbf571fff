"""WebSocket frames made once per event and written straight to each watcher's socket.

A run event goes to every watcher as the same bytes: the server's frames carry no mask and,
with compression off, no per-connection state, so the whole WebSocket frame, header and payload,
is made once (:func:`binary_frame`, cached on the logged event) and the same ``bytes`` object is
written to every socket. The write itself goes through a :class:`FrameWriter`, which the
WebSocket protocol class of :mod:`~stepwatch.server.connections` hands the app in the ASGI
scope's extensions (under :data:`FRAMES_EXTENSION`): one ``transport.write`` for any number of
frames, no ASGI message, no task switch.

Why: through the ASGI send path each frame to each watcher cost a wakeup of the connection's
task, Starlette's and uvicorn's checks, websockets' framing (a copy of the payload) and one
``socket.send``; with a hundred watchers that was most of the event loop's time per step. A
server without the extension (another ASGI server, a test client) gets the ASGI path.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

__all__ = ["FRAMES_EXTENSION", "FrameWriter", "binary_frame", "frame_writer"]

#: The ASGI scope extension under which the WebSocket protocol offers its :class:`FrameWriter`.
FRAMES_EXTENSION = "stepwatch.frames"

_FIN_BINARY = 0x82


def binary_frame(payload: bytes) -> bytes:
    """``payload`` as one unmasked, final binary WebSocket frame (RFC 6455 section 5.2), as a
    server sends it with no extension negotiated."""
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", _FIN_BINARY, length)
    elif length < 65536:
        head = struct.pack("!BBH", _FIN_BINARY, 126, length)
    else:
        head = struct.pack("!BBQ", _FIN_BINARY, 127, length)
    return head + payload


class FrameWriter(Protocol):
    """Writes whole WebSocket frames (made by :func:`binary_frame`) to one connection's socket.

    Call it from the event loop only.
    """

    def can_write(self) -> bool:
        """Whether a write now would go out at once: the connection is open, its close not
        sent, and its transport has not paused writing (its buffer is under the high mark)."""
        ...

    def write(self, frame: bytes) -> None:
        """Write ``frame`` (one or more whole frames); only when :meth:`can_write` is true."""
        ...

    async def send(self, frames: Sequence[bytes]) -> None:
        """Wait until the transport takes writes again, then write ``frames`` in one write.

        Raises :class:`OSError` when the connection has gone or its close was sent.
        """
        ...


def frame_writer(scope: Mapping[str, Any]) -> FrameWriter | None:
    """The writer the server offers in ``scope``'s extensions; ``None`` where it offers none."""
    extensions = scope.get("extensions") or {}
    writer = extensions.get(FRAMES_EXTENSION)
    return writer if writer is not None else None
