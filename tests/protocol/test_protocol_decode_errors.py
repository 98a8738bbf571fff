"""Each way a frame can be wrong gets its own stable error code and names the offending field."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from protocol_examples import SERVER_EXAMPLES, SHAPES, TOKEN

from stepwatch.protocol import (
    ErrorCode,
    Finished,
    FrameError,
    Hello,
    MessageError,
    ProtocolError,
    Start,
    Welcome,
    decode_client,
    decode_server,
    encode,
    limits,
)


def client_frame(type_: str = "hello", **fields: Any) -> bytes:
    return msgpack.packb({"type": type_, "v": 1, **fields})


def refused(data: bytes | str, *, server: bool = False) -> ProtocolError:
    decode = decode_server if server else decode_client
    with pytest.raises(ProtocolError) as caught:
        decode(data)
    return caught.value


def test_frame_over_the_client_limit_is_refused_before_parsing() -> None:
    error = refused(b"\xc1" * (limits.MAX_CLIENT_FRAME_BYTES + 1))
    assert error.code is ErrorCode.FRAME_TOO_LARGE
    assert isinstance(error, FrameError)


def test_server_frames_may_be_larger_than_client_frames() -> None:
    big = b"\xc1" * (limits.MAX_CLIENT_FRAME_BYTES + 1)
    assert refused(big, server=True).code is ErrorCode.MALFORMED_FRAME


def test_encode_refuses_a_frame_the_peer_would_refuse_as_too_large() -> None:
    words = tuple(f"{n:04d}" + "\U0001f600" * 59 for n in range(limits.MAX_VOCABULARY_WORDS))
    model = Welcome(
        server="s",
        capabilities=(),
        limits={},
        models=tuple(
            type(SHAPES)(**{**_fields(SHAPES), "id": f"m{n}", "vocabulary": words})
            for n in range(30)
        ),
        verifiers=(),
    )
    with pytest.raises(FrameError) as caught:
        encode(model)
    assert caught.value.code is ErrorCode.FRAME_TOO_LARGE


def _fields(record: Any) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__dataclass_fields__}


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(client_frame()[:-1], id="truncated"),
        pytest.param(client_frame(client="c") + b"\x00", id="trailing-bytes"),
        pytest.param(b"\xc1", id="reserved-byte"),
        pytest.param(b"\x81\xa4type\xa2\xff\xfe", id="invalid-utf8"),
        pytest.param(msgpack.packb({1: "x"}), id="integer-key"),
        pytest.param(b"\xd6\xff\x00", id="truncated-timestamp"),
        pytest.param(msgpack.packb("x" * 20_000), id="string-longer-than-any-field"),
        pytest.param(msgpack.packb({"resume": [0] * 100}), id="array-longer-than-any-field"),
        pytest.param(msgpack.packb(b"\x00" * 100), id="long-binary-in-a-client-frame"),
        pytest.param(client_frame(client=[[[[[[[[1]]]]]]]]), id="nested-too-deep"),
        pytest.param(b"\x91" * 5000 + b"\x01", id="nested-past-msgpack-stack"),
    ],
)
def test_malformed_frames(data: bytes) -> None:
    error = refused(data)
    assert error.code is ErrorCode.MALFORMED_FRAME
    assert isinstance(error, FrameError)


def test_text_frames_are_malformed() -> None:
    assert refused('{"type": "hello"}').code is ErrorCode.MALFORMED_FRAME


def test_nesting_to_the_limit_is_not_malformed() -> None:
    # Depth 8 exactly: the top-level map and seven arrays; the field is then merely wrong.
    error = refused(client_frame(client=[[[[[[[1]]]]]]]))
    assert error.code is ErrorCode.INVALID_VALUE


@pytest.mark.parametrize("value", [[], 1, "hello", None, b""], ids=repr)
def test_a_frame_that_is_not_a_map_is_an_invalid_message(value: Any) -> None:
    error = refused(msgpack.packb(value))
    assert error.code is ErrorCode.INVALID_MESSAGE
    assert isinstance(error, MessageError)


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        (msgpack.packb({"type": "hello", "client": "c"}), "v"),
        (msgpack.packb({"v": 1, "client": "c"}), "type"),
        (client_frame("start", request_id="q"), "prompt"),
        (client_frame(resume=[{"run_id": "r"}], client="c"), "resume[0].after_seq"),
        (client_frame("stop", request_id="q", run_id="r"), "token"),
    ],
)
def test_missing_fields_are_named(frame: bytes, field: str) -> None:
    error = refused(frame)
    assert (error.code, error.field) == (ErrorCode.MISSING_FIELD, field)


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        (client_frame(client="c", promt="typo"), "promt"),
        (client_frame(client="c", resume=[{"run_id": "r", "after_seq": 0, "x": 1}]), "resume[0].x"),
        (msgpack.packb({"type": "hello", "v": 1, b"client": "c"}), "b'client'"),
    ],
)
def test_unknown_fields_are_named(frame: bytes, field: str) -> None:
    error = refused(frame)
    assert (error.code, error.field) == (ErrorCode.UNKNOWN_FIELD, field)


def test_unknown_fields_are_reported_before_missing_ones() -> None:
    error = refused(client_frame(clinet="typo"))
    assert (error.code, error.field) == (ErrorCode.UNKNOWN_FIELD, "clinet")


@pytest.mark.parametrize("name", ["hullo", "welcome", "finished", ""])
def test_a_client_frame_of_an_unknown_type(name: str) -> None:
    error = refused(client_frame(name, client="c"))
    assert (error.code, error.field) == (ErrorCode.UNKNOWN_TYPE, "type")


def test_a_server_frame_of_a_client_type() -> None:
    error = refused(client_frame("hello", client="c"), server=True)
    assert error.code is ErrorCode.UNKNOWN_TYPE


@pytest.mark.parametrize("version", [0, 2, -1, 2**40])
def test_unsupported_versions(version: int) -> None:
    error = refused(msgpack.packb({"type": "hello", "v": version, "client": "c"}))
    assert (error.code, error.field) == (ErrorCode.UNSUPPORTED_VERSION, "v")


def test_the_version_is_checked_before_the_type() -> None:
    error = refused(msgpack.packb({"type": "hello-from-the-future", "v": 2}))
    assert error.code is ErrorCode.UNSUPPORTED_VERSION


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        (msgpack.packb({"type": "hello", "v": "1", "client": "c"}), "v"),
        (msgpack.packb({"type": "hello", "v": True, "client": "c"}), "v"),
        (msgpack.packb({"type": "hello", "v": 1.0, "client": "c"}), "v"),
        (msgpack.packb({"type": b"hello", "v": 1, "client": "c"}), "type"),
        (client_frame(client=""), "client"),
        (client_frame(client="c" * (limits.MAX_NAME_CHARS + 1)), "client"),
        (client_frame(client=b"c"), "client"),
        (client_frame(client="c", token=1), "token"),
        (client_frame(client="c", resume={"r": 1}), "resume"),
        (client_frame(client="c", resume=[["r", 1]]), "resume[0]"),
        (client_frame(client="c", resume=msgpack.ExtType(1, b"")), "resume"),
        (
            client_frame(client="c", resume=[{"run_id": "r", "after_seq": -1}]),
            "resume[0].after_seq",
        ),
        (
            client_frame(client="c", resume=[{"run_id": "r", "after_seq": 2**53}]),
            "resume[0].after_seq",
        ),
        (
            client_frame(client="c", resume=[{"run_id": "r", "after_seq": True}]),
            "resume[0].after_seq",
        ),
        (
            client_frame(client="c", resume=[{"run_id": "r", "after_seq": 1.0}]),
            "resume[0].after_seq",
        ),
        (client_frame(client="c", resume=[{"run_id": "r", "after_seq": 0}] * 33), "resume"),
        (client_frame("start", request_id="q", prompt="p" * 4001), "prompt"),
        (client_frame("start", request_id="q", prompt="p", steps=0), "steps"),
        (client_frame("start", request_id="q", prompt="p", steps=1001), "steps"),
        (client_frame("start", request_id="q", prompt="p", cfg=30.01), "cfg"),
        (client_frame("start", request_id="q", prompt="p", cfg=float("nan")), "cfg"),
        (client_frame("start", request_id="q", prompt="p", cfg=float("inf")), "cfg"),
        (client_frame("start", request_id="q", prompt="p", cfg="7"), "cfg"),
        (client_frame("start", request_id="q", prompt="p", cfg=False), "cfg"),
        (client_frame("start", request_id="q", prompt="p", width=2049), "width"),
        (client_frame("start", request_id="q", prompt="p", early_stop=1), "early_stop"),
        (client_frame("start", request_id="q", prompt="p", preview_format="gif"), "preview_format"),
        (client_frame("start", request_id="q", prompt="p", preview_format=1), "preview_format"),
        (
            client_frame("start", request_id="q", prompt="p", quality_threshold=1.5),
            "quality_threshold",
        ),
        (client_frame("stop", request_id="q", run_id="r", token="short"), "token"),
        (client_frame("stop", request_id="q", run_id="r", token=TOKEN, mode="kill"), "mode"),
    ],
)
def test_invalid_values_are_named(frame: bytes, field: str) -> None:
    error = refused(frame)
    assert (error.code, error.field) == (ErrorCode.INVALID_VALUE, field)
    assert isinstance(error, MessageError)


def server_frame(message: Any, **changes: Any) -> bytes:
    tree = msgpack.unpackb(encode(message), raw=False)
    tree.update(changes)
    return msgpack.packb(tree)


CHECK = next(m for m in SERVER_EXAMPLES if m.TYPE == "check" and m.preview is not None)
WELCOME = SERVER_EXAMPLES[0]
FINISHED = next(m for m in SERVER_EXAMPLES if isinstance(m, Finished) and m.image is not None)


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        (server_frame(CHECK, components={"": 0.5}), "components key"),
        (server_frame(CHECK, components={"c" * 65: 0.5}), "components key"),
        (server_frame(CHECK, components={"class": "high"}), "components.class"),
        (server_frame(CHECK, components={f"c{n}": 0.5 for n in range(17)}), "components"),
        (server_frame(CHECK, components=[0.5]), "components"),
        (
            server_frame(CHECK, preview={"format": "webp", "width": 1, "height": 1, "data": b""}),
            "preview.data",
        ),
        (
            server_frame(CHECK, preview={"format": "webp", "width": 1, "height": 1, "data": "x"}),
            "preview.data",
        ),
        (
            server_frame(CHECK, preview={"format": "webp", "width": 0, "height": 1, "data": b"x"}),
            "preview.width",
        ),
        (server_frame(CHECK, decision="stop"), "decision"),
        (server_frame(CHECK, score=1.0000001), "score"),
        (server_frame(WELCOME, limits={"max_steps": -1}), "limits.max_steps"),
        (
            server_frame(
                WELCOME,
                models=[
                    {
                        **msgpack.unpackb(encode(WELCOME), raw=False)["models"][0],
                        "samplers": ["x"] * 65,
                    }
                ],
            ),
            "models[0].samplers",
        ),
        (
            server_frame(FINISHED, error={"code": "no_such_code", "message": ""}, reason="failed"),
            "error.code",
        ),
        (server_frame(FINISHED, history=[{}]), "history[0].step"),
    ],
)
def test_invalid_values_deep_in_server_messages_are_named(frame: bytes, field: str) -> None:
    error = refused(frame, server=True)
    assert error.field == field
    assert error.code in (ErrorCode.INVALID_VALUE, ErrorCode.MISSING_FIELD)


@pytest.mark.parametrize(
    ("frame", "server"),
    [
        (client_frame("set", request_id="q", run_id="r", token=TOKEN), False),
        (client_frame("set", request_id="q", run_id="r", token=TOKEN, cfg=None), False),
        (server_frame(FINISHED, reason="failed"), True),
        (server_frame(FINISHED, error={"code": "internal", "message": "boom"}), True),
        (server_frame(next(m for m in SERVER_EXAMPLES if m.TYPE == "applied"), stop="abort"), True),
        (
            server_frame(
                next(m for m in SERVER_EXAMPLES if m.TYPE == "applied"), changes=[], stop=None
            ),
            True,
        ),
    ],
)
def test_contradictory_fields_are_an_invalid_message(frame: bytes, server: bool) -> None:
    assert refused(frame, server=server).code is ErrorCode.INVALID_MESSAGE


def test_encode_checks_values_like_the_peer() -> None:
    with pytest.raises(MessageError) as caught:
        encode(Start(request_id="q", prompt="p", steps=0))
    assert (caught.value.code, caught.value.field) == (ErrorCode.INVALID_VALUE, "steps")


def test_encode_refuses_strings_without_a_utf8_form() -> None:
    with pytest.raises(MessageError) as caught:
        encode(Hello(client="\ud800"))
    assert caught.value.code is ErrorCode.INVALID_VALUE


def test_encode_refuses_what_is_no_message() -> None:
    with pytest.raises(TypeError):
        encode(SHAPES)  # type: ignore[arg-type]
