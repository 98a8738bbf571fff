"""The schema compiler refuses message definitions the wire cannot carry or bound."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Literal

import msgpack
import pytest

from stepwatch.protocol.codec import _FROM_CLIENT, _FROM_SERVER
from stepwatch.protocol.schema import Length, Range, compile_record, describe

Word = Annotated[str, Length(1, 8)]


@dataclass(frozen=True)
class Unbounded:
    count: int


@dataclass(frozen=True)
class UnboundedText:
    name: str


@dataclass(frozen=True)
class UnboundedBinary:
    data: bytes


@dataclass(frozen=True)
class UnboundedList:
    names: tuple[Word, ...]


@dataclass(frozen=True)
class WrongBound:
    ratio: Annotated[float, Length(0, 1)]


@dataclass(frozen=True)
class FixedTuple:
    pair: Annotated[tuple[Word, Word], Length(2, 2)]


@dataclass(frozen=True)
class NumberKeys:
    table: Annotated[Mapping[Annotated[int, Range(0, 9)], Word], Length(0, 4)]


@dataclass(frozen=True)
class NumberLiteral:
    level: Literal[1, 2]


@dataclass(frozen=True)
class TwoTypes:
    value: Annotated[int, Range(0, 1)] | Word


@dataclass(frozen=True)
class ThreeTypes:
    value: Annotated[int, Range(0, 1)] | Word | None


@dataclass(frozen=True)
class Complex:
    value: complex


@dataclass(frozen=True)
class Nested:
    inner: Unbounded


class NotADataclass:
    pass


@pytest.mark.parametrize(
    ("cls", "complaint"),
    [
        (Unbounded, "needs an Annotated Range"),
        (UnboundedText, "needs an Annotated Length"),
        (UnboundedBinary, "needs an Annotated Length"),
        (UnboundedList, "needs an Annotated Length"),
        (WrongBound, "a float is bounded by Range"),
        (FixedTuple, "lists are tuple[X, ...]"),
        (NumberKeys, "map keys are bounded strings"),
        (NumberLiteral, "only string literals"),
        (TwoTypes, "X | None"),
        (ThreeTypes, "X | None"),
        (Complex, "cannot be carried"),
        (Nested, "Nested.inner: Unbounded.count"),
        (NotADataclass, "is not a dataclass"),
    ],
)
def test_definitions_the_wire_cannot_carry_are_refused(cls: type, complaint: str) -> None:
    with pytest.raises(TypeError, match=complaint.replace("[", r"\[").replace("|", r"\|")):
        compile_record(cls)


@dataclass(frozen=True)
class Bounded:
    ratio: float
    tag: Annotated[str, "a note for people", Length(0, 3)]


def test_floats_may_go_unbounded_and_other_annotations_are_ignored() -> None:
    spec = compile_record(Bounded)
    assert spec.read({"ratio": -1e300, "tag": "abc"}, "") == Bounded(-1e300, "abc")


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (None, "nil"),
        (True, "a boolean"),
        (3, "an integer"),
        (3.5, "a float"),
        ("abc", "a string of 3 characters"),
        (b"ab", "a binary of 2 bytes"),
        ([1], "an array of 1 items"),
        ((1, 2), "an array of 2 items"),
        ({}, "a map of 0 entries"),
        (msgpack.ExtType(1, b""), "a msgpack ExtType"),
    ],
)
def test_errors_describe_values_by_their_wire_type(value: object, words: str) -> None:
    assert describe(value) == words


def test_unpack_limits_follow_the_largest_legal_values() -> None:
    client, server = _FROM_CLIENT.unpack_limits, _FROM_SERVER.unpack_limits
    # Prompts are the longest client strings, four UTF-8 bytes a character at most.
    assert client["max_str_len"] == 4 * 4000
    # No client message carries binaries or long lists: the floor applies.
    assert client["max_bin_len"] == 64
    assert client["max_array_len"] == 64
    assert server["max_bin_len"] == 16 * 1024 * 1024
    assert server["max_array_len"] == 4096


@dataclass(frozen=True)
class WithAddedField:
    name: Word
    extra: Annotated[int, Range(0, 9)] = field(default=0, metadata={"added": True})


@dataclass(frozen=True)
class AddedWithoutDefault:
    extra: Annotated[int, Range(0, 9)] = field(metadata={"added": True})


def test_an_added_field_is_left_out_at_its_default_and_read_either_way() -> None:
    spec = compile_record(WithAddedField)
    assert spec.write(WithAddedField("a")) == {"name": "a"}
    assert spec.write(WithAddedField("a", 3)) == {"name": "a", "extra": 3}
    assert spec.read({"name": "a"}, "") == WithAddedField("a")
    assert spec.read({"name": "a", "extra": 3}, "") == WithAddedField("a", 3)


def test_an_added_field_needs_a_default() -> None:
    with pytest.raises(TypeError, match="an added field needs a default"):
        compile_record(AddedWithoutDefault)
