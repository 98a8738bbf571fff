"""One watcher that stops reading: do the others and the sampler notice?

Runs of the same parameters are watched by ``--watchers`` clients that read promptly, and, in
every other run, also by one client that subscribes and never reads again (its socket's receive
buffer is 4 KiB and its library stops reading after one message; the server's send buffers are
fixed at ``--send-buffer`` bytes, as on a slow link, so its frames back up into its outbox within
a few events). The two kinds of runs alternate. For each: the prompt watchers' step end → receipt
latency (p50, p99) and the sampler's seconds per step, and how many slow watchers the server
dropped with ``slow_consumer`` (``--send-timeout`` seconds after they stopped draining).

Targets: the others' p99 at most 2x what it is without the slow watcher; the sampler at most
5 % slower.

Prints a table and writes ``bench/results/slow_client.json``::

    .venv/bin/python bench/slow_client.py [--model tiny] [--watchers 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import _clients
from _service import (
    bench_server,
    load_bench_model,
    median,
    print_table,
    run_clients,
    step_seconds,
    summary_ms,
    write_results,
)
from latency import latencies

from stepwatch.server.config import ServiceLimits


class DropCounter(logging.Handler):
    """Counts the server's slow-consumer drops (it logs each one)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.drops = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "does not read its events" in record.getMessage():
            self.drops += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--prompt", default="red circle")
    parser.add_argument("--size", type=int, help="image width and height (model default)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--watchers", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--send-buffer", type=int, default=65536)
    parser.add_argument("--send-timeout", type=float, default=2.0)
    args = parser.parse_args()
    model = load_bench_model(args.model)
    fields: dict[str, Any] = {
        "prompt": args.prompt,
        "seed": 11,
        "steps": args.steps,
        "check_interval": 2,
        "early_stop": False,
        "quality_threshold": 0.0,
        **({"width": args.size, "height": args.size} if args.size else {}),
        "preview_format": "png",
    }
    limits = ServiceLimits(send_timeout=args.send_timeout)
    pooled: dict[int, dict[str, list[int]]] = {0: defaultdict(list), 1: defaultdict(list)}
    paces: dict[int, list[float]] = {0: [], 1: []}
    drops: dict[int, int] = {0: 0, 1: 0}
    counter = DropCounter()
    with (
        tempfile.TemporaryDirectory() as data,
        bench_server(model, Path(data), limits, args.send_buffer) as server,
    ):
        logging.getLogger("stepwatch.server.session").addHandler(counter)
        logging.getLogger("stepwatch.server.session").setLevel(logging.INFO)
        run_clients(_clients.watch_run, server.url, 1, {**fields, "steps": 10})  # warm up
        for repeat in range(args.repeats):
            for stalled in (0, 1) if repeat % 2 == 0 else (1, 0):
                before = counter.drops
                result = run_clients(_clients.watch_run, server.url, args.watchers, fields, stalled)
                server.wait_finished(result["run_id"])
                emitted = server.emitted(result["run_id"])
                paces[stalled].append(step_seconds(emitted))
                drops[stalled] += counter.drops - before
                for kind, values in latencies(result, emitted).items():
                    pooled[stalled][kind].extend(values)
                print(
                    f"repeat {repeat + 1}, slow watcher {'yes' if stalled else 'no'}: "
                    f"{paces[stalled][-1] * 1e3:.2f} ms/step"
                )
    rows, report = [], {}
    for stalled in (0, 1):
        progress = summary_ms(pooled[stalled]["progress"])
        check = summary_ms(pooled[stalled]["check"])
        pace = median(paces[stalled])
        rows.append(
            [
                "yes" if stalled else "no",
                progress["p50_ms"],
                progress["p99_ms"],
                check["p50_ms"],
                check["p99_ms"],
                pace * 1e3,
                drops[stalled],
            ]
        )
        report["with_slow" if stalled else "without_slow"] = {
            "progress": progress,
            "check": check,
            "step_ms": pace * 1e3,
            "step_ms_each": [p * 1e3 for p in paces[stalled]],
            "slow_consumer_drops": drops[stalled],
        }
    ratios = {
        "progress_p99": rows[1][2] / rows[0][2],
        "check_p99": rows[1][4] / rows[0][4],
        "sampler": rows[1][5] / rows[0][5],
    }
    print_table(
        f"{args.watchers} prompt watchers, with and without one that stops reading, {args.model}",
        [
            "slow watcher",
            "progress p50 ms",
            "p99 ms",
            "check p50 ms",
            "p99 ms",
            "ms/step",
            "dropped",
        ],
        rows,
    )
    print(
        f"\nratios with/without: progress p99 {ratios['progress_p99']:.2f}x, check p99 "
        f"{ratios['check_p99']:.2f}x, sampler {ratios['sampler']:.3f}x"
    )
    path = write_results(
        "slow_client" if not args.size else f"slow_client-{args.size}px",
        {
            "model": args.model,
            "fields": fields,
            "watchers": args.watchers,
            "results": report,
            "ratios": ratios,
            "targets": {"p99_ratio": 2.0, "sampler_ratio": 1.05},
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
