"""The protocol and the client stay light: importing them loads none of the server's stack."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "anyio", "starlette", "uvicorn", "diffusers", "numpy")


def test_protocol_and_client_import_without_the_server_stack() -> None:
    program = (
        "import sys, stepwatch.protocol, stepwatch.client, stepwatch.client.cli; "
        f"print(' '.join(name for name in {HEAVY!r} if name in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.split() == []
