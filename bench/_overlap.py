"""Strict against overlapped checks, for ``bench/overhead.py --part overlap`` (see its docstring).

Every configuration is the monitored run with policy actions off (threshold 0, no early stop), so
all of them do the same denoising work; ``none`` checks never (its interval is beyond the last
step) and is each repeat's yardstick. Configurations are interleaved round-robin, rotated each
repeat; a row's ratio is the median, with quartiles, of its wall time over the ``none`` run's wall
time in the same repeat.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stepwatch.server.engine.control import RunControl
from stepwatch.server.engine.events import EngineEvent
from stepwatch.server.engine.model import LoadedModel, describe_pipeline
from stepwatch.server.engine.monitor import run_monitored
from stepwatch.server.engine.params import RequestedParams
from stepwatch.server.engine.verifiers import SIMPLE, VerifierRegistry

sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "server"))

from tiny_models import make_sd_pipeline  # noqa: E402

INTERVALS = (1, 5)
NEVER = 1000  # a check interval beyond every run's last step
SIZE = 512


@dataclass(frozen=True)
class Setup:
    """One model's runs: its request and the decoders to compare."""

    name: str
    model: LoadedModel
    request: RequestedParams
    decoders: tuple[str, ...]


def tiny_sd_512() -> LoadedModel:
    """The tests' tiny SD 1.x UNet on 64×64 latents, with an 8× VAE of four small levels as the
    full decoder and a random-weight ``AutoencoderTiny`` of TAESD's layout (four blocks, three
    upsamplings), eight channels wide, as ``tiny``."""
    from diffusers import AutoencoderKL, AutoencoderTiny, StableDiffusionPipeline

    torch.manual_seed(0)
    parts = make_sd_pipeline().components
    vae = AutoencoderKL(
        block_out_channels=(8, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=SIZE,
        scaling_factor=0.18215,
    )
    taesd = AutoencoderTiny(
        encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4
    )
    pipeline = StableDiffusionPipeline(**{**parts, "vae": vae})
    pipeline.set_progress_bar_config(disable=True)
    return describe_pipeline("tiny-sd-512", pipeline, tiny_autoencoder=taesd)


def _discard(event: EngineEvent) -> None:
    """A sink as cheap as a server's non-blocking hand-off."""


def _configs(setup: Setup) -> list[tuple[str, RequestedParams]]:
    base = setup.request
    configs = [("none", _with(base, check_interval=NEVER))]
    for decoder in setup.decoders:
        for interval in INTERVALS:
            for mode in ("strict", "overlapped"):
                request = _with(base, check_interval=interval, preview_decoder=decoder, checks=mode)
                configs.append((f"{decoder} every {interval} {mode}", request))
    return configs


def _with(request: RequestedParams, **changes: Any) -> RequestedParams:
    from dataclasses import replace

    return replace(request, **changes)


def _measure(
    setup: Setup, registry: VerifierRegistry, repeats: int, progress: Any = None
) -> dict[str, Any]:
    """Time ``setup``'s configurations; ``progress`` receives the result so far after each
    repeat (a long run on a busy machine leaves its figures behind if it is stopped)."""
    configs = _configs(setup)
    resolved = [setup.model.resolve(request) for _, request in configs]

    def once(index: int) -> float:
        start = time.perf_counter()
        result = run_monitored(setup.model, resolved[index], registry, RunControl(), _discard)
        assert result.reason == "completed", result.error
        return time.perf_counter() - start

    once(0)  # warm up: the first call allocates; each decoder's first decode too
    for decoder in setup.decoders:
        once(next(i for i, (_, r) in enumerate(configs) if r.preview_decoder == decoder))
    walls: list[list[float]] = [[] for _ in configs]
    for repeat in range(repeats):
        offset = repeat % len(configs)
        for index in [*range(offset, len(configs)), *range(offset)]:
            walls[index].append(once(index))
        if progress is not None:
            progress(_summary(setup, configs, resolved, walls))
    return _summary(setup, configs, resolved, walls)


def _summary(
    setup: Setup, configs: list[tuple[str, RequestedParams]], resolved: list[Any],
    walls: list[list[float]],
) -> dict[str, Any]:  # fmt: skip
    rows = []
    for (name, request), times in zip(configs, walls, strict=True):
        paired = [t / b for t, b in zip(times, walls[0], strict=True)]
        q1, median, q3 = statistics.quantiles(paired, n=4) if len(paired) > 1 else [paired[0]] * 3
        rows.append(
            {
                "config": name,
                "preview_decoder": request.preview_decoder,
                "check_interval": request.check_interval,
                "checks": request.checks,
                "median_wall_s": statistics.median(times),
                "paired_wall_ratio": median,
                "paired_wall_ratio_quartiles": [q1, q3],
                "runs": len(times),
            }
        )
    params = resolved[0].parameters
    return {
        "model": setup.name, "steps": params.steps, "sampler": params.sampler,
        "cfg": params.cfg, "width": params.width, "verifier": params.verifier, "rows": rows,
    }  # fmt: skip


def measure_overlap(
    builtin: LoadedModel, registry: VerifierRegistry, repeats: int, progress: Any = None
) -> list[dict[str, Any]]:
    """Strict and overlapped checks against none, on the built-in model and tiny SD at 512 px;
    ``progress`` receives every result so far after each repeat."""
    tiny = tiny_sd_512()
    setups = [
        Setup(
            "built-in shapes, 32 px",
            builtin,
            RequestedParams(
                "small red triangle on a dark background",
                seed=0,
                quality_threshold=0.0,
                early_stop=False,
            ),  # fmt: skip
            (builtin.defaults.preview_decoder,),
        ),
        Setup(
            "tiny SD 1.x, 512 px",
            tiny,
            RequestedParams(
                "red circle",
                seed=0,
                steps=10,
                cfg=3.0,
                width=SIZE,
                height=SIZE,
                verifier=SIMPLE,
                quality_threshold=0.0,
                early_stop=False,
            ),  # fmt: skip
            ("tiny", "vae"),
        ),
    ]
    done: list[dict[str, Any]] = []
    for setup in setups:
        report = None if progress is None else (lambda now: progress([*done, now]))
        done.append(_measure(setup, registry, repeats, report))
    return done


def print_overlap(results: list[dict[str, Any]]) -> None:
    for result in results:
        print(
            f"\n{result['model']}: {result['steps']} steps {result['sampler']}, cfg "
            f"{result['cfg']:g}, verifier {result['verifier']} (wall time over the run with no "
            f"checks in the same repeat, median of {result['rows'][0]['runs']}, quartiles)"
        )
        for row in result["rows"]:
            low, high = row["paired_wall_ratio_quartiles"]
            print(
                f"  {row['config']:<30} {row['median_wall_s']:>8.3f} s "
                f"{row['paired_wall_ratio']:>7.3f}x ({low:.3f}-{high:.3f})"
            )
