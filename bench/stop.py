"""How fast ``stop`` stops a run: time and steps from sending it to ``applied`` and ``finished``.

One client starts runs one after another and stops each once its progress reached a chosen
step (spread over the run, seeded). It records the last step it had seen when it sent ``stop``,
the step in ``applied``, ``steps_run`` in ``finished``, and the time from sending ``stop`` to
receiving each. ``finish`` stops decode the x0 estimate into the image and store it before
``finished`` is sent; ``abort`` stops return no image.

Target: the run ends within 1 step of the step the client saw (``steps_run - seen <= 1``).

Prints a table and writes ``bench/results/stop.json``::

    .venv/bin/python bench/stop.py [--model tiny] [--repeats 20] [--steps 400]
"""

from __future__ import annotations

import argparse
import random
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import _clients
from _service import (
    bench_server,
    load_bench_model,
    median,
    percentile,
    print_table,
    run_clients,
    step_seconds,
    write_results,
)

from stepwatch.server.config import ServiceLimits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--prompt", default="red circle")
    parser.add_argument("--size", type=int, help="image width and height (model default)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    model = load_bench_model(args.model)
    fields: dict[str, Any] = {
        "prompt": args.prompt,
        "seed": 3,
        "steps": args.steps,
        "check_interval": 5,
        "early_stop": False,
        "quality_threshold": 0.0,
        **({"width": args.size, "height": args.size} if args.size else {}),
    }
    choose = random.Random(0)
    stop_at = [choose.randrange(5, min(60, args.steps - 5)) for _ in range(args.repeats)]
    rows, report = [], {}
    with (
        tempfile.TemporaryDirectory() as data,
        bench_server(model, Path(data), ServiceLimits(), None) as server,
    ):
        for mode in ("finish", "abort"):
            outcomes = run_clients(
                _clients.stop_runs, server.url, args.repeats, fields, stop_at, mode
            )
            paces = [step_seconds(server.emitted(outcome["run_id"])) for outcome in outcomes]
            step_ms = median(paces) * 1e3
            after = [outcome["steps_run"] - outcome["seen_step"] for outcome in outcomes]
            applied = [outcome["applied_ms"] for outcome in outcomes]
            finished = [outcome["finished_ms"] for outcome in outcomes]
            assert all(outcome["reason"] == "stopped" for outcome in outcomes)
            assert all(outcome["image"] == (mode == "finish") for outcome in outcomes)
            within = sum(1 for steps in after if steps <= 1) / len(after)
            rows.append(
                [
                    mode,
                    step_ms,
                    percentile(applied, 50),
                    percentile(applied, 99),
                    percentile(finished, 50),
                    percentile(finished, 99),
                    dict(sorted(Counter(after).items())),
                    f"{within * 100:.0f}%",
                ]
            )
            report[mode] = {
                "step_ms": step_ms,
                "applied_ms": {"p50": percentile(applied, 50), "p99": percentile(applied, 99)},
                "finished_ms": {"p50": percentile(finished, 50), "p99": percentile(finished, 99)},
                "steps_after_seen": after,
                "within_one_step": within,
                "outcomes": outcomes,
            }
    print_table(
        f"stop -> applied / finished, {args.model}, {args.repeats} runs per mode",
        [
            "mode",
            "ms/step",
            "applied p50 ms",
            "p99",
            "finished p50 ms",
            "p99",
            "steps after seen: runs",
            "<= 1 step",
        ],
        rows,
    )
    path = write_results(
        "stop" if not args.size else f"stop-{args.size}px",
        {
            "model": args.model,
            "fields": fields,
            "stop_at": stop_at,
            "results": report,
            "target": {"steps_after_seen": 1},
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
