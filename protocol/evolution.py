"""How version 1 grows without breaking the peers written before it grew.

A field added to version 1 after its first release is marked ``metadata={"added": True}`` and
has a default; the codec leaves it out while it holds that default (:mod:`.schema`). That keeps
a field that is only set when a request asks for it (``start.preview_decoder``) away from peers
that never ask. A field the server always fills (``welcome.models[].preview_decoders``) needs
more: a client says in ``hello.features`` which added fields it reads, by name, and the server
answers with :func:`for_peer`, which puts every other added field back to its default, so the
codec leaves it out. A client written before ``features`` existed names none and gets the
``welcome`` of the first release. Run events go the same way (:func:`visible_to`): the server
sends each watcher its events as its ``features`` read them.

:data:`ADDED_SERVER_FIELDS` names every added field of the server's messages: what a client of
this version reads, and sends as its ``features``.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Collection, Iterable
from typing import Any, Final, TypeVar

from .errors import MessageError
from .messages import SERVER_MESSAGE_TYPES

__all__ = ["ADDED_SERVER_FIELDS", "added_in_use", "for_peer", "visible_to"]

M = TypeVar("M")


def _added_fields(classes: Iterable[type[Any]]) -> frozenset[str]:
    names: set[str] = set()
    pending = list(classes)  # message records nest without cycles
    while pending:
        cls = pending.pop()
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            if field.metadata.get("added"):
                names.add(field.name)
            pending.extend(_dataclasses_in(hints[field.name]))
    return frozenset(names)


def _dataclasses_in(hint: Any) -> list[type[Any]]:
    found = [hint] if isinstance(hint, type) and dataclasses.is_dataclass(hint) else []
    for argument in typing.get_args(hint):
        found.extend(_dataclasses_in(argument))
    return found


#: Every added field of a message the server sends, by name.
ADDED_SERVER_FIELDS: Final = _added_fields(SERVER_MESSAGE_TYPES)


def for_peer(message: M, known: Collection[str]) -> M:
    """``message`` with every added field not named in ``known`` back at its default, in it
    and in the records it holds."""
    if not dataclasses.is_dataclass(message) or isinstance(message, type):
        return message
    changes: dict[str, Any] = {}
    for field in dataclasses.fields(message):
        value = getattr(message, field.name)
        if field.metadata.get("added") and field.name not in known:
            if value != field.default:
                changes[field.name] = field.default
            continue
        kept = _for_peer_value(value, known)
        if kept is not value:
            changes[field.name] = kept
    return dataclasses.replace(message, **changes) if changes else message


def added_in_use(message: object) -> frozenset[str]:
    """The added fields that hold other than their default in ``message`` and the records it
    holds: a peer whose ``features`` name them all gets ``message`` as it is."""
    names: set[str] = set()
    pending = [message]
    while pending:
        value = pending.pop()
        if isinstance(value, tuple):
            pending.extend(value)
            continue
        if not dataclasses.is_dataclass(value) or isinstance(value, type):
            continue
        for field in dataclasses.fields(value):
            item = getattr(value, field.name)
            if field.metadata.get("added") and item != field.default:
                names.add(field.name)
            pending.append(item)
    return frozenset(names)


def visible_to(message: M, known: Collection[str]) -> M | None:
    """``message`` as :func:`for_peer` leaves it for a peer that reads ``known``, or ``None``
    when nothing it would accept is left: an ``applied`` that acknowledges only what the
    peer cannot read (a search setting, one candidate's stop) is not sent to it at all."""
    try:
        return for_peer(message, known)
    except MessageError:
        return None


def _for_peer_value(value: Any, known: Collection[str]) -> Any:
    if isinstance(value, tuple):
        items = tuple(for_peer(item, known) for item in value)
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    return for_peer(value, known)
