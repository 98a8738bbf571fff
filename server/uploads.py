"""Uploaded input images: what is accepted, and how one becomes a picture a pipeline reads.

:func:`check_upload` is the one gate every upload passes (``POST /api/uploads`` and
``stepwatch sample --image``): a content type on the allow-list (PNG, JPEG, WebP), at most
:data:`~stepwatch.protocol.limits.MAX_UPLOAD_BYTES` bytes, bytes of the format the content type
names, a size read from the header and held to the pixel limit *before* anything is decoded
(a decompression bomb never reaches the decoder), then one full decode, which a truncated or
corrupt file fails. Pillow's own bomb guard (``DecompressionBombError`` and its warning) is
translated too, in case a format's header and its data disagree. Every refusal is an
:class:`UploadRefused`: a protocol code, a message and the HTTP status to answer with.

:func:`open_for_use` decodes a checked upload again when a run needs it and converts it: RGB for
an init or control image, greyscale for a mask; :func:`load_inputs` does that for the uploads a
``start`` names. This module imports neither torch nor Starlette.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from typing import Final, Literal, Protocol

import anyio
from PIL import Image, UnidentifiedImageError

from stepwatch.protocol import ErrorCode, ProtocolError, Start
from stepwatch.protocol import limits as wire
from stepwatch.server.engine.inputs import ROLES, InputImages

__all__ = [
    "CONTENT_TYPES",
    "CheckedUpload",
    "InputRole",
    "UploadRefused",
    "UploadSource",
    "check_upload",
    "load_inputs",
    "open_for_use",
    "upload_id",
]

#: The content types an upload may have, and the Pillow format each must hold.
CONTENT_TYPES: Final = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}
#: What an input image is for; a mask is read as greyscale, the others as RGB.
InputRole = Literal["image", "mask", "control_image"]


class UploadRefused(ProtocolError):
    """An upload the server does not keep: its code and message, and :attr:`status`, the HTTP
    status that answers it."""

    def __init__(self, status: int, code: ErrorCode, message: str) -> None:
        super().__init__(code, message, "body")
        self.status = status


@dataclass(frozen=True, slots=True)
class CheckedUpload:
    """An upload that passed :func:`check_upload`: its id, format (``png``, ``jpeg``,
    ``webp``), size and bytes."""

    id: str
    format: str
    width: int
    height: int
    data: bytes = b""


def upload_id(data: bytes) -> str:
    """The id of an upload: the SHA-256 of its bytes, in hexadecimal."""
    return hashlib.sha256(data).hexdigest()


def _too_large(message: str) -> UploadRefused:
    return UploadRefused(413, ErrorCode.UPLOAD_TOO_LARGE, message)


def _invalid(message: str) -> UploadRefused:
    return UploadRefused(400, ErrorCode.INVALID_UPLOAD, message)


def content_format(content_type: str | None) -> str:
    """The Pillow format ``content_type`` stands for; raise :class:`UploadRefused` (415) for one
    outside the allow-list."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media not in CONTENT_TYPES:
        allowed = ", ".join(CONTENT_TYPES)
        raise UploadRefused(
            415, ErrorCode.INVALID_UPLOAD, f"content type {media[:60]!r} is not one of {allowed}"
        )
    return CONTENT_TYPES[media]


def check_upload(data: bytes, content_type: str | None) -> CheckedUpload:
    """Check ``data``, sent as ``content_type``, as an input image (see the module's docstring).

    Returns its :class:`CheckedUpload`; raises :class:`UploadRefused`.
    """
    wanted = content_format(content_type)
    if len(data) > wire.MAX_UPLOAD_BYTES:
        raise _too_large(f"an upload is at most {wire.MAX_UPLOAD_BYTES} bytes")
    if not data:
        raise _invalid("the upload is empty")
    with warnings.catch_warnings():
        # Pillow warns (then raises) past its own pixel limit; both are refusals here.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=[wanted]) as image:
                width, height = _checked_size(image)
                if getattr(image, "n_frames", 1) > 1:
                    raise _invalid("animated images are not accepted; upload one still frame")
                image.load()
                _convertible(image)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _too_large(f"the image is a decompression bomb: {exc}") from exc
        except UnidentifiedImageError as exc:
            raise _invalid(f"the bytes are not a {wanted} image") from exc
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            # Pillow reports truncated and corrupt data as OSError, SyntaxError or ValueError.
            raise _invalid(f"the {wanted} image cannot be decoded: {exc}") from exc
    return CheckedUpload(upload_id(data), wanted.lower(), width, height, data)


def _checked_size(image: Image.Image) -> tuple[int, int]:
    width, height = image.size
    if width * height > wire.MAX_UPLOAD_PIXELS:
        raise _too_large(
            f"the image is {width}x{height} pixels; at most {wire.MAX_UPLOAD_PIXELS} pixels"
        )
    for side in (width, height):
        if not wire.MIN_SIZE <= side <= wire.MAX_SIZE:
            raise _too_large(
                f"the image is {width}x{height}; each side is {wire.MIN_SIZE}..{wire.MAX_SIZE}"
            )
    return width, height


def _convertible(image: Image.Image) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a palette's transparency is dropped
            image.convert("RGB")
    except (OSError, ValueError) as exc:
        raise _invalid(f"an image of mode {image.mode} cannot be converted to RGB") from exc


def open_for_use(data: bytes, role: InputRole) -> Image.Image:
    """A checked upload decoded for a pipeline: RGB, or greyscale (``L``) for a mask."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a palette's transparency is dropped
            return image.convert("L" if role == "mask" else "RGB")


class UploadSource(Protocol):
    """Where a run's uploads are read from (the store's :class:`~.store.uploads.UploadArchive`)."""

    async def upload(self, upload_id: str, *, data: bool = True) -> CheckedUpload | None: ...


async def load_inputs(source: UploadSource, start: Start) -> InputImages | None:
    """The images of the uploads ``start`` names, decoded for use (in a worker thread); ``None``
    when it names none. Raises ``unknown_upload`` naming the field of an id not kept."""
    images: dict[str, Image.Image] = {}
    for role in ROLES:
        upload_id = getattr(start, role)
        if upload_id is None:
            continue
        upload = await source.upload(upload_id)
        if upload is None:
            raise ProtocolError(
                ErrorCode.UNKNOWN_UPLOAD,
                f"no upload {upload_id} is kept here; POST it to /api/uploads first",
                role,
            )
        images[role] = await anyio.to_thread.run_sync(open_for_use, upload.data, role)
    return InputImages(**images) if images else None
