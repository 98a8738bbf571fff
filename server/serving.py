"""Running the app under uvicorn, with a shutdown that lets runs finish: :func:`serve`.

uvicorn's own shutdown closes every WebSocket at once (1012) and only then tells the app, too
late for a run to send its ``finished``. So uvicorn runs here without its signal handlers, and
the end goes in this order:

1. something sets the ``stop`` event (SIGTERM or SIGINT in :func:`serve_until_signalled`);
2. the listening sockets close: no new connections;
3. :meth:`~stepwatch.server.app.Service.close`: every run finishes with reason ``shutdown``
   (stored, ``finished`` sent), every connection is closed with 1001 after its outbox drained;
4. uvicorn exits, and the lifespan closes the store.

A second SIGTERM or SIGINT ends the process at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING

import anyio
import uvicorn
from starlette.applications import Starlette

from stepwatch.server.app import ModelLoader, Service, create_app
from stepwatch.server.config import ServerConfig
from stepwatch.server.connections import install_log_filters, protocols

if TYPE_CHECKING:
    from stepwatch.server.engine.verifiers import VerifierRegistry

__all__ = ["serve", "serve_until_signalled", "uvicorn_config"]

logger = logging.getLogger(__name__)

Ready = Callable[[str, int], None]


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handlers: :func:`serve` decides when it stops, and
    :meth:`exit_now` ends its main loop at once (uvicorn's looks at ``should_exit`` every 0.1 s,
    a tenth of a second lost at every end: the tests start and stop a server per test)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._exit_asked = anyio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    def exit_now(self) -> None:
        self.should_exit = True
        self._exit_asked.set()

    async def main_loop(self) -> None:
        # uvicorn's loop (a tick every 0.1 s: the date header, its own reasons to exit), woken
        # early by exit_now.
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            with anyio.move_on_after(0.1):
                await self._exit_asked.wait()


def uvicorn_config(app: Starlette, config: ServerConfig, log_level: str = "info") -> uvicorn.Config:
    """How uvicorn runs the app: the sans-I/O websockets protocol, our frame limit, no
    compression (previews are compressed already and latency matters more), and the bounds on
    sockets (uvicorn's own where it has them, :mod:`~stepwatch.server.connections` where not)."""
    http, ws = protocols(config.limits)
    return uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        http=http,
        ws=ws,
        ws_max_size=config.limits.transport_max_bytes,
        ws_per_message_deflate=False,
        lifespan="on",
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=5,
        timeout_keep_alive=5,
        limit_concurrency=config.limits.max_connections,
        h11_max_incomplete_event_size=16 * 1024,
    )


async def serve(
    app: Starlette,
    config: ServerConfig,
    stop: anyio.Event,
    *,
    sock: socket.socket | None = None,
    on_ready: Ready | None = None,
    log_level: str = "info",
) -> int:
    """Serve ``app`` (made by :func:`~stepwatch.server.app.create_app` for ``config``) until
    ``stop`` is set, then shut down gracefully; return the exit status.

    ``sock`` is a bound socket to serve on instead of ``config.host``/``config.port`` (tests
    bind port 0). ``on_ready(host, port)`` is called once the server accepts connections.
    ``log_level`` is uvicorn's (benchmarks quieten its per-connection lines).
    """
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        # asyncio turns Nagle's algorithm off only on sockets it made itself (it checks
        # ``proto == IPPROTO_TCP``, which a plain ``socket.socket()`` lacks). Left on, an event
        # written right after another waits for the client's delayed ACK, about 40 ms. Accepted
        # connections inherit the option from the listening socket.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    install_log_filters()
    server = _Server(uvicorn_config(app, config, log_level))
    ended = anyio.Event()
    status = 0

    async def run_uvicorn() -> None:
        nonlocal status
        try:
            await server.serve(sockets=[sock] if sock is not None else None)
        except SystemExit as exc:  # uvicorn's way of saying that start-up failed
            status = exc.code if isinstance(exc.code, int) else 1
        finally:
            ended.set()

    async def wait_for_stop() -> None:
        await stop.wait()
        ended.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(run_uvicorn)
        async with anyio.create_task_group() as watch:
            watch.start_soon(wait_for_stop)
            # uvicorn sets a flag, not an event, once it listens.
            while not server.started and not ended.is_set():  # noqa: ASYNC110
                await anyio.sleep(0.02)
            if server.started and on_ready is not None:
                host, port = server.servers[0].sockets[0].getsockname()[:2]
                on_ready(host, port)
            await ended.wait()
            watch.cancel_scope.cancel()
        if server.started and not server.should_exit:
            await _shut_down(app, server)
    return status


async def _shut_down(app: Starlette, server: _Server) -> None:
    logger.info("shutting down: finishing runs, then closing connections")
    for listener in server.servers:
        listener.close()
    service: Service = app.state.service
    await service.close()
    server.exit_now()


async def serve_until_signalled(
    config: ServerConfig,
    on_ready: Ready | None = None,
    load_models: ModelLoader | None = None,
    verifiers: VerifierRegistry | None = None,
) -> int:
    """Serve until SIGTERM or SIGINT, then shut down gracefully (a second signal: at once).

    ``load_models`` and ``verifiers`` are handed to :func:`~stepwatch.server.app.create_app`
    (``stepwatch serve`` loads the models and verifiers before it serves, so that one it cannot
    use is refused in one line)."""
    stop = anyio.Event()

    async def watch_signals() -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for received in signals:
                if stop.is_set():
                    logger.warning("second %s: exiting at once", signal.Signals(received).name)
                    os._exit(1)
                logger.info("%s received", signal.Signals(received).name)
                stop.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(watch_signals)
        app = create_app(config, load_models=load_models, verifiers=verifiers)
        status = await serve(app, config, stop, on_ready=on_ready)
        tasks.cancel_scope.cancel()
    return status
