"""The stepwatch client: an async Python library and the ``stepwatch`` command line.

It speaks :mod:`stepwatch.protocol` over a WebSocket (the ``websockets`` library's asyncio
client) and never imports the server, torch or anyio. Start a run, follow it, steer it::

    import asyncio
    from stepwatch.client import Check, Finished, connect

    async def main() -> None:
        async with connect("ws://127.0.0.1:8765/ws") as sw:
            run = await sw.generate("red circle", steps=30, quality_threshold=0.8)
            async for event in run:
                match event:
                    case Check(step=step, score=score, decision=decision):
                        print(step, round(score, 3), decision)
                    case Finished(reason=reason):
                        print("finished:", reason)
            result = await run.result()
            result.save("red-circle.png")

    asyncio.run(main())

- :func:`connect` opens a :class:`Session`: the server's models, verifiers, limits and
  capabilities (from its ``welcome``), :meth:`Session.generate` (a :class:`Run`) and
  :meth:`Session.watch` (a read-only :class:`RunHandle` on any run).
- ``async for event in run`` yields the protocol's typed run events, each once, also across
  reconnections; ``await run.result()`` returns the :class:`Result`; ``await run.stop()`` and
  ``await run.set(...)`` return the ``Applied`` acknowledgement.
- Errors form one tree under :class:`StepwatchError` (see :mod:`stepwatch.client.errors`).
- :func:`open_image` decodes previews and images with Pillow (imported on first use);
  :func:`list_runs` reads the server's run history over HTTP; :meth:`Session.upload` (or
  :func:`upload_image`) sends an input image for an image-to-image, inpainting or ControlNet run.
"""

from stepwatch.protocol import (
    Adjusted,
    Applied,
    Check,
    ErrorCode,
    Finished,
    Progress,
    RunEvent,
    Started,
)

from .errors import (
    ConnectionFailed,
    ConnectionLost,
    ProtocolViolation,
    Refused,
    RunFailed,
    StepwatchError,
)
from .history import RunSummary, list_runs
from .runs import Result, Run, RunHandle, RunOptions, open_image
from .session import Session, SessionState, connect
from .transport import DEFAULT_URL, Backoff
from .uploads import Upload, upload_image

__all__ = [
    "DEFAULT_URL",
    "Adjusted",
    "Applied",
    "Backoff",
    "Check",
    "ConnectionFailed",
    "ConnectionLost",
    "ErrorCode",
    "Finished",
    "Progress",
    "ProtocolViolation",
    "Refused",
    "Result",
    "Run",
    "RunEvent",
    "RunFailed",
    "RunHandle",
    "RunOptions",
    "RunSummary",
    "Session",
    "Upload",
    "SessionState",
    "Started",
    "StepwatchError",
    "connect",
    "list_runs",
    "open_image",
    "upload_image",
]
