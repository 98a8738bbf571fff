"""Runs that share a batch: N runs of the built-in model submitted at once against the same N
one after another, through the real server and the real client.

For N = 1, 4 and 8 (``--runs``), in one invocation and one server (``max_batch`` 8, the
default admission rule, see server/runs.py), each round does, in alternating order:

- ``concurrent``: N clients (one session each, in a child process) start one run each at the
  same moment and wait for its ``finished``;
- ``sequential``: the same N runs (same prompts and seeds), each started when the one before
  finished: every one of them runs alone, on today's lone path.

Per mode: the wall time until the last ``finished``, images per second, and each run's time
from its ``start`` to its ``finished`` (median [q1, q3] over all runs of all rounds); the ratio
sequential / concurrent of the wall times, measured in the same round; the denoiser batch sizes
the server's UNet saw (rows per call: the proof the runs shared calls); and the largest pixel
difference (0..255) between a concurrent run's image and the sequential (lone) run of the same
prompt and seed. Runs: CFG 1 (``--cfg``; a run with CFG above 1 is batched only when its
policy cannot raise it, so the benchmark sets ``cfg_max`` = ``cfg``), early stopping off (an
early stop in a batch ends with the lane's estimate instead of a lone run's finishing tail, so
the images would differ by design), checks every 5 steps, 20 steps of the model's default
sampler, one torch thread for the sampler. It also times the UNet alone at batch 1, 4 and 8:
a batch of N can finish at most N × t(1) / t(N) times sooner than N lone runs, whatever the
service does (on a CPU, where a batch of 8 costs several batches of 1, that bounds the ratio
well below N). Prints the table and writes
``bench/results/throughput.json``::

    nice -n 10 .venv/bin/python bench/throughput.py [--rounds 3] [--runs 1 4 8]

The timings come from whatever machine it runs on; on a shared machine, read the ratios (each
measured within one round) rather than the seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _service import load_bench_model, percentile, print_table, run_clients, write_results
from PIL import Image

from stepwatch.server.config import DEFAULT_MODEL, ServerConfig
from stepwatch.server.engine.lanes import DenoiserCounter
from stepwatch.server.harness import ServerThread

PROMPTS = (
    "red circle",
    "blue square",
    "green triangle",
    "small yellow circle",
    "large purple square on a light background",
    "orange triangle",
    "small blue circle on a dark background",
    "large red triangle",
)
TARGET = 3.0  # 8 concurrent runs finish at least this many times sooner than 8 sequential


def run_fields(index: int, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "prompt": PROMPTS[index % len(PROMPTS)],
        "seed": 1000 + index,
        "steps": args.steps,
        "cfg": args.cfg,
        "cfg_max": args.cfg,
        "early_stop": False,
        "check_interval": 5,
    }


# -- the clients (a child process) ---------------------------------------------------------


async def _one(
    url: str, fields: dict[str, Any], ready: asyncio.Event, connected: asyncio.Queue[None]
) -> tuple[float, bytes]:
    from stepwatch.client import connect

    async with connect(url, client="bench/throughput") as session:
        connected.put_nowait(None)
        await ready.wait()
        begun = time.perf_counter()
        run = await session.generate(
            fields["prompt"], **{k: v for k, v in fields.items() if k != "prompt"}
        )
        result = await run.result()
        assert result.png is not None and result.reason == "completed", result
        return time.perf_counter() - begun, result.png


async def _concurrent(url: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    ready, connected = asyncio.Event(), asyncio.Queue[None]()
    tasks = [asyncio.create_task(_one(url, fields, ready, connected)) for fields in runs]
    for _ in runs:  # every session connected and said hello before any starts
        await connected.get()
    begun = time.perf_counter()
    ready.set()
    done = await asyncio.gather(*tasks)
    return {
        "wall": time.perf_counter() - begun,
        "times": [t for t, _ in done],
        "pngs": [p for _, p in done],
    }


async def _sequential(url: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    times, pngs = [], []
    begun = time.perf_counter()
    for fields in runs:
        ready = asyncio.Event()
        ready.set()
        elapsed, png = await _one(url, fields, ready, asyncio.Queue())
        times.append(elapsed)
        pngs.append(png)
    return {"wall": time.perf_counter() - begun, "times": times, "pngs": pngs}


def clients(url: str, mode: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Run ``runs`` against ``url`` in ``mode`` (``concurrent`` or ``sequential``)."""
    measure = _concurrent if mode == "concurrent" else _sequential
    return asyncio.run(measure(url, runs))


