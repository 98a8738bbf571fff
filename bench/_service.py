"""What the service benchmarks share: a server in this process, clients in another, one clock.

- :func:`bench_server` runs the real app under uvicorn on a loopback port, in a thread of this
  process with its own event loop (:class:`~stepwatch.server.harness.ServerThread`, the harness
  the tests use too); the sampler runs in a worker thread as always.
- Clients run in a child process (:func:`run_clients`), so their work does not share this
  process's interpreter lock with the server and the sampler, as real clients would not. The
  latency benchmark's watchers are lean ones spread over several processes
  (:class:`WatcherProcesses`, ``_watchers.py``), so the figure measures the server.
- Both sides read ``time.monotonic_ns()``: ``CLOCK_MONOTONIC``, one clock for every process of
  a Linux machine. The server stamps each engine event when the sampler hands it over (the run
  log's ``emitted_ns``); a client stamps each frame as ``recv`` returns it. The difference is the
  step-end → client-receipt latency.

Models: ``--model tiny`` builds the tiny random-weight Stable Diffusion pipeline the engine tests
use (32×32, about 15 ms a step on one CPU thread); anything else is a ``NAME=SPEC`` model text as
``stepwatch serve --model`` takes it, e.g. ``shapes=builtin:shapes``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stepwatch.server.config import ServerConfig, ServiceLimits
from stepwatch.server.engine.model import LoadedModel
from stepwatch.server.harness import ServerThread

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def load_bench_model(spec: str) -> LoadedModel:
    """``tiny`` (the engine tests' random-weight SD pipeline) or a ``NAME=SPEC`` model text."""
    torch.set_num_threads(1)
    if spec == "tiny":
        sys.path.insert(0, str(ROOT / "tests" / "server"))
        from tiny_models import make_sd_pipeline  # the engine tests' tiny pipeline builder

        from stepwatch.server.engine.model import describe_pipeline

        return describe_pipeline("tiny", make_sd_pipeline())
    from stepwatch.server.app import quiet_libraries
    from stepwatch.server.models.loading import ModelSpec, load_model

    quiet_libraries()
    return load_model(ModelSpec.parse(spec))


def bench_server(
    model: LoadedModel, data_dir: Path, limits: ServiceLimits, send_buffer: int | None
) -> ServerThread:
    """The app serving ``model``, on a free loopback port from a thread of this process, with
    uvicorn's and the service's per-connection log lines quietened (a ``with`` block runs it)."""
    logging.getLogger("stepwatch").setLevel(logging.WARNING)
    config = ServerConfig(data_dir=data_dir, limits=limits, entry_point_verifiers=False)
    return ServerThread(
        config, lambda _config: [model], send_buffer=send_buffer, log_level="warning"
    )


def run_clients(target: Callable[..., Any], *arguments: Any) -> Any:
    """Run ``target(*arguments)`` in a fresh child process and return what it returns."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(target, arguments)


class WatcherProcesses:
    """``watchers`` lean watchers of ``url`` spread over ``processes`` child processes
    (``bench/_watchers.py``), connected on entering; a ``with`` block holds them.

    :meth:`start` starts a run from an owner connection (in the first process), :meth:`watch`
    has every watcher subscribe to it and returns what :func:`_clients.watch_run` returns.
    """

    def __init__(self, url: str, watchers: int, processes: int) -> None:
        processes = max(1, min(processes, watchers))
        counts = [watchers // processes + (i < watchers % processes) for i in range(processes)]
        script = str(ROOT / "bench" / "_watchers.py")
        self._children = [
            subprocess.Popen(
                [sys.executable, script, url, str(count)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for count in counts
        ]

    def __enter__(self) -> WatcherProcesses:
        for child in self._children:
            self._read(child)  # ready
        return self

    def __exit__(self, *_exc: object) -> None:
        for child in self._children:
            with contextlib.suppress(OSError):
                self._tell(child, {"quit": True})
        for child in self._children:
            child.wait(timeout=30)

    def start(self, fields: dict[str, Any]) -> str:
        self._tell(self._children[0], {"start": fields})
        run_id: str = self._read(self._children[0])["run_id"]
        return run_id

    def watch(self, run_id: str) -> dict[str, Any]:
        for child in self._children:
            self._tell(child, {"watch": run_id})
        merged: dict[str, Any] = {"run_id": run_id, "live_after": [], "records": []}
        for child in self._children:
            result = self._read(child)
            merged["live_after"].extend(result["live_after"])
            merged["records"].extend(result["records"])
        return merged

    @staticmethod
    def _tell(child: subprocess.Popen[str], message: dict[str, Any]) -> None:
        assert child.stdin is not None
        child.stdin.write(json.dumps(message) + "\n")
        child.stdin.flush()

    @staticmethod
    def _read(child: subprocess.Popen[str]) -> dict[str, Any]:
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line:
            raise RuntimeError(f"a watcher process exited with {child.wait()}")
        message: dict[str, Any] = json.loads(line)
        return message


# -- numbers ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear between ranks; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary_ms(latencies_ns: Sequence[int]) -> dict[str, float]:
    values = [value / 1e6 for value in latencies_ns]
    return {
        "count": len(values),
        "p25_ms": round(percentile(values, 25), 3),
        "p50_ms": round(percentile(values, 50), 3),
        "p75_ms": round(percentile(values, 75), 3),
        "p99_ms": round(percentile(values, 99), 3),
        "max_ms": round(max(values), 3) if values else float("nan"),
    }


def step_seconds(emitted: dict[int, tuple[str, int, int | None]]) -> float:
    """The sampler's pace: seconds per step between the first and the last progress event."""
    progress = sorted(
        (step, at) for kind, at, step in emitted.values() if kind == "progress" and step
    )
    (first_step, first_at), (last_step, last_at) = progress[0], progress[-1]
    return (last_at - first_at) / 1e9 / (last_step - first_step)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


@dataclass(frozen=True)
class Machine:
    python: str
    torch: str
    cpus: int | None
    platform: str

    @classmethod
    def here(cls) -> Machine:
        import os

        return cls(
            platform.python_version(), torch.__version__, os.cpu_count(), platform.platform()
        )


def write_results(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"machine": Machine.here().__dict__, "written": time.time(), **payload}
    path.write_text(json.dumps(payload, indent=2))
    return path


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [list(map(str, header))] + [[_cell(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for index, row in enumerate(cells):
        print("  ".join(value.rjust(width) for value, width in zip(row, widths, strict=True)))
        if index == 0:
            print("  ".join("-" * width for width in widths))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)
