"""Field schemas derived from the message dataclasses: how each field is checked and written.

A message's type hints are its schema. Plain hints give the wire type (``int``, ``float``,
``bool``, ``str``, ``bytes``, ``Literal[...]``, a :class:`~enum.StrEnum`, ``X | None``,
``tuple[X, ...]``, ``Mapping[str, X]``, a nested dataclass) and ``Annotated`` markers give the
bounds: :class:`Range` for numbers, :class:`Length` for strings, binaries, lists and maps. Every
integer, string, binary, list and map must carry its bound, so nothing on the wire is unbounded;
:func:`compile_record` refuses a dataclass that forgets one.

:func:`compile_record` turns a dataclass into a :class:`RecordSpec` once, at import; its
:meth:`~RecordSpec.read` checks a decoded msgpack value and builds the dataclass, its
:meth:`~RecordSpec.write` turns the dataclass back into plain msgpack values.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Final, Literal, Protocol, TypeAlias, TypeVar

from .errors import ErrorCode, MessageError

__all__ = [
    "ADDED",
    "Length",
    "Range",
    "RecordSpec",
    "compile_record",
    "describe",
    "unpack_limits",
]

#: The metadata of a field added to version 1 after its first release: the writer leaves it
#: out while it holds its default (see :class:`FieldSpec`).
ADDED: Final[Mapping[str, bool]] = {"added": True}


@dataclass(frozen=True, slots=True)
class Range:
    """Inclusive bounds of a number field."""

    low: float
    high: float


@dataclass(frozen=True, slots=True)
class Length:
    """Inclusive bounds on the length of a string (characters), binary (bytes), list or map."""

    low: int
    high: int


#: The Python types of a msgpack array: tuples when decoded, lists when written.
_ARRAYS = (list, tuple)


def describe(value: object) -> str:
    """Name a received value's wire type for an error message, without echoing its content."""
    match value:
        case None:
            return "nil"
        case bool():
            return "a boolean"
        case int():
            return "an integer"
        case float():
            return "a float"
        case str():
            return f"a string of {len(value)} characters"
        case bytes():
            return f"a binary of {len(value)} bytes"
        # Exact types: msgpack's ExtType is a named tuple, but no array.
        case list() | tuple() if type(value) in _ARRAYS:
            return f"an array of {len(value)} items"
        case dict():
            return f"a map of {len(value)} entries"
        case _:
            return f"a msgpack {type(value).__name__}"


def _invalid(path: str, expected: str, value: object) -> MessageError:
    return MessageError(
        ErrorCode.INVALID_VALUE, f"expected {expected}, got {describe(value)}", path
    )


def _join(path: str, key: object) -> str:
    name = key if isinstance(key, str) else repr(key)
    return f"{path}.{name}" if path else name


class Spec(Protocol):
    """How one field is checked when read and turned into msgpack values when written."""

    def read(self, value: object, path: str) -> object:
        """Check a decoded msgpack value and return the Python value; raise MessageError."""

    def write(self, value: object) -> object:
        """Turn a Python value into plain msgpack values."""


@dataclass(frozen=True, slots=True)
class Plain:
    """Shared ``write`` of the specs whose Python and wire values are the same."""

    def write(self, value: object) -> object:
        return value


@dataclass(frozen=True, slots=True)
class BoolSpec(Plain):
    def read(self, value: object, path: str) -> object:
        if not isinstance(value, bool):
            raise _invalid(path, "a boolean", value)
        return value


@dataclass(frozen=True, slots=True)
class IntSpec(Plain):
    bounds: Range

    def read(self, value: object, path: str) -> object:
        # bool is an int subclass in Python but a distinct type on the wire.
        if not isinstance(value, int) or isinstance(value, bool):
            raise _invalid(path, "an integer", value)
        if not self.bounds.low <= value <= self.bounds.high:
            raise _out_of_range(path, value, self.bounds)
        return value


@dataclass(frozen=True, slots=True)
class FloatSpec(Plain):
    bounds: Range | None

    def read(self, value: object, path: str) -> object:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _invalid(path, "a number", value)
        number = float(value)
        if not math.isfinite(number):
            raise MessageError(ErrorCode.INVALID_VALUE, "numbers must be finite", path)
        if self.bounds is not None and not self.bounds.low <= number <= self.bounds.high:
            raise _out_of_range(path, number, self.bounds)
        return number


def _out_of_range(path: str, value: float, bounds: Range) -> MessageError:
    message = f"{value!r} is outside [{bounds.low!r}, {bounds.high!r}]"
    return MessageError(ErrorCode.INVALID_VALUE, message, path)


def _check_length(path: str, size: int, bounds: Length, unit: str) -> None:
    if not bounds.low <= size <= bounds.high:
        message = f"length {size} {unit} is outside [{bounds.low}, {bounds.high}]"
        raise MessageError(ErrorCode.INVALID_VALUE, message, path)


