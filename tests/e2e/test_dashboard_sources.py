"""The dashboard's sources against the protocol and the packaging (no browser needed)."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from stepwatch.protocol import ADDED_SERVER_FIELDS, ErrorCode

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "client" / "dashboard"


def test_every_error_code_has_a_sentence_for_people() -> None:
    source = (DASHBOARD / "src" / "protocol.js").read_text()
    start = source.index("const ERROR_TEXT = {")
    table = source[start : source.index("};", start)]
    codes = set(re.findall(r"^\s+(\w+): \"", table, flags=re.MULTILINE))
    assert codes == {code.value for code in ErrorCode}


def test_the_dashboard_names_every_added_field_it_reads() -> None:
    source = (DASHBOARD / "src" / "protocol.js").read_text()
    start = source.index("export const FEATURES = [")
    listed = re.findall(r'"(\w+)"', source[start : source.index("];", start)])
    assert listed == sorted(ADDED_SERVER_FIELDS)


def test_dependencies_come_from_the_lockfile_and_none_are_committed() -> None:
    manifest = json.loads((DASHBOARD / "package.json").read_text())
    lock = json.loads((DASHBOARD / "package-lock.json").read_text())
    assert set(manifest["dependencies"]) == {"@msgpack/msgpack", "uplot"}
    for name in [*manifest["dependencies"], *manifest["devDependencies"]]:
        assert f"node_modules/{name}" in lock["packages"]
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "node_modules/" in ignored and "dist/" in ignored


def test_the_built_dashboard_ships_as_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "dashboard/dist/*" in config["tool"]["setuptools"]["package-data"]["stepwatch.client"]
