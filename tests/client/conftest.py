"""Shared fixtures of the client tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """The client is built on asyncio (the ``websockets`` asyncio client)."""
    return "asyncio"
