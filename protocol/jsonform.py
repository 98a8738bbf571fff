"""Messages as JSON data, for programs that read a run as lines of JSON.

:func:`to_json` turns a message (or any value inside one) into what :func:`json.dumps` takes:
a message becomes an object led by its ``type`` and holding its fields by their wire names,
binary data (previews, images) becomes base64 text, tuples become arrays; a field added to
version 1 later is left out at its default, as on the wire. ``stepwatch generate
--json`` and ``stepwatch sample --json`` print the same object for the same event.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Mapping

__all__ = ["to_json"]


def to_json(value: object) -> object:
    """``value`` as JSON data (see the module's docstring)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {
            item.name: to_json(getattr(value, item.name))
            for item in dataclasses.fields(value)
            if not (item.metadata.get("added") and getattr(value, item.name) == item.default)
        }
        kind = getattr(type(value), "TYPE", None)
        return fields if kind is None else {"type": kind, **fields}
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, Mapping):
        return {str(key): to_json(item) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return [to_json(item) for item in value]
    return value
