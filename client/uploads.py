"""Input images sent to the server: ``POST /api/uploads`` (see the protocol README's
"Input images").

An image-to-image, inpainting or ControlNet run names its input images in ``start`` by the ids
the server answered an upload with. The bytes go as they are, once: the id is their SHA-256, so
sending the same file again costs the server nothing. The standard library's :mod:`urllib`
posts them in a worker thread, as :mod:`.history` reads the run list.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from stepwatch.protocol import ErrorCode
from stepwatch.protocol import limits as wire

from .errors import ConnectionFailed, ProtocolViolation, Refused
from .history import _parse, _refusal, http_base
from .transport import DEFAULT_URL

__all__ = ["Upload", "content_type_of", "upload_image"]

#: The content type of each accepted image format, by the format's first bytes.
_SIGNATURES: Final = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
)


@dataclass(frozen=True, slots=True)
class Upload:
    """An image the server keeps: name its :attr:`id` in ``generate(image=...)`` (or ``mask``,
    ``control_image``)."""

    id: str
    #: ``png``, ``jpeg`` or ``webp``.
    format: str
    width: int
    height: int
    #: Whether this upload stored it (``False``: the server had it already).
    created: bool


def content_type_of(data: bytes) -> str:
    """The content type of PNG, JPEG or WebP ``data``, from its first bytes; raise
    :class:`Refused` (``invalid_upload``, not sent) for anything else."""
    for signature, content_type in _SIGNATURES:
        if data.startswith(signature):
            return content_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    raise Refused(
        ErrorCode.INVALID_UPLOAD, "not a PNG, JPEG or WebP image", field="body", by_server=False
    )


async def upload_image(
    source: str | Path | bytes,
    url: str = DEFAULT_URL,
    *,
    token: str | None = None,
    content_type: str | None = None,
    http_timeout: float = 60.0,
) -> Upload:
    """Send an image (a file's path or its bytes) to the server at ``url`` (its WebSocket URL,
    as for :func:`~stepwatch.client.connect`) and return what it keeps.

    ``content_type`` defaults to the one the bytes start with. Raises :class:`Refused` with the
    server's code (``INVALID_UPLOAD``, ``UPLOAD_TOO_LARGE``, ``UNAUTHORIZED``) or, before
    sending, for a file over :data:`~stepwatch.protocol.limits.MAX_UPLOAD_BYTES`;
    :class:`ConnectionFailed` when the server cannot be reached.
    """
    data = source if isinstance(source, bytes) else await asyncio.to_thread(_read, Path(source))
    if len(data) > wire.MAX_UPLOAD_BYTES:
        raise Refused(
            ErrorCode.UPLOAD_TOO_LARGE,
            f"an upload is at most {wire.MAX_UPLOAD_BYTES} bytes, this one {len(data)}",
            field="body",
            by_server=False,
        )
    kind = content_type or content_type_of(data)
    address = f"{http_base(url)}/api/uploads"
    body = await asyncio.to_thread(_post, address, data, kind, token, http_timeout)
    try:
        assert isinstance(body, dict)
        return Upload(
            id=str(body["id"]),
            format=str(body["format"]),
            width=int(body["width"]),
            height=int(body["height"]),
            created=bool(body["created"]),
        )
    except (AssertionError, KeyError, TypeError, ValueError) as exc:
        raise ProtocolViolation(f"{address} answered an upload without its id and size") from exc


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise Refused(
            ErrorCode.INVALID_UPLOAD, f"cannot read {path}: {exc.strerror}", by_server=False
        ) from exc


def _post(
    address: str, data: bytes, content_type: str, token: str | None, timeout: float
) -> object:
    headers = {"Content-Type": content_type, "Accept": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(address, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return _parse(address, response.read())
    except urllib.error.HTTPError as exc:
        raise _refusal(address, exc) from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConnectionFailed(f"cannot reach {address}: {reason}") from exc
