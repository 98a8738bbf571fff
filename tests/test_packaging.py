"""The distribution ships every package folder and keeps the one-way import rules."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {
    "server": "stepwatch.server",
    "client": "stepwatch.client",
    "protocol": "stepwatch.protocol",
}


def declared_packages() -> set[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return set(config["tool"]["setuptools"]["packages"])


def package_folders() -> set[str]:
    found = set()
    for folder, name in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            if "node_modules" in init.parts:
                continue
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *relative.parts]))
    return found


def test_every_package_folder_is_declared() -> None:
    assert package_folders() == declared_packages()


def test_package_dir_maps_the_three_top_level_folders() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mapping = config["tool"]["setuptools"]["package-dir"]
    assert mapping == {name: folder for folder, name in FOLDERS.items()}


def test_torch_is_pinned_in_one_place() -> None:
    pins = [path.relative_to(ROOT) for path in ROOT.glob("*.txt") if "torch==" in path.read_text()]
    assert pins == [Path("constraints.txt")]
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text().split()
