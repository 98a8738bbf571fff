"""The ``stepwatch`` console script as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stepwatch.client.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_version_names_the_distribution() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"stepwatch {version('stepwatch')}"


def test_help_lists_registered_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("generate", "watch", "runs", "serve"):
        assert command in result.stdout


def test_no_command_prints_help_and_fails() -> None:
    result = run_cli()
    assert result.returncode == 2
    assert "usage: stepwatch" in result.stdout
