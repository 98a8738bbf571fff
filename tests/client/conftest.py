"""Shared fixtures of the client tests: a real server on a loopback port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from clientserver import tiny_model

from stepwatch.server.config import ServerConfig
from stepwatch.server.engine.model import LoadedModel
from stepwatch.server.harness import ServerThread

#: The API token of :func:`guarded_server`.
API_TOKEN = "open-sesame-token"


@pytest.fixture
def anyio_backend() -> str:
    """The client is built on asyncio (the ``websockets`` asyncio client)."""
    return "asyncio"


@pytest.fixture(scope="session")
def client_model() -> LoadedModel:
    return tiny_model()


@pytest.fixture(scope="session")
def server(
    client_model: LoadedModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    """One server for the client tests, without an API token."""
    config = ServerConfig(data_dir=tmp_path_factory.mktemp("store"))
    with ServerThread(config, lambda _config: [client_model]) as running:
        yield running


@pytest.fixture(scope="session")
def guarded_server(
    client_model: LoadedModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    """A server that requires :data:`API_TOKEN`."""
    config = ServerConfig(data_dir=tmp_path_factory.mktemp("guarded"), token=API_TOKEN)
    with ServerThread(config, lambda _config: [client_model]) as running:
        yield running