def in_child(url: str, mode: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """:func:`clients` in a child process (the clients do not share the server's GIL)."""
    return run_clients(clients, url, mode, runs)  # type: ignore[no-any-return]


# -- the server side -------------------------------------------------------------------------


def denoiser_scaling(
    model: Any, batches: tuple[int, ...] = (1, 4, 8), repeats: int = 10
) -> dict[str, float]:
    """Seconds per UNet call at each batch size (one thread, CFG off), measured here: a batch
    of N can finish at most N × t(1) / t(N) times sooner than N lone runs."""
    import torch

    pipeline = model.pipeline
    embeds, _ = pipeline.encode_prompt("red circle", torch.device("cpu"), 1, None)
    size = pipeline.unet.config.sample_size
    timing: dict[str, float] = {}
    with torch.no_grad():
        for batch in batches:
            sample = torch.randn(batch, 3, size, size)
            conditions = embeds.repeat(batch, 1)
            pipeline.unet(sample, torch.tensor(500), class_labels=conditions)
            begun = time.perf_counter()
            for _ in range(repeats):
                pipeline.unet(sample, torch.tensor(500), class_labels=conditions)
            timing[str(batch)] = (time.perf_counter() - begun) / repeats
    return timing


def pixels(png: bytes) -> np.ndarray[Any, Any]:
    return np.asarray(Image.open(io.BytesIO(png)), dtype=np.int16)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    model = load_bench_model(f"{DEFAULT_MODEL},device=cpu")
    results: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as data:
        config = ServerConfig(
            data_dir=Path(data),
            sampler_threads=1,
            entry_point_verifiers=False,
            max_batch=args.max_batch,
        )
        with ServerThread(config, lambda _config: [model], log_level="warning") as server:
            for count in args.runs:
                runs = [run_fields(i, args) for i in range(count)]
                rounds = []
                for index in range(args.rounds):
                    order = ("concurrent", "sequential")[:: 1 if index % 2 == 0 else -1]
                    measured = {}
                    for mode in order:
                        counter = DenoiserCounter()
                        counter.attach(model.pipeline)
                        try:
                            measured[mode] = in_child(server.url, mode, runs)
                        finally:
                            counter.detach()
                        measured[mode]["batch_sizes"] = sorted(set(counter.batch_sizes))
                    diff = max(
                        int(np.abs(pixels(a) - pixels(b)).max())
                        for a, b in zip(
                            measured["concurrent"]["pngs"],
                            measured["sequential"]["pngs"],
                            strict=True,
                        )
                    )
                    rounds.append(
                        {
                            mode: {k: v for k, v in value.items() if k != "pngs"}
                            for mode, value in measured.items()
                        }
                        | {"max_pixel_difference": diff}
                    )
                    print(f"runs {count} round {index + 1}: " + ", ".join(
                        f"{mode} {measured[mode]['wall']:.2f} s" for mode in order
                    ) + f", max pixel difference {diff}", flush=True)  # fmt: skip
                results[count] = summarise(rounds)
        scaling = denoiser_scaling(model)
    return {"runs": {str(count): value for count, value in results.items()}, "denoiser": scaling}


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {"rounds": rounds}
    for mode in ("concurrent", "sequential"):
        walls = [r[mode]["wall"] for r in rounds]
        times = [t for r in rounds for t in r[mode]["times"]]
        count = len(rounds[0][mode]["times"])
        summary[mode] = {
            "wall_s": [round(percentile(walls, q), 3) for q in (25, 50, 75)],
            "images_per_s": round(count / percentile(walls, 50), 3),
            "time_to_finished_s": [round(percentile(times, q), 3) for q in (25, 50, 75)],
            "batch_sizes": sorted({b for r in rounds for b in r[mode]["batch_sizes"]}),
        }
    ratios = [r["sequential"]["wall"] / r["concurrent"]["wall"] for r in rounds]
    summary["sequential_over_concurrent"] = [round(percentile(ratios, q), 3) for q in (25, 50, 75)]
    summary["max_pixel_difference"] = max(r["max_pixel_difference"] for r in rounds)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=1.0)
    parser.add_argument("--max-batch", type=int, default=ServerConfig.max_batch)
    parser.add_argument("--note", default="", help="a line about the machine, kept in the JSON")
    args = parser.parse_args()
    measured = measure(args)
    results, scaling = measured["runs"], measured["denoiser"]
    rows = []
    for count, value in results.items():
        c, s = value["concurrent"], value["sequential"]
        rows.append(
            [
                count,
                f"{c['wall_s'][1]:.2f} [{c['wall_s'][0]:.2f}, {c['wall_s'][2]:.2f}]",
                f"{s['wall_s'][1]:.2f} [{s['wall_s'][0]:.2f}, {s['wall_s'][2]:.2f}]",
                "{1:.2f} [{0:.2f}, {2:.2f}]".format(*value["sequential_over_concurrent"]),
                c["images_per_s"],
                s["images_per_s"],
                "{1:.2f} [{0:.2f}, {2:.2f}]".format(*c["time_to_finished_s"]),
                "{1:.2f} [{0:.2f}, {2:.2f}]".format(*s["time_to_finished_s"]),
                ",".join(map(str, c["batch_sizes"])),
                value["max_pixel_difference"],
            ]
        )
    print_table(
        f"throughput: built-in model, {args.steps} steps, CFG {args.cfg:g}, max_batch "
        f"{args.max_batch}, {args.rounds} rounds (median [q1, q3]; target: 8 runs >= {TARGET:g}x)",
        [
            "runs",
            "concurrent s",
            "sequential s",
            "seq/conc",
            "img/s conc",
            "img/s seq",
            "to finished conc s",
            "to finished seq s",
            "batch sizes",
            "max px diff",
        ],
        rows,
    )
    print(
        "\ndenoiser seconds per call by batch size (one thread): "
        + ", ".join(f"{b}: {t * 1000:.1f} ms" for b, t in scaling.items())
        + "; the most N runs at once can gain over N lone runs: "
        + ", ".join(f"{b}: {int(b) * scaling['1'] / t:.2f}x" for b, t in scaling.items())
    )
    settings = {k: v for k, v in vars(args).items()}
    payload = {"settings": settings, "results": results, "denoiser_seconds_per_call": scaling}
    path = write_results("throughput", payload)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
