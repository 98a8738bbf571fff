"""Loading configured models: spec parsing, local diffusers folders, offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import Recorder, make_sd_pipeline, make_tiny_autoencoder

from stepwatch.server.engine.control import RunControl
from stepwatch.server.engine.errors import ModelError
from stepwatch.server.engine.model import Family
from stepwatch.server.engine.monitor import run_monitored
from stepwatch.server.engine.params import RequestedParams
from stepwatch.server.engine.verifiers import VerifierRegistry
from stepwatch.server.models.loading import (
    DEFAULT_MODEL,
    ModelSpec,
    load_model,
    resolve_device,
    resolve_dtype,
)


def test_a_spec_names_a_model_its_source_and_options() -> None:
    spec = ModelSpec.parse("sd15=/models/sd-v1-5,device=cpu,dtype=float16,tiny_vae=/models/taesd")
    assert spec == ModelSpec("sd15", "/models/sd-v1-5", "cpu", "float16", "/models/taesd")
    assert not spec.is_builtin
    default = ModelSpec.parse(DEFAULT_MODEL)
    assert (default.name, default.source, default.is_builtin) == ("shapes", "builtin:shapes", True)
    hub = ModelSpec.parse("sdxl = stabilityai/stable-diffusion-xl-base-1.0")
    assert hub.source == "stabilityai/stable-diffusion-xl-base-1.0" and hub.device == "auto"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("just-a-path", "NAME=SOURCE"),
        ("sd=/m,colour=red", "unknown model option"),
        ("sd=/m,device=tpu", "device must be"),
        ("sd=/m,dtype=float64", "dtype must be"),
        ("bad name=/m", "a model name"),
        ("sd=", "names no source"),
    ],
)
def test_malformed_specs_are_clear_errors(text: str, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        ModelSpec.parse(text)


def test_devices_and_dtypes_resolve() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) is torch.float16
    assert resolve_dtype("bfloat16", torch.device("cpu")) is torch.bfloat16
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ModelError, match="no CUDA device"):
            resolve_device("cuda")


def test_a_local_diffusers_folder_loads_and_runs(tmp_path: Path, recorder: Recorder) -> None:
    make_sd_pipeline(seed=5).save_pretrained(tmp_path / "sd")
    make_tiny_autoencoder().save_pretrained(tmp_path / "taesd")
    spec = ModelSpec.parse(f"local={tmp_path / 'sd'},device=cpu,tiny_vae={tmp_path / 'taesd'}")
    model = load_model(spec)
    assert model.name == "local" and model.family is Family.SD
    assert list(model.decoders) == ["linear", "tiny", "vae"]
    tokenizer = model.pipeline.tokenizer
    assert len(tokenizer("red circle").input_ids) == 11, "the saved tokenizer must still tokenize"
    params = RequestedParams(
        "red circle", steps=4, check_interval=2, preview_decoder="tiny", seed=0
    )
    result = run_monitored(model, model.resolve(params), VerifierRegistry(), RunControl(), recorder)
    assert result.reason == "completed" and len(recorder.checks) == 2


def test_a_missing_folder_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot load model 'gone'"):
        load_model(ModelSpec("gone", str(tmp_path / "nothing-here"), device="cpu"))


def test_unknown_builtin_models_are_refused() -> None:
    with pytest.raises(ModelError, match="unknown built-in model"):
        load_model(ModelSpec("x", "builtin:faces", device="cpu"))