@dataclass(frozen=True, slots=True)
class TextSpec(Plain):
    bounds: Length

    def read(self, value: object, path: str) -> object:
        if not isinstance(value, str):
            raise _invalid(path, "a string", value)
        _check_length(path, len(value), self.bounds, "characters")
        return value


@dataclass(frozen=True, slots=True)
class BytesSpec(Plain):
    bounds: Length

    def read(self, value: object, path: str) -> object:
        if not isinstance(value, bytes):
            raise _invalid(path, "a binary", value)
        _check_length(path, len(value), self.bounds, "bytes")
        return value


@dataclass(frozen=True, slots=True)
class ChoiceSpec:
    """A string from a fixed set: a ``Literal`` of strings or a :class:`~enum.StrEnum`."""

    choices: tuple[str, ...]
    enum: type[StrEnum] | None

    def read(self, value: object, path: str) -> object:
        if not isinstance(value, str):
            raise _invalid(path, "a string", value)
        if value not in self.choices:
            shown = value if len(value) <= 40 else value[:40] + "…"
            message = f"{shown!r} is not one of {', '.join(self.choices)}"
            raise MessageError(ErrorCode.INVALID_VALUE, message, path)
        return value if self.enum is None else self.enum(value)

    def write(self, value: object) -> object:
        return str(value)


@dataclass(frozen=True, slots=True)
class OptionalSpec:
    inner: Spec

    def read(self, value: object, path: str) -> object:
        return None if value is None else self.inner.read(value, path)

    def write(self, value: object) -> object:
        return None if value is None else self.inner.write(value)


@dataclass(frozen=True, slots=True)
class ListSpec:
    """A msgpack array, read into a tuple."""

    item: Spec
    bounds: Length

    def read(self, value: object, path: str) -> object:
        if type(value) not in _ARRAYS:
            raise _invalid(path, "an array", value)
        assert isinstance(value, list | tuple)
        _check_length(path, len(value), self.bounds, "items")
        return tuple(self.item.read(item, f"{path}[{index}]") for index, item in enumerate(value))

    def write(self, value: object) -> object:
        assert isinstance(value, tuple | list)
        return [self.item.write(item) for item in value]


@dataclass(frozen=True, slots=True)
class MappingSpec:
    """A msgpack map with string keys, read into a dict."""

    key: TextSpec
    value: Spec
    bounds: Length

    def read(self, value: object, path: str) -> object:
        if not isinstance(value, dict):
            raise _invalid(path, "a map", value)
        _check_length(path, len(value), self.bounds, "entries")
        result: dict[str, object] = {}
        for key, item in value.items():
            self.key.read(key, f"{path} key")
            result[key] = self.value.read(item, _join(path, key))
        return result

    def write(self, value: object) -> object:
        assert isinstance(value, Mapping)
        return {key: self.value.write(item) for key, item in value.items()}


@dataclass(frozen=True, slots=True)
class FieldSpec:
    name: str
    spec: Spec
    required: bool
    #: A field added to version 1 after its first release: the writer leaves it out while it
    #: holds its default, so that a peer that predates it never sees it (it would refuse the
    #: unknown key). Marked with ``metadata={"added": True}``.
    added: bool = False
    default: object = None


@dataclass(frozen=True, slots=True)
class RecordSpec:
    """A dataclass carried as a msgpack map of its fields, by name."""

    cls: type[Any]
    fields: tuple[FieldSpec, ...]

    def read(self, value: object, path: str) -> object:
        if not isinstance(value, dict):
            raise _invalid(path, "a map", value)
        names = {field.name for field in self.fields}
        for key in value:
            if key not in names:
                message = f"{self.cls.__name__} has no field {_join('', key)}"
                raise MessageError(ErrorCode.UNKNOWN_FIELD, message, _join(path, key))
        arguments: dict[str, object] = {}
        for field in self.fields:
            where = _join(path, field.name)
            if field.name in value:
                arguments[field.name] = field.spec.read(value[field.name], where)
            elif field.required:
                message = f"{self.cls.__name__} requires {field.name}"
                raise MessageError(ErrorCode.MISSING_FIELD, message, where)
        return self.cls(**arguments)

    def write(self, value: object) -> dict[str, object]:
        written: dict[str, object] = {}
        for field in self.fields:
            item = getattr(value, field.name)
            if field.added and item == field.default:
                continue
            written[field.name] = field.spec.write(item)
        return written


Hint: TypeAlias = Any
_Bound = TypeVar("_Bound", Range, Length)
_ORIGINS_OF_UNION = (typing.Union, types.UnionType)


