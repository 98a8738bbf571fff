"""The service in-process, on a real uvicorn on a loopback port: for tests, e2e tests, benchmarks.

Two ways to hold one, over one implementation (:func:`running_server`):

- ``async with running_server(config, load_models) as server``: the server runs in the caller's
  event loop (the service tests, which talk to it from the same loop);
- ``with ServerThread(config, load_models) as server``: the same, in a thread with an event loop
  of its own (the client, browser and benchmark tests, whose callers block, or run ``stepwatch``
  subprocesses, or their own loops). :meth:`ServerThread.call` runs a function in its loop.

Both serve through :func:`~stepwatch.server.serving.serve` on a socket bound here (port 0: a free
one), and leave the way SIGTERM does: runs finish with reason ``shutdown``, then connections
close. A server that does not start, or exits with a failure, raises :class:`HarnessError`.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal
from starlette.applications import Starlette

from stepwatch.server.app import ModelLoader, Service, create_app
from stepwatch.server.config import ServerConfig
from stepwatch.server.execution import Sampler
from stepwatch.server.serving import serve

__all__ = ["HarnessError", "RunningServer", "ServerThread", "running_server"]

T = TypeVar("T")
#: Seconds a server may take to start (model loading runs in it) and to stop.
START_TIMEOUT = 120.0
#: The close code :meth:`RunningServer.drop_connections` uses ("service restart").
CLOSE_DROPPED = 1012


class HarnessError(Exception):
    """The server did not start, or did not stop cleanly."""


@dataclass
class RunningServer:
    """A server the harness started; touch :attr:`service` only from the server's loop."""

    app: Starlette
    config: ServerConfig
    port: int
    #: Set it to shut the server down as SIGTERM does (the block then ends the wait).
    stop: anyio.Event
    #: The listening socket (accepted connections inherit its options).
    sock: socket.socket

    @property
    def url(self) -> str:
        """The protocol's WebSocket URL."""
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http(self) -> str:
        """The base of the HTTP API and the dashboard."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def service(self) -> Service:
        service: Service = self.app.state.service
        return service

    def drop_connections(self) -> None:
        """Close every open connection (1012), as a network blip would; runs go on."""
        for session in list(self.service.sessions):
            session.close(CLOSE_DROPPED, "dropped by the harness")


def bind_loopback(port: int = 0, send_buffer: int | None = None) -> socket.socket:
    """A TCP socket bound to 127.0.0.1:``port`` (reusable at once after an earlier server).

    ``send_buffer`` fixes the kernel's send buffer of every connection (accepted sockets inherit
    it), as on a slow network; by default loopback buffers grow to megabytes and hide a client
    that does not read.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if send_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    sock.bind(("127.0.0.1", port))
    return sock


@asynccontextmanager
async def running_server(
    config: ServerConfig,
    load_models: ModelLoader,
    *,
    port: int = 0,
    send_buffer: int | None = None,
    log_level: str = "info",
    sampler: Sampler | None = None,
) -> AsyncIterator[RunningServer]:
    """Serve ``config`` with the models ``load_models`` gives, in this event loop, on loopback
    ``port`` (``0``: a free one) for the duration of the block, then shut down as SIGTERM does.

    ``send_buffer``: see :func:`bind_loopback`; ``log_level``: uvicorn's; ``sampler``: the
    engine at its declared interface (by default the real one).
    """
    sock = bind_loopback(port, send_buffer)
    app = create_app(config, load_models=load_models, sampler=sampler)
    stop, ready = anyio.Event(), anyio.Event()
    status: list[int] = []

    async def run() -> None:
        status.append(
            await serve(
                app,
                config,
                stop,
                sock=sock,
                on_ready=lambda _host, _port: ready.set(),
                log_level=log_level,
            )
        )
        ready.set()

    started = False
    with contextlib.closing(sock):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(run)
            with anyio.move_on_after(START_TIMEOUT):
                await ready.wait()
            started = ready.is_set() and not status
            try:
                if started:
                    yield RunningServer(app, config, sock.getsockname()[1], stop, sock)
            finally:
                stop.set()
    if not started:
        raise HarnessError(f"the server did not start (status {status})")
    if status != [0]:
        raise HarnessError(f"the server exited with status {status}")


class ServerThread:
    """:func:`running_server` in a thread with its own event loop; a blocking context manager.

    Its attributes are the :class:`RunningServer`'s; anything that reads or changes the live
    service goes through :meth:`call`, which runs in the server's loop.
    """

    def __init__(
        self,
        config: ServerConfig,
        load_models: ModelLoader,
        *,
        port: int = 0,
        send_buffer: int | None = None,
        log_level: str = "info",
        sampler: Sampler | None = None,
    ) -> None:
        self.config = config
        self._serving = running_server(
            config,
            load_models,
            port=port,
            send_buffer=send_buffer,
            log_level=log_level,
            sampler=sampler,
        )
        self._held = contextlib.ExitStack()
        self._portal: BlockingPortal | None = None
        self._server: RunningServer | None = None

    def __enter__(self) -> ServerThread:
        with contextlib.ExitStack() as held:
            self._portal = held.enter_context(start_blocking_portal(backend="asyncio"))
            self._server = held.enter_context(
                self._portal.wrap_async_context_manager(self._serving)
            )
            self._held = held.pop_all()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._held.__exit__(kind, error, trace)

    @property
    def server(self) -> RunningServer:
        if self._server is None:
            raise HarnessError("the server thread has not started")
        return self._server

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def http(self) -> str:
        return self.server.http

    @property
    def app(self) -> Starlette:
        return self.server.app

    def call(self, function: Callable[[RunningServer], T]) -> T:
        """``function(server)``, run in the server's event loop; what it returns."""
        assert self._portal is not None
        return self._portal.call(function, self.server)

    def drop_connections(self) -> None:
        """:meth:`RunningServer.drop_connections`, from this thread."""
        self.call(RunningServer.drop_connections)

    def loop_cpu_ns(self) -> int:
        """CPU time the server's event-loop thread has used so far (not the sampler's)."""
        return self.call(lambda _server: time.thread_time_ns())

    def emitted(self, run_id: str) -> dict[int, tuple[str, int, int | None]]:
        """Each event of a run in memory: seq → (type, ``emitted_ns``, step of a progress)."""

        def read(server: RunningServer) -> dict[int, tuple[str, int, int | None]]:
            run = server.service.runs.live(run_id)
            if run is None:
                raise HarnessError(f"run {run_id} is not in memory")
            return {
                event.seq: (
                    event.message.TYPE,
                    event.emitted_ns,
                    getattr(event.message, "step", None),
                )
                for event in run.log
            }

        return self.call(read)

    def wait_finished(self, run_id: str) -> None:
        """Wait until run ``run_id`` (in memory) has finished."""

        async def wait(server: RunningServer) -> None:
            run = server.service.runs.live(run_id)
            if run is None:
                raise HarnessError(f"run {run_id} is not in memory")
            await run.done.wait()

        assert self._portal is not None
        self._portal.call(wait, self.server)
