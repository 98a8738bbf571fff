"""The client's documented examples run as written, against a real server.

The README's "Client" section and the package docstring of ``stepwatch.client`` show complete
programs; each is executed here with only the server URL changed to the test server's.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

import stepwatch.client
from stepwatch.client import DEFAULT_URL
from stepwatch.server.harness import ServerThread

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_client_examples() -> list[str]:
    text = README.read_text()
    section = text.split("\n## Client\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def docstring_example() -> str:
    doc = stepwatch.client.__doc__ or ""
    block = doc.split("::\n\n", 1)[1].split("\n\n- ", 1)[0]
    return textwrap.dedent(block)


def run_example(source: str, server: ServerThread) -> None:
    assert DEFAULT_URL in source, "the example connects to the default URL"
    program = source.replace(DEFAULT_URL, server.url)
    exec(compile(program, "<example>", "exec"), {"__name__": "__example__"})


def test_the_readme_example_runs(
    server: ServerThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    examples = readme_client_examples()
    assert len(examples) == 1
    monkeypatch.chdir(tmp_path)
    run_example(examples[0], server)
    printed = capsys.readouterr().out
    assert "models: ['tiny']" in printed
    assert "threshold 0.5 from step" in printed
    assert re.search(r"(completed|early_stop) after \d+ steps", printed)
    assert (tmp_path / "red-circle.png").stat().st_size > 0


def test_the_package_docstring_example_runs(
    server: ServerThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    run_example(docstring_example(), server)
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("finished: ")
    assert len(lines) >= 2  # at least one check before the end
    assert (tmp_path / "red-circle.png").stat().st_size > 0
