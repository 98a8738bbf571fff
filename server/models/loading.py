"""Loading the models an operator configures: :class:`ModelSpec` and :func:`load_model`.

A model is configured as ``NAME=SOURCE[,option=value...]``::

    shapes=builtin:shapes                          the built-in model (the default)
    sd15=/models/stable-diffusion-v1-5,device=cuda,dtype=float16,tiny_vae=/models/taesd
    sdxl=stabilityai/stable-diffusion-xl-base-1.0,dtype=float16

``SOURCE`` is ``builtin:shapes``, a local diffusers pipeline folder, or a Hugging Face hub id.
Options:

- ``device``: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:N``, ``mps``;
- ``dtype``: ``auto`` (float16 on CUDA, float32 elsewhere), ``float32``, ``float16``,
  ``bfloat16``;
- ``tiny_vae``: a local folder or hub id of a diffusers ``AutoencoderTiny`` (TAESD) matching the
  model's latent space, which adds the cheap ``tiny`` preview decoder.

Only the operator names sources; clients choose among loaded models by name. Hub ids download
when the operator configures one; nothing in the default service or the tests does.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

from stepwatch.server.engine.errors import ModelError
from stepwatch.server.engine.model import LoadedModel, PromptVocabulary, describe_pipeline
from stepwatch.server.engine.policy import CLEAN
from stepwatch.server.engine.verifiers import ModelVerifier, VerifierEntry, VerifierScore

BUILTIN_SHAPES = "builtin:shapes"
DEFAULT_MODEL = f"shapes={BUILTIN_SHAPES}"
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
ADHERENCE = "adherence"


@dataclass(frozen=True)
class ModelSpec:
    """One configured model: its name for clients, where it comes from, and how to run it."""

    name: str
    source: str
    device: str = "auto"
    dtype: str = "auto"
    tiny_vae: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ModelError(f"a model name is letters, digits, '-' and '_'; got {self.name!r}")
        if not self.source:
            raise ModelError(f"model {self.name!r} names no source")
        if self.device.partition(":")[0] not in DEVICES:
            raise ModelError(f"device must be one of {', '.join(DEVICES)}; got {self.device!r}")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ModelError(
                f"dtype must be auto or one of {', '.join(DTYPES)}; got {self.dtype!r}"
            )

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """Parse ``NAME=SOURCE[,option=value...]``; raise :class:`ModelError` when malformed."""
        name, equals, rest = text.strip().partition("=")
        if not equals:
            raise ModelError(
                f"a model is configured as NAME=SOURCE[,option=value...]; got {text!r}"
            )
        source, *options = rest.split(",")
        known = {f.name for f in fields(cls)} - {"name", "source"}
        values: dict[str, str] = {}
        for option in options:
            key, equals, value = option.partition("=")
            if not equals or key.strip() not in known:
                raise ModelError(f"unknown model option {option!r}; options: {', '.join(known)}")
            values[key.strip()] = value.strip()
        return cls(name=name.strip(), source=source.strip(), **values)

    @property
    def is_builtin(self) -> bool:
        """Whether this is the built-in model that ships in the package."""
        return self.source.startswith("builtin:")


def resolve_device(name: str) -> torch.device:
    """Turn a device option into a device (``auto``: CUDA when available, else the CPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("device cuda is configured but no CUDA device is available")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """Turn a dtype option into a dtype (``auto``: float16 on CUDA, float32 elsewhere)."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def load_model(spec: ModelSpec) -> LoadedModel:
    """Load the model ``spec`` names, onto its device, ready for runs.

    Raises :class:`ModelError` (with the cause chained) when it cannot be loaded or watched.
    """
    device = resolve_device(spec.device)
    if spec.is_builtin:
        if spec.source != BUILTIN_SHAPES:
            raise ModelError(f"unknown built-in model {spec.source!r}; one of {BUILTIN_SHAPES}")
        if spec.tiny_vae is not None:
            raise ModelError("the built-in model is pixel-space; it has no use for a tiny_vae")
        return load_builtin_model(spec.name, device)
    dtype = resolve_dtype(spec.dtype, device)
    return _load_diffusers(spec, device, dtype)


def _load_diffusers(spec: ModelSpec, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    from diffusers import AutoencoderTiny, DiffusionPipeline

    try:
        pipeline = DiffusionPipeline.from_pretrained(spec.source, dtype=dtype)  # type: ignore[no-untyped-call]
        pipeline = pipeline.to(device)
        tiny = None
        if spec.tiny_vae is not None:
            tiny = AutoencoderTiny.from_pretrained(spec.tiny_vae, dtype=dtype)  # type: ignore[no-untyped-call]
            tiny = tiny.to(device)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelError(f"cannot load model {spec.name!r} from {spec.source!r}: {exc}") from exc
    return describe_pipeline(spec.name, pipeline, tiny_autoencoder=tiny)


class AdherenceVerifier:
    """The built-in model's prompt-adherence classifier as a :class:`~.verifiers.Verifier`.

    Scores P(every attribute the prompt names | image), with one component per attribute.
    """

    def __init__(self, scorer: Any) -> None:
        self.scorer = scorer

    def score(self, images: torch.Tensor, prompt: str) -> list[VerifierScore]:
        return [
            VerifierScore(value, components)
            for value, components in self.scorer.score(images, prompt)
        ]


def load_builtin_model(name: str, device: torch.device) -> LoadedModel:
    """Load the built-in shapes model (float32; it is small) as a :class:`LoadedModel`."""
    from stepwatch.server.models.builtin import (
        AdherenceScorer,
        load_builtin,
        parse_prompt,
        vocabulary,
    )
    from stepwatch.server.models.builtin.curves import load_curves

    pipeline = load_builtin(device=device, dtype=torch.float32)
    words = vocabulary()

    def adherence_factory() -> AdherenceVerifier:
        return AdherenceVerifier(AdherenceScorer.load(device))

    adherence = ModelVerifier(
        VerifierEntry(
            ADHERENCE,
            "P(prompted attributes | image), built-in model only; clean: how finished it looks",
            name,
            components=(*(a.name for a in words.attributes), CLEAN),
        ),
        adherence_factory,
    )
    return describe_pipeline(
        name,
        pipeline,
        vocabulary=PromptVocabulary(
            attributes={a.name: a.values for a in words.attributes},
            description=words.describe(),
        ),
        prompt_check=parse_prompt,
        verifiers=(adherence,),
        fixed_size=True,
        curves=load_curves(),
    )
