"""A real stepwatch server for the client tests, and a TCP proxy a test can cut.

:class:`ThreadedServer` runs the server's app (``create_app``) under uvicorn on a loopback port
in a thread with its own event loop, so one server serves every test (and the ``stepwatch``
subprocesses the CLI tests start) while each test runs the client in its own loop.

:class:`CuttableProxy` forwards TCP between the client and that server; :meth:`~CuttableProxy.cut`
drops every connection through it and stops listening, :meth:`~CuttableProxy.restart` listens
again on the same port: a network outage, as the client sees one.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType, TracebackType

import anyio

from stepwatch.server.app import create_app
from stepwatch.server.config import ServerConfig
from stepwatch.server.engine.model import LoadedModel, describe_pipeline
from stepwatch.server.serving import serve

START_TIMEOUT = 120.0
SERVER_TESTS = Path(__file__).resolve().parents[1] / "server"


def _server_test_tools() -> ModuleType:
    """The server tests' ``tiny_models`` helpers, loaded from their folder by path.

    The client tests serve the same tiny random-weight Stable Diffusion pipeline the service
    tests do (built offline in a fraction of a second, about 20 ms a step on a CPU core).
    """
    spec = importlib.util.spec_from_file_location(
        "stepwatch_server_tiny_models", SERVER_TESTS / "tiny_models.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_model(name: str = "tiny") -> LoadedModel:
    """A tiny SD model (32×32 images) the server can run in its worker threads."""
    tools = _server_test_tools()
    return tools.with_usual_curves(describe_pipeline(name, tools.make_sd_pipeline()))


class ThreadedServer:
    """``stepwatch serve`` in a thread: the real app on a free loopback port."""

    def __init__(self, config: ServerConfig, models: Sequence[LoadedModel]) -> None:
        self.config = config
        self.app = create_app(config, load_models=lambda _config: list(models))
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.status: int | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: anyio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="stepwatch test server")

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def _run(self) -> None:
        anyio.run(self._serve)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = anyio.Event()
        self.status = await serve(
            self.app, self.config, self._stop, sock=self._sock, on_ready=self._on_ready
        )
        self._ready.set()

    def _on_ready(self, host: str, port: int) -> None:
        self._ready.set()

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        assert self._ready.wait(START_TIMEOUT), "the test server did not start"
        assert self.status is None, f"the test server exited with {self.status}"
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(START_TIMEOUT)
        assert not self._thread.is_alive(), "the test server did not stop"
        assert self.status == 0


class CuttableProxy:
    """Forwards TCP from a loopback port to ``target_port``, until a test cuts it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.connections = 0
        self._listener: asyncio.Server | None = None
        self._pipes: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def start(self) -> None:
        """Listen (on the same port as before after a cut)."""
        self._listener = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._listener.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Stop listening and drop every connection, both ways, at once."""
        assert self._listener is not None
        self._listener.close()
        for writer in list(self._pipes):
            writer.transport.abort()
        await self._listener.wait_closed()
        self._listener = None

    async def restart(self) -> None:
        await self.start()

    async def close(self) -> None:
        if self._listener is not None:
            await self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._pipes.update((writer, up_writer))
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._pipes.discard(sink)
            sink.transport.abort()
