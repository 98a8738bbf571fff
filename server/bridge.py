"""How engine events get from the sampler's thread to the event loop: :class:`EventBridge`.

The engine calls its sink on the sampler thread and waits for it to return, so the sink must not
wait for the event loop. :meth:`EventBridge.put` notes when the event was emitted
(:func:`time.monotonic_ns`, what benchmarks measure delivery latency against), schedules its
delivery into a bounded anyio memory stream on the loop (``call_soon_threadsafe``, which does
not wait) and returns. The bound holds: the sampler takes one of ``capacity`` slots per event
and gives nothing back itself; the loop frees a slot for each event it reads. Only a loop that
falls ``capacity`` events behind makes the sampler wait.

uvicorn runs the app on asyncio, so the bridge uses the asyncio loop directly for the one thing
anyio offers no non-blocking form of: a call into the loop from another thread.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from stepwatch.server.engine.events import EngineEvent

__all__ = ["EventBridge"]

#: An engine event and :func:`time.monotonic_ns` when the sampler emitted it.
_Emitted = tuple[EngineEvent, int]


class EventBridge:
    """Carries one run's engine events from the sampler thread to the loop, in order.

    Create it on the event loop; pass :meth:`put` to the engine as its sink; iterate over the
    bridge on the loop (each item is an event and when it was emitted); call :meth:`close` on
    the loop once the sampler has returned.
    """

    def __init__(self, capacity: int = 256) -> None:
        self._loop = asyncio.get_running_loop()
        self._slots = threading.Semaphore(capacity)
        self._send: MemoryObjectSendStream[_Emitted]
        self._receive: MemoryObjectReceiveStream[_Emitted]
        self._send, self._receive = anyio.create_memory_object_stream[_Emitted](capacity)

    def put(self, event: EngineEvent) -> None:
        """Hand ``event`` to the loop (call it from the sampler thread; it does not wait)."""
        emitted = (event, time.monotonic_ns())
        self._slots.acquire()
        self._loop.call_soon_threadsafe(self._deliver, emitted)

    def _deliver(self, emitted: _Emitted) -> None:
        try:
            self._send.send_nowait(emitted)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._slots.release()  # nobody reads any more (the run's reader failed)

    def close(self) -> None:
        """No more events will come (call it on the loop after the sampler returned)."""
        self._send.close()

    async def __aiter__(self) -> AsyncIterator[_Emitted]:
        with self._receive:
            async for emitted in self._receive:
                self._slots.release()
                yield emitted
