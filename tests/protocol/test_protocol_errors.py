"""The error tree: coded, clipped to what the wire carries, and convertible both ways."""

from __future__ import annotations

import pickle

import pytest

from stepwatch.protocol import (
    Error,
    ErrorCode,
    FrameError,
    MessageError,
    ProtocolError,
    decode_server,
    encode,
    error_for,
    limits,
)


def test_every_code_is_its_own_snake_case_name() -> None:
    for code in ErrorCode:
        assert code.value == code.name.lower()
    assert len(ErrorCode) == len({code.value for code in ErrorCode})


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (ErrorCode.MALFORMED_FRAME, FrameError),
        (ErrorCode.FRAME_TOO_LARGE, FrameError),
        (ErrorCode.UNKNOWN_FIELD, MessageError),
        (ErrorCode.UNSUPPORTED_VERSION, MessageError),
        (ErrorCode.QUEUE_FULL, ProtocolError),
        (ErrorCode.FORBIDDEN, ProtocolError),
    ],
)
def test_error_for_picks_the_class_of_the_code(code: ErrorCode, cls: type) -> None:
    error = error_for(code, "m", "f")
    assert type(error) is cls
    assert (error.code, error.message, error.field) == (code, "m", "f")


def test_codes_given_as_strings_become_members() -> None:
    assert ProtocolError("unknown_run", "no such run").code is ErrorCode.UNKNOWN_RUN  # type: ignore[arg-type]


def test_str_names_code_message_and_field() -> None:
    assert str(ProtocolError(ErrorCode.INVALID_VALUE, "too big", "steps")) == (
        "invalid_value: too big (field steps)"
    )
    assert str(ProtocolError(ErrorCode.INTERNAL, "boom")) == "internal: boom"


def test_long_messages_and_fields_are_clipped_so_they_can_be_sent() -> None:
    error = MessageError(ErrorCode.UNKNOWN_FIELD, "m" * 5000, "f" * 5000)
    assert len(error.message) == limits.MAX_MESSAGE_CHARS
    assert error.field is not None and len(error.field) == limits.MAX_FIELD_PATH_CHARS
    assert error.message.endswith("…")
    sent = decode_server(encode(Error.from_exception(error, request_id="q")))
    assert isinstance(sent, Error)
    assert (sent.code, sent.field, sent.request_id) == (error.code, error.field, "q")


def test_an_error_message_turns_back_into_the_exception() -> None:
    message = Error(ErrorCode.FRAME_TOO_LARGE, "too big", run_id="r")
    error = message.to_exception()
    assert isinstance(error, FrameError)
    assert (error.code, error.message, error.field) == (ErrorCode.FRAME_TOO_LARGE, "too big", None)


def test_an_empty_field_path_is_sent_as_none() -> None:
    assert Error.from_exception(ProtocolError(ErrorCode.INTERNAL, "x", "")).field is None


def test_errors_survive_pickling() -> None:
    error = MessageError(ErrorCode.MISSING_FIELD, "needs it", "prompt")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is MessageError
    assert (copy.code, copy.message, copy.field) == (error.code, error.message, error.field)
