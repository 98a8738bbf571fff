"""Whatever bytes arrive, the decoders answer with a message or a coded ProtocolError.

Each hypothesis example draws a valid message and some arbitrary msgpack values, then mutates
the message's frame many ways (bit flips, truncation, byte edits, random bytes, fields removed,
added or given values of the wrong type, deep nesting, foreign versions and types) and feeds
every mutant to both decoders. The run is derandomized, so CI sees the same frames each time.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protocol_strategies import messages, msgpack_values

from stepwatch.protocol import (
    CLIENT_MESSAGE_TYPES,
    SERVER_MESSAGE_TYPES,
    Error,
    ErrorCode,
    Message,
    ProtocolError,
    decode_client,
    decode_server,
    encode,
)

EXAMPLES = 300
MINIMUM_FRAMES = 10_000
DECODER_CODES = {
    "malformed_frame",
    "invalid_message",
    "unknown_type",
    "unknown_field",
    "missing_field",
    "invalid_value",
    "unsupported_version",
}
TYPE_NAMES = [cls.TYPE for cls in (*CLIENT_MESSAGE_TYPES, *SERVER_MESSAGE_TYPES)]


def flip_bits(frame: bytes, rnd: random.Random) -> bytes:
    data = bytearray(frame)
    for _ in range(rnd.randint(1, 4)):
        data[rnd.randrange(len(data))] ^= 1 << rnd.randrange(8)
    return bytes(data)


def edit_bytes(frame: bytes, rnd: random.Random) -> bytes:
    at = rnd.randrange(len(frame))
    match rnd.randrange(3):
        case 0:
            return frame[:at] + frame[at + 1 :]
        case 1:
            return frame[:at] + bytes([rnd.randrange(256)]) + frame[at:]
        case _:
            return frame[:at] + bytes([rnd.randrange(256)]) + frame[at + 1 :]


def containers(value: Any) -> Iterator[dict[Any, Any] | list[Any]]:
    """Every map and array inside ``value``, itself included."""
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from containers(item)
    elif isinstance(value, list):
        yield value
        for item in value:
            yield from containers(item)


def mutate_structure(frame: bytes, rnd: random.Random, junk: Any) -> bytes:
    """Unpack the frame, break one thing in a random map or array, pack it again."""
    tree = msgpack.unpackb(frame, raw=False)
    target = rnd.choice(list(containers(tree)))
    keys: list[Any] = list(target) if isinstance(target, dict) else list(range(len(target)))
    action = rnd.randrange(6)
    if action == 0 and keys:  # remove a field or item
        del target[rnd.choice(keys)]
    elif action == 1 and isinstance(target, dict):  # add a field
        target[rnd.choice(["extra", "type", "v", *map(str, keys)]) + "x"] = junk
    elif action == 2 and keys:  # retype a field or item
        target[rnd.choice(keys)] = junk
    elif action == 3:  # foreign version
        tree["v"] = rnd.choice([0, 2, -1, 1.0, True, "1", None, junk])
    elif action == 4:  # another side's or an unknown type
        tree["type"] = rnd.choice([*TYPE_NAMES, "", "HELLO", junk])
    else:  # nest deeply
        nested = junk
        for _ in range(rnd.choice([3, 9, 200])):
            nested = [nested]
        if keys:
            target[rnd.choice(keys)] = nested
    return msgpack.packb(tree)


def mutants(frame: bytes, rnd: random.Random, junk: Any) -> Iterator[bytes]:
    """36 broken variants of ``frame``."""
    for _ in range(10):
        yield flip_bits(frame, rnd)
    for _ in range(4):
        yield frame[: rnd.randrange(len(frame))]
    for _ in range(6):
        yield edit_bytes(frame, rnd)
    yield frame + msgpack.packb(junk)
    yield rnd.randbytes(rnd.randrange(64))
    yield msgpack.packb(junk)
    yield msgpack.packb({"type": rnd.choice(TYPE_NAMES), "v": 1, "junk": junk})
    for _ in range(12):
        yield mutate_structure(frame, rnd, junk)


def check_decoder(decode: Callable[[bytes], Message], frame: bytes) -> str:
    """Decode ``frame``; return the error code, or ``"ok"``."""
    try:
        message = decode(frame)
    except ProtocolError as exc:
        assert isinstance(exc.code, ErrorCode)
        # Whatever the decoder says must itself be sendable back to the peer.
        encode(Error.from_exception(exc, request_id="r", run_id="r"))
        return exc.code.value
    assert decode(encode(message)) == message
    return "ok"


def test_decoders_raise_only_protocol_errors() -> None:
    outcomes: Counter[str] = Counter()
    frames = 0

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(messages, msgpack_values, st.randoms(use_true_random=False))
    def fuzz(message: Message, junk: Any, rnd: random.Random) -> None:
        nonlocal frames
        for frame in mutants(encode(message), rnd, junk):
            outcomes[check_decoder(decode_client, frame)] += 1
            outcomes[check_decoder(decode_server, frame)] += 1
            frames += 1

    fuzz()
    assert frames >= MINIMUM_FRAMES
    # The mutants reach every stage of the decoder, not just the msgpack parser.
    assert set(outcomes) >= {"ok", *DECODER_CODES}, outcomes
