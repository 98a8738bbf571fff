"""protocol/README.md specifies exactly what the code does: its tables are checked against the
schemas, the error codes and the limits, so the spec cannot drift from the implementation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stepwatch.protocol import CLIENT_MESSAGE_TYPES, SERVER_MESSAGE_TYPES, ErrorCode, limits
from stepwatch.protocol import server_messages as parts
from stepwatch.protocol.client_messages import ResumePoint
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

README = Path(__file__).parents[2] / "protocol" / "README.md"
PARTS = (
    ResumePoint,
    parts.ModelInfo,
    parts.VerifierInfo,
    parts.RunParameters,
    parts.Preview,
    parts.Image,
    parts.HistoryEntry,
    parts.SettingChange,
    parts.RunError,
    parts.SearchSettings,
    parts.SearchSettingChange,
    parts.CandidateScore,
    parts.CandidateResult,
    parts.SearchCompute,
)
SPECIAL_NUMBERS = {limits.MAX_INT: "2⁵³−1", limits.MAX_SECONDS: "10⁷"}


def number(value: float) -> str:
    if value in SPECIAL_NUMBERS:
        return SPECIAL_NUMBERS[value]
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def spelled(spec: Spec) -> str:
    """How the README writes a field's wire type."""
    match spec:
        case BoolSpec():
            return "bool"
        case IntSpec(bounds=b):
            return f"int {number(int(b.low))}–{number(int(b.high))}"
        case FloatSpec(bounds=None):
            return "float (finite)"
        case FloatSpec(bounds=b):
            return f"float {number(b.low)}–{number(b.high)}"
        case TextSpec(bounds=b):
            return f"str {b.low}–{b.high} chars"
        case BytesSpec(bounds=b):
            return f"bin {b.low}–{b.high} bytes"
        case ChoiceSpec(enum=None, choices=choices):
            return r" \| ".join(f'`"{choice}"`' for choice in choices)
        case ChoiceSpec():
            return "error code (str)"
        case OptionalSpec(inner=inner):
            return f"{spelled(inner)} or nil"
        case ListSpec(item=item, bounds=b):
            return f"array of {b.low}–{b.high} × {spelled(item)}"
        case MappingSpec(key=key, value=value, bounds=b):
            return f"map of {b.low}–{b.high} × {spelled(key)} → {spelled(value)}"
        case RecordSpec(cls=cls):
            return f"[`{cls.__name__}`](#{cls.__name__.lower()})"
    raise AssertionError(spec)


def spelled_default(default: object) -> str:
    if default is None:
        return "nil"
    if isinstance(default, bool):
        return str(default).lower()
    if default == ():
        return "[]"
    return f'"{default}"' if isinstance(default, str) else str(default)


def readme_tables() -> dict[str, list[list[str]]]:
    """The field tables under each ``###`` heading, by heading (backticks removed)."""
    tables: dict[str, list[list[str]]] = {}
    heading = ""
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            heading = ""
        elif line.startswith("### "):
            heading = line[4:].strip("` ")
        elif line.startswith("| `") and heading:
            cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
            tables.setdefault(heading, []).append(cells)
    return tables


def expected_rows(cls: type) -> list[list[str]]:
    spec = compile_record(cls)
    rows = []
    for field in spec.fields:
        default = "required" if field.required else spelled_default(_default(cls, field.name))
        rows.append([f"`{field.name}`", spelled(field.spec), default])
    return rows


def _default(cls: type, name: str) -> object:
    return cls.__dataclass_fields__[name].default  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("heading", "cls"),
    [(cls.TYPE, cls) for cls in (*CLIENT_MESSAGE_TYPES, *SERVER_MESSAGE_TYPES)]
    + [(cls.__name__, cls) for cls in PARTS],
)
def test_every_field_table_matches_its_schema(heading: str, cls: type) -> None:
    rows = readme_tables()[heading]
    assert [row[:3] for row in rows] == expected_rows(cls)
    assert all(row[3] for row in rows), "every field has a meaning"


def test_error_table_lists_every_code() -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Errors") : text.index("## Limits")]
    listed = re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE)
    assert listed == [code.value for code in ErrorCode]


def test_limits_table_lists_every_limit_with_its_value() -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Limits") : text.index("## Validation")]
    seen = {}
    for names, values in re.findall(r"^\| (`[A-Z_].*?) \| (.*?) \|", section, flags=re.MULTILINE):
        for name, value in zip(names.split(", "), values.split(", "), strict=True):
            seen[name.strip("`")] = value.split(" (")[0]
    constants = {name: getattr(limits, name) for name in dir(limits) if name.isupper()}
    assert seen == {name: number(value) for name, value in constants.items()}


def test_the_example_frames_are_exact() -> None:
    text = README.read_text(encoding="utf-8")
    hello = re.search(r"`(83 a4 74 79 70 65 a5 68 65 6c 6c 6f[0-9a-f ]*)`", text)
    assert hello is not None
    from stepwatch.protocol import Hello, decode_client

    assert decode_client(bytes.fromhex(hello.group(1))) == Hello(client="demo/1.0")
