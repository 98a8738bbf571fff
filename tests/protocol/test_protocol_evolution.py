"""Fields added to version 1 reach only the peers that read them (protocol.evolution)."""

from __future__ import annotations

import dataclasses

import msgpack
from protocol_examples import SERVER_EXAMPLES

from stepwatch.protocol import (
    ADDED_SERVER_FIELDS,
    Hello,
    Pong,
    Welcome,
    decode_client,
    decode_server,
    encode,
    for_peer,
)


def welcome_with_decoders() -> Welcome:
    welcome = next(m for m in SERVER_EXAMPLES if isinstance(m, Welcome) and m.models)
    models = tuple(
        dataclasses.replace(model, preview_decoders=("linear", "vae")) for model in welcome.models
    )
    return dataclasses.replace(welcome, models=models)


def test_the_added_server_fields_are_named() -> None:
    assert {"preview_decoders", "preview_decoder"} <= ADDED_SERVER_FIELDS
    assert "models" not in ADDED_SERVER_FIELDS and "features" not in ADDED_SERVER_FIELDS


def test_a_client_that_names_no_features_gets_the_first_releases_welcome() -> None:
    welcome = welcome_with_decoders()
    older = msgpack.unpackb(encode(for_peer(welcome, ())))
    assert all("preview_decoders" not in model for model in older["models"])
    newer = msgpack.unpackb(encode(for_peer(welcome, ADDED_SERVER_FIELDS)))
    assert all(model["preview_decoders"] == ["linear", "vae"] for model in newer["models"])
    assert decode_server(encode(for_peer(welcome, ADDED_SERVER_FIELDS))) == welcome


def test_what_has_nothing_to_leave_out_comes_back_as_it_is() -> None:
    welcome = welcome_with_decoders()
    kept = for_peer(welcome, ADDED_SERVER_FIELDS)
    assert kept is welcome
    pong = Pong(3)
    assert for_peer(pong, ()) is pong
    assert for_peer("not a message", ()) == "not a message"
    plain = for_peer(welcome, ())
    assert for_peer(plain, ()) is plain


def test_hello_carries_the_features_a_client_reads() -> None:
    hello = Hello("demo/1", features=("preview_decoders",))
    assert decode_client(encode(hello)) == hello
    assert "features" not in msgpack.unpackb(encode(Hello("old/1")))
