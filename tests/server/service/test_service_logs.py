"""What the operator reads: a data folder that cannot be written, or a ``--verifier`` that cannot
be loaded, is one clear line and a non-zero exit, not a traceback; a failing ``accept()`` (out of
open files) is reported once a minute, not hundreds of times a second with a traceback each."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stepwatch.server.connections import OncePerInterval


def test_a_data_folder_that_cannot_be_written_is_one_clear_line(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the data folder should be")
    command = [sys.executable, "-m", "stepwatch.client.cli", "serve", "--port", "0"]
    done = subprocess.run(
        [*command, "--data", str(blocked / "data")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "the data folder must be writable" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("spec", "said"),
    [
        ("nosuch_module_xyz:score", "cannot load verifier 'nosuch_module_xyz:score': No module"),
        ("os:no_such_callable", "cannot load verifier 'os:no_such_callable'"),
        ("no-colon", "a verifier spec is [id=]module:callable, got 'no-colon'"),
        ("c=clip:{missing}", "cannot load CLIP from"),
    ],
    ids=["module", "callable", "malformed", "clip-source"],
)
def test_a_bad_verifier_at_serve_is_one_clear_line(tmp_path: Path, spec: str, said: str) -> None:
    command = [sys.executable, "-m", "stepwatch.client.cli", "serve", "--port", "0"]
    verifier = spec.format(missing=tmp_path / "no-clip-here")
    done = subprocess.run(
        [*command, "--data", str(tmp_path / "data"), "--verifier", verifier],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    refusal = [line for line in done.stderr.splitlines() if line.startswith("stepwatch serve:")]
    assert len(refusal) == 1 and said in refusal[0], done.stderr
    assert "serving on" not in done.stderr


def accept_failure() -> logging.LogRecord:
    try:
        raise OSError(24, "Too many open files")
    except OSError:
        exc_info = sys.exc_info()
    return logging.LogRecord(
        "asyncio",
        logging.ERROR,
        __file__,
        1,
        "socket.accept() out of system resource",
        None,
        exc_info,
    )


def test_accept_failures_are_logged_once_an_interval_without_tracebacks() -> None:
    clock = [0.0]
    once = OncePerInterval("out of system resource", interval=60.0, clock=lambda: clock[0])
    first = accept_failure()
    assert once.filter(first)
    assert first.exc_info is None and "Too many open files" in first.getMessage()
    for _ in range(500):
        clock[0] += 0.01
        assert not once.filter(accept_failure())
    clock[0] += 60.0
    later = accept_failure()
    assert once.filter(later) and "500 more" in later.getMessage()
    other = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "something else", None, None)
    assert once.filter(other)
