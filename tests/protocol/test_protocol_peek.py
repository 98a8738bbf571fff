"""``peek`` reads a refused frame's ``type`` and ``request_id``, so an error can name the request
that failed; it never raises, whatever the bytes."""

from __future__ import annotations

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stepwatch.protocol import ProtocolError, decode_client, peek
from stepwatch.protocol import limits as wire
from stepwatch.protocol.codec import FrameIds


def packed(value: object) -> bytes:
    data: bytes = msgpack.packb(value)
    return data


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            packed({"type": "start", "v": 1, "request_id": "q1", "prompt": 5}),
            FrameIds("start", "q1"),
        ),
        (packed({"type": "hello", "v": 1}), FrameIds("hello", None)),
        (packed({"type": 3, "request_id": ""}), FrameIds(None, None)),
        (packed({"request_id": "x" * (wire.MAX_ID_CHARS + 1)}), FrameIds(None, None)),
        (packed({"request_id": 7}), FrameIds(None, None)),
        (packed([1, 2]), FrameIds()),
        (b"\xc1", FrameIds()),
        ("text", FrameIds()),
        (b"\x00" * (wire.MAX_CLIENT_FRAME_BYTES + 1), FrameIds()),
    ],
)
def test_peek_reads_what_it_can(data: bytes | str, expected: FrameIds) -> None:
    assert peek(data) == expected


def test_peek_reads_the_request_id_of_a_frame_the_decoder_refuses() -> None:
    data = packed({"type": "start", "v": 1, "request_id": "q9", "promt": "x"})
    with pytest.raises(ProtocolError):
        decode_client(data)
    assert peek(data).request_id == "q9"


@given(st.binary(max_size=256))
def test_peek_never_raises(data: bytes) -> None:
    ids = peek(data)
    assert ids.type is None or isinstance(ids.type, str)