def compile_record(cls: type[Any]) -> RecordSpec:
    """Derive the schema of a dataclass from its type hints and ``Annotated`` bounds.

    Call this once per message type at import. Raises :class:`TypeError` for a hint the wire
    format cannot carry or a field that lacks its bound: that is a bug in the message module.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = []
    for field in dataclasses.fields(cls):
        no_default = field.default is dataclasses.MISSING
        # A field with a default may still be required on the wire: the stamped fields of
        # run events, which have an empty default only until the service stamps them.
        required = no_default and field.default_factory is dataclasses.MISSING
        required = required or bool(field.metadata.get("wire_required"))
        try:
            spec = _compile(hints[field.name])
        except TypeError as exc:
            raise TypeError(f"{cls.__name__}.{field.name}: {exc}") from exc
        added = bool(field.metadata.get("added"))
        if added and field.default is dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{field.name}: an added field needs a default")
        fields.append(FieldSpec(field.name, spec, required, added, field.default))
    return RecordSpec(cls, tuple(fields))


def _compile(hint: Hint) -> Spec:
    bound: Range | Length | None = None
    origin: object = typing.get_origin(hint)
    if origin is Annotated:
        hint, *markers = typing.get_args(hint)
        bound = next((m for m in markers if isinstance(m, Range | Length)), None)
        origin = typing.get_origin(hint)
    arguments = typing.get_args(hint)
    if origin in _ORIGINS_OF_UNION:
        return _compile_optional(arguments)
    if origin is Literal:
        if not all(isinstance(choice, str) for choice in arguments):
            raise TypeError("only string literals are supported")
        return ChoiceSpec(arguments, None)
    if origin is tuple:
        if len(arguments) != 2 or arguments[1] is not Ellipsis:
            raise TypeError("lists are tuple[X, ...]")
        return ListSpec(_compile(arguments[0]), _need(bound, Length, hint))
    if origin is Mapping:
        key = _compile(arguments[0])
        if not isinstance(key, TextSpec):
            raise TypeError("map keys are bounded strings")
        return MappingSpec(key, _compile(arguments[1]), _need(bound, Length, hint))
    return _compile_simple(hint, bound)


def _compile_optional(arguments: tuple[Hint, ...]) -> Spec:
    others = [argument for argument in arguments if argument is not type(None)]
    if len(others) != 1 or len(arguments) != 2:
        raise TypeError("the only union supported is X | None")
    return OptionalSpec(_compile(others[0]))


def _compile_simple(hint: Hint, bound: Range | Length | None) -> Spec:
    if hint is bool:
        return BoolSpec()
    if hint is int:
        return IntSpec(_need(bound, Range, hint))
    if hint is float:
        if bound is not None and not isinstance(bound, Range):
            raise TypeError("a float is bounded by Range")
        return FloatSpec(bound)
    if hint is str:
        return TextSpec(_need(bound, Length, hint))
    if hint is bytes:
        return BytesSpec(_need(bound, Length, hint))
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        return ChoiceSpec(tuple(member.value for member in hint), hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return compile_record(hint)
    raise TypeError(f"{hint!r} cannot be carried on the wire")


def _need(bound: Range | Length | None, kind: type[_Bound], hint: Hint) -> _Bound:
    if not isinstance(bound, kind):
        raise TypeError(f"{hint!r} needs an Annotated {kind.__name__}")
    return bound


def unpack_limits(
    records: Iterable[RecordSpec], envelope: Mapping[str, int], floor: int
) -> dict[str, int]:
    """The largest string, binary, array and map any of ``records`` may hold, as the keyword
    arguments of :func:`msgpack.unpackb` (``max_str_len`` and so on), and never below ``floor``.

    ``envelope`` maps the top-level keys every frame adds (``type``, ``v``) to the longest
    string each may hold; they count towards the longest string and the largest top-level map.
    The floor lets a short value of a kind no field has (a binary in a client frame) reach the
    schema, which names the field it is in.
    """
    most = dict.fromkeys(("max_str_len", "max_bin_len", "max_array_len", "max_map_len"), floor)
    for record in records:
        most["max_map_len"] = max(most["max_map_len"], len(record.fields) + len(envelope))
        _widen(most, record)
    most["max_str_len"] = max(most["max_str_len"], *map(len, envelope), *envelope.values())
    return most


def _widen(most: dict[str, int], spec: Spec) -> None:
    def grow(key: str, size: int) -> None:
        most[key] = max(most[key], size)

    match spec:
        case TextSpec(bounds=bounds):
            # A character takes up to four bytes in UTF-8; msgpack counts bytes.
            grow("max_str_len", 4 * bounds.high)
        case BytesSpec(bounds=bounds):
            grow("max_bin_len", bounds.high)
        case ChoiceSpec(choices=choices):
            grow("max_str_len", max(map(len, choices)))
        case OptionalSpec(inner=inner):
            _widen(most, inner)
        case ListSpec(item=item, bounds=bounds):
            grow("max_array_len", bounds.high)
            _widen(most, item)
        case MappingSpec(key=key, value=value, bounds=bounds):
            grow("max_map_len", bounds.high)
            _widen(most, key)
            _widen(most, value)
        case RecordSpec(fields=fields):
            grow("max_map_len", len(fields))
            for field in fields:
                grow("max_str_len", len(field.name))
                _widen(most, field.spec)
