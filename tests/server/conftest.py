"""Fixtures shared by the server tests: the built-in model and tiny pipelines, each built once."""

from __future__ import annotations

import os

# Before anything imports huggingface_hub, which reads it once: nothing in the tests downloads.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline  # noqa: E402
from scripted_engine import ScriptedEngine  # noqa: E402
from tiny_models import (  # noqa: E402
    Recorder,
    make_flux_pipeline,
    make_sd3_pipeline,
    make_sd_pipeline,
    make_sdxl_pipeline,
    make_tiny_autoencoder,
    with_usual_curves,
)

from stepwatch.server.engine.model import LoadedModel, describe_pipeline  # noqa: E402
from stepwatch.server.models.loading import DEFAULT_MODEL, ModelSpec, load_model  # noqa: E402


@pytest.fixture(scope="session")
def sd_pipeline() -> Iterator[StableDiffusionPipeline]:
    yield make_sd_pipeline()


@pytest.fixture(scope="session")
def sdxl_pipeline() -> Iterator[StableDiffusionXLPipeline]:
    yield make_sdxl_pipeline()


@pytest.fixture(scope="session")
def shapes_model() -> LoadedModel:
    """The built-in model, from the weights that ship in the package."""
    return load_model(ModelSpec.parse(f"{DEFAULT_MODEL},device=cpu"))


@pytest.fixture(scope="session")
def sd3_model() -> LoadedModel:
    return describe_pipeline("tiny-sd3", make_sd3_pipeline())


@pytest.fixture(scope="session")
def flux_model() -> LoadedModel:
    return describe_pipeline("tiny-flux", make_flux_pipeline())


@pytest.fixture(scope="session")
def sd_model(sd_pipeline: StableDiffusionPipeline) -> LoadedModel:
    return describe_pipeline("tiny-sd", sd_pipeline, tiny_autoencoder=make_tiny_autoencoder())


@pytest.fixture(scope="session")
def sdxl_model(sdxl_pipeline: StableDiffusionXLPipeline) -> LoadedModel:
    return describe_pipeline("tiny-sdxl", sdxl_pipeline)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


# -- the service's tests (tests/server/service) ---------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def served_model() -> LoadedModel:
    """The tiny SD model the service tests serve (its own pipeline: servers run it in threads)."""
    return with_usual_curves(describe_pipeline("tiny", make_sd_pipeline()))


@pytest.fixture(scope="session")
def large_preview_model() -> LoadedModel:
    """A tiny SD model whose previews are full VAE decodes at the image's size: runs of it
    send large frames (a 128×128 PNG preview is about 50 KB), as real models do."""
    return describe_pipeline(
        "tiny-vae", make_sd_pipeline(seed=1), overrides={"preview_decoder": "vae"}
    )


@pytest.fixture
def scripted() -> ScriptedEngine:
    """The scripted engine (at the service's engine interface), 10 ms a step: for service tests
    about the service, not about denoising."""
    return ScriptedEngine(step_seconds=0.01)
