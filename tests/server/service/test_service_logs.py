"""What the operator reads: a data folder that cannot be written is one clear line, not a
traceback; a failing ``accept()`` (out of open files) is reported once a minute, not hundreds
of times a second with a traceback each."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

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
