"""Every message survives encode → decode unchanged, and frames look as the spec says."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
from hypothesis import given, settings
from protocol_examples import CLIENT_EXAMPLES, SERVER_EXAMPLES
from protocol_strategies import client_messages, server_messages

from stepwatch.protocol import (
    CLIENT_MESSAGE_TYPES,
    PROTOCOL_VERSION,
    RUN_EVENT_TYPES,
    SERVER_MESSAGE_TYPES,
    SUBPROTOCOL,
    ClientMessage,
    ErrorCode,
    Hello,
    Message,
    Ping,
    Progress,
    ProtocolError,
    ServerMessage,
    decode_client,
    decode_server,
    encode,
    stamp,
)


def test_examples_cover_every_message_type() -> None:
    assert {type(m) for m in CLIENT_EXAMPLES} == set(CLIENT_MESSAGE_TYPES)
    assert {type(m) for m in SERVER_EXAMPLES} == set(SERVER_MESSAGE_TYPES)


def test_type_names_are_unique_across_both_directions() -> None:
    names = [cls.TYPE for cls in (*CLIENT_MESSAGE_TYPES, *SERVER_MESSAGE_TYPES)]
    assert len(names) == len(set(names)) == 7 + 12


@pytest.mark.parametrize("message", CLIENT_EXAMPLES, ids=lambda m: type(m).__name__)
def test_client_example_round_trips(message: ClientMessage) -> None:
    decoded = decode_client(encode(message))
    assert type(decoded) is type(message)
    assert decoded == message


@pytest.mark.parametrize("message", SERVER_EXAMPLES, ids=lambda m: type(m).__name__)
def test_server_example_round_trips(message: ServerMessage) -> None:
    decoded = decode_server(encode(message))
    assert type(decoded) is type(message)
    assert decoded == message


@pytest.mark.parametrize("message", CLIENT_EXAMPLES + SERVER_EXAMPLES, ids=lambda m: m.TYPE)
def test_frame_is_one_map_with_type_version_and_every_field(message: Message) -> None:
    frame = msgpack.unpackb(encode(message), raw=False)
    assert frame.pop("type") == message.TYPE
    assert frame.pop("v") == PROTOCOL_VERSION
    # A field added to version 1 later is left out while it holds its default.
    assert list(frame) == [
        field.name
        for field in dataclasses.fields(message)
        if not (field.metadata.get("added") and getattr(message, field.name) == field.default)
    ]


def test_run_events_carry_run_id_and_seq() -> None:
    for cls in RUN_EVENT_TYPES:
        assert [field.name for field in dataclasses.fields(cls)][:2] == ["run_id", "seq"]


def test_the_readme_example_frame_is_exact() -> None:
    # The bytes protocol/README.md shows; a third party checks their encoder against them.
    frame = bytes.fromhex("83a474797065a470696e67a17601a56e6f6e63652a")
    assert encode(Ping(nonce=42)) == frame
    assert decode_client(frame) == Ping(nonce=42)


def test_left_out_fields_take_their_defaults() -> None:
    frame = msgpack.packb({"type": "hello", "v": 1, "client": "c"})
    assert decode_client(frame) == Hello(client="c", token=None, resume=())


def test_integers_are_accepted_where_floats_go() -> None:
    frame = msgpack.packb(
        {"type": "progress", "v": 1, "run_id": "r", "seq": 1, "step": 1, "total": 2}
        | {"elapsed": 3, "eta": 0}
    )
    decoded = decode_server(frame)
    assert decoded == Progress(1, 2, 3.0, 0.0, run_id="r", seq=1)
    assert isinstance(decoded, Progress) and isinstance(decoded.elapsed, float)


def test_subprotocol_names_the_version() -> None:
    assert SUBPROTOCOL == f"stepwatch.v{PROTOCOL_VERSION}" == "stepwatch.v1"


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(client_messages)
def test_any_client_message_round_trips(message: ClientMessage) -> None:
    assert decode_client(encode(message)) == message


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(server_messages)
def test_any_server_message_round_trips(message: ServerMessage) -> None:
    assert decode_server(encode(message)) == message


def test_an_unstamped_run_event_never_reaches_the_wire() -> None:
    progress = Progress(1, 2, 0.5, None)
    with pytest.raises(ProtocolError) as refused:
        encode(progress)
    assert refused.value.code is ErrorCode.INVALID_VALUE and refused.value.field == "run_id"
    stamped = stamp(progress, "r", 7)
    assert decode_server(encode(stamped)) == stamped and (stamped.run_id, stamped.seq) == ("r", 7)


def test_the_stamped_fields_are_required_on_the_wire() -> None:
    frame = msgpack.packb(
        {"type": "progress", "v": 1, "seq": 1, "step": 1, "total": 2, "elapsed": 0.0, "eta": None}
    )
    with pytest.raises(ProtocolError) as refused:
        decode_server(frame)
    assert refused.value.code is ErrorCode.MISSING_FIELD and refused.value.field == "run_id"
