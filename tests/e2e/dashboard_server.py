"""A real stepwatch server for the browser tests, in a thread of its own: :func:`served`.

It serves the built dashboard the way ``stepwatch serve`` does, from the installed package, with
the built-in shapes model (offline, a few milliseconds a step), whose closed vocabulary the
dashboard offers. The tests ask for enough steps to act while a run goes on, and stop it
themselves.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal
from starlette.applications import Starlette

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from stepwatch.server.app import Service, create_app  # noqa: E402
from stepwatch.server.config import ServerConfig  # noqa: E402
from stepwatch.server.models.loading import load_builtin_model  # noqa: E402
from stepwatch.server.serving import serve  # noqa: E402

torch.set_num_threads(1)


@dataclass(frozen=True)
class DashboardServer:
    url: str
    config: ServerConfig
    app: Starlette
    portal: BlockingPortal

    def drop_connections(self) -> None:
        """Close every open connection (1012, "service restart"), as a network blip would;
        runs go on."""

        def drop() -> None:
            service: Service = self.app.state.service
            for session in list(service.sessions):
                session.close(1012, "dropped by the test")

        self.portal.call(drop)


@contextmanager
def served(config: ServerConfig, port: int = 0) -> Iterator[DashboardServer]:
    """Serve ``config`` with the built-in model on a loopback port (``0``: a free one)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    port = sock.getsockname()[1]
    # Each server loads its own built-in model (a pipeline runs one run at a time); it takes a
    # fraction of a second.
    cpu = torch.device("cpu")
    app = create_app(config, load_models=lambda _config: [load_builtin_model("shapes", cpu)])
    ready = threading.Event()
    with start_blocking_portal(backend="asyncio") as portal:
        stop = portal.call(anyio.Event)
        status = portal.start_task_soon(
            lambda: serve(app, config, stop, sock=sock, on_ready=lambda _h, _p: ready.set())
        )
        assert ready.wait(120), "the server did not start"
        try:
            yield DashboardServer(f"http://127.0.0.1:{port}", config, app, portal)
        finally:
            portal.call(stop.set)
            assert status.result(timeout=60) == 0
