"""Event latency and sampler slowdown with 1, 10 and 100 watchers on loopback.

For each number of watchers (0 is the baseline), one run is started and watched by that many
lean WebSocket clients spread over ``--client-processes`` child processes (``_watchers.py``:
they stamp each frame as its bytes arrive and decode after the run, so the figure measures the
server, not a client process busy with its neighbours' frames). Latency is step end → client
receipt: the time the sampler handed an event over (stamped in the server) to the time its bytes
reached a watcher, on one clock (``time.monotonic_ns``), for ``progress`` and ``check`` events
that reached the watcher live. The sampler's pace is seconds per step between its first and last
progress event; the slowdown is the median, over repeats, of the pace of a watched run divided
by that of an unwatched run right next to it (so load that drifts over minutes cancels out). The
server's event-loop thread's CPU time per step is reported too: what fan-out costs, whatever the
load.

Targets: p99 <= 5 ms with 1 watcher, <= 20 ms with 100; slowdown <= 5 %.

``--paths write-through asgi`` measures both send paths, each on its own server in the same
run (``ServiceLimits.write_through`` on: frames written straight to each idle socket; off: a
task and an ASGI send per frame per watcher, as before).

Prints a table and writes ``bench/results/latency.json``::

    .venv/bin/python bench/latency.py [--model tiny | --model shapes=builtin:shapes]
        [--steps 300] [--check-interval 2] [--watchers 0 1 10 100] [--repeats 3]
        [--client-processes 2] [--paths write-through asgi]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import pstats
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import _clients
from _service import (
    RESULTS,
    WatcherProcesses,
    bench_server,
    load_bench_model,
    median,
    percentile,
    print_table,
    run_clients,
    step_seconds,
    summary_ms,
    write_results,
)

from stepwatch.server.config import ServiceLimits


def start_fields(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "prompt": args.prompt,
        "seed": 7,
        "steps": args.steps,
        "check_interval": args.check_interval,
        "early_stop": False,
        "quality_threshold": 0.0,  # no CFG raises: every run does the same work
        **({"width": args.size, "height": args.size} if args.size else {}),
    }


def latencies(
    result: dict[str, Any], emitted: dict[int, tuple[str, int, int | None]]
) -> dict[str, list[int]]:
    """Receipt minus emission, in ns, of every live progress and check event, by type."""
    by_kind: dict[str, list[int]] = defaultdict(list)
    for live_after, records in zip(result["live_after"], result["records"], strict=True):
        for seq, kind, received in records:
            if seq > live_after and kind in ("progress", "check"):
                by_kind[kind].append(received - emitted[seq][1])
    return by_kind


class PathBench:
    """One server with ``write_through`` on or off, and the figures measured on it."""

    def __init__(self, args: argparse.Namespace, server: Any, write_through: bool) -> None:
        self.args, self.server, self.write_through = args, server, write_through
        self.fields = start_fields(args)
        counts = sorted(set(args.watchers) | {0})
        self.counts = counts
        self.pooled: dict[int, dict[str, list[int]]] = {n: defaultdict(list) for n in counts}
        self.paces: dict[int, list[float]] = {n: [] for n in counts}
        self.loop_cpu: dict[int, list[float]] = {n: [] for n in counts}
        self.ratios: dict[int, list[float]] = {n: [1.0] if n == 0 else [] for n in counts}
        self.name = "write-through" if write_through else "asgi"

    def measure(self, n: int, repeat: int, profile: cProfile.Profile | None = None) -> float:
        server = self.server
        with WatcherProcesses(server.url, n, self.args.client_processes) as watchers:
            if profile is not None:  # cProfile follows only the thread that enables it
                server.call(lambda _server: profile.enable())
            cpu_before = server.loop_cpu_ns()
            run_id = watchers.start(self.fields)
            result = watchers.watch(run_id)
            server.wait_finished(run_id)
            cpu = server.loop_cpu_ns() - cpu_before
            if profile is not None:
                server.call(lambda _server: profile.disable())
        emitted = server.emitted(run_id)
        pace = step_seconds(emitted)
        self.paces[n].append(pace)
        self.loop_cpu[n].append(cpu / 1e6 / self.args.steps)
        for kind, values in latencies(result, emitted).items():
            self.pooled[n][kind].extend(values)
        print(f"{self.name}, repeat {repeat + 1}, {n} watchers: {pace * 1e3:.2f} ms/step")
        return pace

    def pair(self, n: int, repeat: int) -> None:
        """A watched run and an unwatched one right before or after it (so load that drifts
        over minutes cancels out of the ratio)."""
        if repeat % 2 == 0:
            baseline = self.measure(0, repeat)
            self.ratios[n].append(self.measure(n, repeat) / baseline)
        else:
            watched = self.measure(n, repeat)
            self.ratios[n].append(watched / self.measure(0, repeat))

    def report(self) -> list[dict[str, Any]]:
        return [
            {
                "watchers": n,
                "write_through": self.write_through,
                "progress": summary_ms(self.pooled[n]["progress"]),
                "check": summary_ms(self.pooled[n]["check"]),
                "step_ms": median(self.paces[n]) * 1e3,
                "step_ms_each": [p * 1e3 for p in self.paces[n]],
                "slowdown": median(self.ratios[n]) - 1,
                "slowdown_quartiles": [
                    percentile(self.ratios[n], 25) - 1,
                    percentile(self.ratios[n], 75) - 1,
                ],
                "paired_ratios": self.ratios[n],
                "loop_cpu_ms_per_step": median(self.loop_cpu[n]),
                "loop_cpu_ms_per_step_each": self.loop_cpu[n],
            }
            for n in self.counts
        ]


def measure(args: argparse.Namespace, model: Any) -> list[dict[str, Any]]:
    """Every path's figures; the paths' servers run side by side and take turns, a watcher
    count at a time, so both see the same load."""
    # Every watcher connects from loopback: one address, so its cap must hold them all.
    with contextlib.ExitStack() as held:
        benches = []
        for name in args.paths:
            limits = ServiceLimits(
                max_runs_per_connection=64,
                max_connections_per_client=512,
                write_through=name == "write-through",
            )
            data = Path(held.enter_context(tempfile.TemporaryDirectory()))
            server = held.enter_context(bench_server(model, data, limits, None))
            fields = {**start_fields(args), "steps": 10}
            run_clients(_clients.watch_run, server.url, 1, fields)  # warm up
            benches.append(PathBench(args, server, name == "write-through"))
        for repeat in range(args.repeats):
            for n in benches[0].counts[1:]:
                for bench in benches if repeat % 2 == 0 else benches[::-1]:
                    bench.pair(n, repeat)
        if args.profile:
            profile_loop(benches[0], max(args.watchers))
    return [entry for bench in benches for entry in bench.report()]


def profile_loop(bench: PathBench, n: int) -> None:
    """cProfile of the server's event-loop thread through one run with ``n`` watchers, written
    to ``bench/results/latency-profile.txt`` (not counted in the figures)."""
    profile = cProfile.Profile()
    kept = {kind: list(values) for kind, values in bench.pooled[n].items()}
    figures = (bench.paces[n][:], bench.loop_cpu[n][:], kept)
    bench.measure(n, -1, profile)
    bench.paces[n][:], bench.loop_cpu[n][:] = figures[0], figures[1]
    bench.pooled[n] = defaultdict(list, figures[2])
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out).sort_stats("tottime")
    stats.print_stats(25)
    path = RESULTS / "latency-profile.txt"
    path.write_text(f"{bench.name}, {n} watchers, {bench.args.steps} steps\n{out.getvalue()}")
    print(f"wrote {path}")


def quartiles(summary: dict[str, float]) -> str:
    return f"{summary['p50_ms']:.2f} [{summary['p25_ms']:.2f}, {summary['p75_ms']:.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--prompt", default="red circle")
    parser.add_argument("--size", type=int, help="image width and height (model default)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--check-interval", type=int, default=2)
    parser.add_argument("--watchers", type=int, nargs="+", default=[0, 1, 10, 100])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--client-processes", type=int, default=2, help="processes the watchers are spread over"
    )
    parser.add_argument(
        "--paths",
        nargs="+",
        choices=["write-through", "asgi"],
        default=["write-through"],
        help="send paths to measure, each on its own server in this run (ServiceLimits."
        "write_through on or off)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="profile the loop thread through one more run"
    )
    args = parser.parse_args()
    model = load_bench_model(args.model)
    report = measure(args, model)
    rows = [
        [
            "write-through" if entry["write_through"] else "asgi",
            entry["watchers"],
            quartiles(entry["progress"]),
            entry["progress"]["p99_ms"],
            quartiles(entry["check"]),
            entry["check"]["p99_ms"],
            entry["step_ms"],
            f"{entry['slowdown'] * 100:+.1f}%",
            entry["loop_cpu_ms_per_step"],
        ]
        for entry in report
    ]
    print_table(
        f"step end -> client receipt, {args.model}, {args.steps} steps, checks every "
        f"{args.check_interval}, {args.repeats} repeats, watchers in {args.client_processes} "
        "processes; latency ms: p50 [q1, q3], p99",
        [
            "send path",
            "watchers",
            "progress p50 [q1, q3]",
            "p99",
            "check p50 [q1, q3]",
            "p99",
            "ms/step",
            "slowdown",
            "loop CPU ms/step",
        ],
        rows,
    )
    path = write_results(
        "latency" if not args.size else f"latency-{args.size}px",
        {
            "model": args.model,
            "fields": start_fields(args),
            "repeats": args.repeats,
            "client_processes": args.client_processes,
            "shared_machine": "2 CPU cores shared with other sessions' work",
            "results": report,
            "targets": {"p99_ms_1": 5.0, "p99_ms_100": 20.0, "slowdown": 0.05},
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
