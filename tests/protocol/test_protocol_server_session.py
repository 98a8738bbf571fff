"""The server's side of a connection without sockets: hello first, and what closes it."""

from __future__ import annotations

import msgpack  # type: ignore[import-untyped]
from protocol_examples import RUN, TOKEN

from stepwatch.protocol import (
    ErrorCode,
    Hello,
    Ping,
    ProtocolError,
    ServerSession,
    ServerState,
    Set,
    Start,
    Stop,
    Subscribe,
    Unsubscribe,
    encode,
)
from stepwatch.protocol.server_session import CLOSE_GOING_AWAY, CLOSE_POLICY, request_ids


def test_hello_opens_the_session() -> None:
    session = ServerSession()
    assert session.state is ServerState.AWAITING_HELLO
    assert session.receive_frame(encode(Hello(client="tests/1"))) == Hello(client="tests/1")
    session.accept()
    assert session.state is ServerState.OPEN
    assert session.receive_frame(encode(Ping(3))) == Ping(3)


def test_any_other_first_frame_is_told_hello_comes_first_and_closes() -> None:
    session = ServerSession()
    error = session.receive_frame(encode(Ping(3)))
    assert not isinstance(error, Ping)
    assert error.code is ErrorCode.HELLO_REQUIRED and "not ping" in error.message
    assert session.state is ServerState.CLOSING
    assert (session.close_code, session.close_reason) == (CLOSE_POLICY, "hello_required")


def test_an_unreadable_first_frame_is_hello_required() -> None:
    session = ServerSession()
    error = session.receive_frame(b"\xc1")
    assert error.code is ErrorCode.HELLO_REQUIRED  # type: ignore[union-attr]
    assert session.state is ServerState.CLOSING


def test_a_malformed_hello_keeps_the_decoders_code_and_closes() -> None:
    session = ServerSession()
    error = session.receive_frame(msgpack.packb({"type": "hello", "v": 1}))
    assert error.code is ErrorCode.MISSING_FIELD and error.field == "client"  # type: ignore[union-attr]
    assert session.close_reason == "missing_field"


def test_an_unsupported_version_keeps_its_code() -> None:
    session = ServerSession()
    error = session.receive_frame(msgpack.packb({"type": "ping", "v": 9, "nonce": 1}))
    assert error.code is ErrorCode.UNSUPPORTED_VERSION  # type: ignore[union-attr]
    assert session.close_reason == "unsupported_version"


def test_once_open_a_bad_frame_is_answered_with_its_request_id_and_stays_open() -> None:
    session = ServerSession()
    session.accept()
    frame = msgpack.packb({"type": "start", "v": 1, "request_id": "q1", "promt": "x"})
    error = session.receive_frame(frame)
    assert error.code is ErrorCode.UNKNOWN_FIELD and error.request_id == "q1"  # type: ignore[union-attr]
    assert session.state is ServerState.OPEN


def test_a_second_hello_is_unexpected() -> None:
    session = ServerSession()
    session.accept()
    error = session.receive_frame(encode(Hello(client="tests/1")))
    assert error.code is ErrorCode.UNEXPECTED_MESSAGE  # type: ignore[union-attr]
    assert session.state is ServerState.OPEN


def test_a_frame_over_the_servers_limit_is_refused_unread() -> None:
    session = ServerSession(max_frame_bytes=16)
    session.accept()
    error = session.receive_frame(encode(Start(request_id="q1", prompt="red circle")))
    assert error.code is ErrorCode.FRAME_TOO_LARGE and error.request_id == "q1"  # type: ignore[union-attr]


def test_no_hello_in_time_and_a_bad_token_close() -> None:
    late = ServerSession()
    assert late.hello_timed_out().code is ErrorCode.HELLO_REQUIRED
    assert late.close_reason == "hello_required"
    refused = ServerSession()
    assert refused.refuse_token().code is ErrorCode.UNAUTHORIZED
    assert (refused.close_code, refused.close_reason) == (CLOSE_POLICY, "unauthorized")


def test_the_first_close_wins() -> None:
    session = ServerSession()
    session.accept()
    session.close(CLOSE_GOING_AWAY, "the server is shutting down")
    session.refuse_token()
    assert (session.close_code, session.close_reason) == (
        CLOSE_GOING_AWAY,
        "the server is shutting down",
    )


def test_an_error_about_a_request_carries_its_ids() -> None:
    session = ServerSession()
    stop = Stop(request_id="q2", run_id=RUN, token=TOKEN)
    error = session.refuse_request(stop, ProtocolError(ErrorCode.FORBIDDEN, "not yours"))
    assert (error.code, error.request_id, error.run_id) == (ErrorCode.FORBIDDEN, "q2", RUN)
    assert request_ids(Start(request_id="q1", prompt="x")) == ("q1", None)
    assert request_ids(Set(request_id="q3", run_id=RUN, token=TOKEN, cfg=2.0)) == ("q3", RUN)
    assert request_ids(Subscribe(RUN)) == (None, RUN)
    assert request_ids(Unsubscribe(RUN)) == (None, RUN)
    assert request_ids(Ping(1)) == (None, None)
    assert request_ids(Hello(client="tests/1")) == (None, None)
