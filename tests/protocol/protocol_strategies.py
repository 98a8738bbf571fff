"""Hypothesis strategies for every message type, and for arbitrary msgpack values.

Valid messages come from each type's compiled schema, so every field is drawn within its
declared bounds; the three messages with rules across fields get strategies that respect them.
Lengths are drawn short (the boundaries have their own tests) to keep examples fast.
"""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import strategies as st

from stepwatch.protocol import (
    CLIENT_MESSAGE_TYPES,
    SERVER_MESSAGE_TYPES,
    Applied,
    Finished,
    Message,
    Set,
    Stop,
)
from stepwatch.protocol.schema import (
    BoolSpec,
    BytesSpec,
    ChoiceSpec,
    FloatSpec,
    IntSpec,
    ListSpec,
    MappingSpec,
    OptionalSpec,
    RecordSpec,
    Spec,
    TextSpec,
    compile_record,
)

SHORT = 12


def for_spec(spec: Spec) -> st.SearchStrategy[Any]:
    """Values that ``spec`` accepts."""
    match spec:
        case BoolSpec():
            return st.booleans()
        case IntSpec(bounds=bounds):
            return st.integers(int(bounds.low), int(bounds.high))
        case FloatSpec(bounds=None):
            return st.floats(allow_nan=False, allow_infinity=False)
        case FloatSpec(bounds=bounds):
            return st.floats(bounds.low, bounds.high)
        case TextSpec(bounds=bounds):
            return st.text(min_size=bounds.low, max_size=max(bounds.low, min(bounds.high, SHORT)))
        case BytesSpec(bounds=bounds):
            return st.binary(min_size=bounds.low, max_size=min(bounds.high, 64))
        case ChoiceSpec(choices=choices, enum=None):
            return st.sampled_from(choices)
        case ChoiceSpec(enum=enum):
            return st.sampled_from(list(enum))
        case OptionalSpec(inner=inner):
            return st.none() | for_spec(inner)
        case ListSpec(item=item, bounds=bounds):
            size = min(bounds.high, max(bounds.low, 3))
            return st.lists(for_spec(item), min_size=bounds.low, max_size=size).map(tuple)
        case MappingSpec(key=key, value=value, bounds=bounds):
            size = min(bounds.high, 3)
            return st.dictionaries(for_spec(key), for_spec(value), max_size=size)
        case RecordSpec():
            return record(spec)
    raise AssertionError(f"no strategy for {spec!r}")


def record(spec: RecordSpec, **fixed: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Instances of a record; ``fixed`` replaces the strategies of some fields."""
    fields = {
        field.name: fixed[field.name] if field.name in fixed else for_spec(field.spec)
        for field in spec.fields
    }
    return st.fixed_dictionaries(fields).map(lambda arguments: spec.cls(**arguments))


def _set() -> st.SearchStrategy[Any]:
    spec = compile_record(Set)
    change = {field.name: for_spec(field.spec) for field in spec.fields[3:]}
    # Draw one setting that is surely given, the others may be None.
    return st.sampled_from(sorted(change)).flatmap(
        lambda given: record(spec, **{given: change[given].filter(lambda v: v is not None)})
    )


def _applied() -> st.SearchStrategy[Any]:
    spec = compile_record(Applied)
    by_name = {field.name: field.spec for field in spec.fields}
    changes = for_spec(by_name["changes"]).filter(bool)
    searched = for_spec(by_name["search_changes"]).filter(bool)
    stop = st.sampled_from(["finish", "abort"])
    candidate = st.integers(0, 63)
    neither = {"stop": st.none(), "candidate_stopped": st.none(), "candidate_kept": st.none()}
    nothing = {**neither, "changes": st.just(()), "search_changes": st.just(())}
    return (
        record(spec, **{**neither, "changes": changes})
        | record(spec, **{**neither, "search_changes": searched})
        | record(spec, **{**nothing, "stop": stop})
        | record(spec, **{**nothing, "candidate_stopped": candidate})
        | record(spec, **{**nothing, "candidate_kept": candidate})
    )


def _stop() -> st.SearchStrategy[Any]:
    spec = compile_record(Stop)
    return record(spec, candidate=st.none()) | record(spec, keep=st.none())


def _finished() -> st.SearchStrategy[Any]:
    spec = compile_record(Finished)
    by_name = {field.name: field.spec for field in spec.fields}
    error = for_spec(by_name["error"]).filter(lambda value: value is not None)
    reasons = st.sampled_from(["completed", "early_stop", "stopped", "abandoned", "shutdown"])
    return record(spec, reason=st.just("failed"), error=error) | record(
        spec, reason=reasons, error=st.none()
    )


SPECIAL = {Set: _set, Stop: _stop, Applied: _applied, Finished: _finished}


def message_of(cls: type[Any]) -> st.SearchStrategy[Message]:
    """Valid messages of one type."""
    special = SPECIAL.get(cls)
    return special() if special is not None else record(compile_record(cls))


client_messages = st.one_of([message_of(cls) for cls in CLIENT_MESSAGE_TYPES])
server_messages = st.one_of([message_of(cls) for cls in SERVER_MESSAGE_TYPES])
messages = client_messages | server_messages

#: Anything msgpack can carry, including what no message allows (ext types, huge integers,
#: non-finite floats, non-string keys).
msgpack_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=SHORT)
    | st.binary(max_size=SHORT)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8))
    | st.builds(msgpack.Timestamp, st.integers(0, 2**34 - 1), st.integers(0, 999_999_999))
)
msgpack_values = st.recursive(
    msgpack_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers(-5, 5), inner, max_size=4)
    ),
    max_leaves=10,
)
