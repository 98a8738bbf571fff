"""What the client tests' server serves, and a TCP proxy a test can cut.

The server is :class:`~stepwatch.server.harness.ServerThread` (the real app under uvicorn on a
loopback port, in a thread with its own event loop), so one server serves every test (and the
``stepwatch`` subprocesses the CLI tests start) while each test runs the client in its own loop;
:func:`tiny_model` is the model it serves.

:class:`CuttableProxy` forwards TCP between the client and that server; :meth:`~CuttableProxy.cut`
drops every connection through it and stops listening, :meth:`~CuttableProxy.restart` listens
again on the same port: a network outage, as the client sees one.
"""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from types import ModuleType

from stepwatch.server.engine.model import LoadedModel, describe_pipeline

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
