"""A learned verifier for real models: prompt–image similarity under CLIP, and an optional
aesthetic head on CLIP's image embedding.

The operator configures it, never a client (see :func:`parse_clip_spec`)::

    --verifier clip=clip:/models/clip-vit-large-patch14
    --verifier clip=clip:openai/clip-vit-base-patch32,aesthetic=/models/aesthetic.safetensors

``SOURCE`` is a local folder saved by transformers' ``CLIPModel.save_pretrained`` or a hub id
(downloaded when the operator configures one, as models are; with ``HF_HUB_OFFLINE=1`` only the
local cache is read). The model loads when the server starts, so a bad source is refused then.

Scores, per image (RGB in [0, 1] at the preview decoder's resolution):

- ``clip``: CLIPScore (Hessel et al. 2021, "CLIPScore: A Reference-free Evaluation Metric for
  Image Captioning"), ``min(1, 2.5 · max(cos(image, prompt), 0))``: the cosine similarity of the
  image and prompt embeddings, rescaled as the paper does (matching pairs under ViT-B/32 sit
  near a cosine of 0.3, so near 0.75 here);
- ``aesthetic`` (when a head is configured): a stack of linear layers applied in order to the
  L2-normalised image embedding, read from a safetensors file whose ``<n>.weight`` /
  ``<n>.bias`` tensors are the layers in the order of ``n`` (the layout of the LAION aesthetic
  predictor's MLP, which has no activations between its linear layers), giving a rating on
  1–10, mapped to [0, 1] by ``(rating − 1) / 9``.

The score is ``clip``, or the mean of ``clip`` and ``aesthetic`` with a head. Images are resized
(bicubic) to CLIP's input size and normalised with its image statistics; the prompt's embedding
is computed once per prompt and kept. What a check costs is measured by
``bench/clip_verifier.py`` (see the README).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .errors import VerifierError
from .verifiers import VerifierScore

#: The scheme of a CLIP verifier's source in ``--verifier ID=clip:SOURCE[,aesthetic=PATH]``.
CLIP_SCHEME = "clip:"
#: CLIPScore's rescaling weight (Hessel et al. 2021).
CLIPSCORE_WEIGHT = 2.5
#: The image statistics CLIP was trained with, when the source has no preprocessor config.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_LAYER = re.compile(r"^(?:.*\.)?(\d+)\.(weight|bias)$")


@dataclass(frozen=True)
class ClipSpec:
    """A configured CLIP verifier: its id, its CLIP source and its aesthetic head, if any."""

    verifier_id: str
    source: str
    aesthetic: str | None = None

    @property
    def description(self) -> str:
        head = " and an aesthetic head" if self.aesthetic else ""
        return (
            f"CLIP prompt-image similarity (CLIPScore) from {self.source}{head} "
            f"(components: {', '.join(self.components)})"
        )

    @property
    def components(self) -> tuple[str, ...]:
        return ("clip", "aesthetic") if self.aesthetic else ("clip",)


def is_clip_spec(spec: str) -> bool:
    """Whether a ``--verifier`` text names a CLIP verifier (``[id=]clip:SOURCE...``)."""
    _, _, rest = spec.partition("=")
    return spec.startswith(CLIP_SCHEME) or rest.startswith(CLIP_SCHEME)


def parse_clip_spec(spec: str) -> ClipSpec:
    """Parse ``[ID=]clip:SOURCE[,aesthetic=PATH]`` (the id defaults to ``clip``)."""
    verifier_id, _, rest = spec.partition("=")
    if spec.startswith(CLIP_SCHEME):
        verifier_id, rest = "clip", spec
    source, *options = rest.removeprefix(CLIP_SCHEME).split(",")
    aesthetic = None
    for option in options:
        key, equals, value = option.partition("=")
        if key.strip() != "aesthetic" or not equals or not value.strip():
            raise VerifierError(f"a CLIP verifier takes one option, aesthetic=PATH; got {option!r}")
        aesthetic = value.strip()
    if not source.strip():
        raise VerifierError(f"a CLIP verifier is [id=]clip:SOURCE[,aesthetic=PATH], got {spec!r}")
    return ClipSpec(verifier_id.strip(), source.strip(), aesthetic)


class ClipScoreVerifier:
    """Scores images by CLIP similarity to the prompt (and an aesthetic head); see the module.

    Loads the model at construction; raises :class:`~.errors.VerifierError` when it cannot.
    Moves itself to the device of the images it is given.
    """

    def __init__(self, spec: ClipSpec) -> None:
        from transformers import CLIPModel, CLIPTokenizer

        try:
            self.model = CLIPModel.from_pretrained(spec.source).eval()
            self.tokenizer = CLIPTokenizer.from_pretrained(spec.source)
        except (OSError, ValueError) as exc:
            raise VerifierError(f"cannot load CLIP from {spec.source!r}: {exc}") from exc
        self.size = int(self.model.config.vision_config.image_size)
        mean, std = _image_statistics(spec.source)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.head = _load_head(spec.aesthetic) if spec.aesthetic else None
        self._lock = threading.Lock()
        self._prompts: dict[tuple[str, torch.device], torch.Tensor] = {}

    def score(self, images: torch.Tensor, prompt: str) -> list[VerifierScore]:
        with self._lock, torch.inference_mode():
            device = images.device
            if self.model.device != device:
                self.model.to(device)
                self.mean, self.std = self.mean.to(device), self.std.to(device)
            pixels = F.interpolate(
                images.float(), size=(self.size, self.size), mode="bicubic", align_corners=False
            )
            pixels = (pixels.clamp(0, 1) - self.mean) / self.std
            image = _normalised(self.model.get_image_features(pixel_values=pixels))
            similarity = (image @ self._prompt_embedding(prompt, device).T).squeeze(1)
            clip = (CLIPSCORE_WEIGHT * similarity.clamp(min=0)).clamp(max=1)
            if self.head is None:
                return [VerifierScore(float(c), {"clip": float(c)}) for c in clip.tolist()]
            rating = _apply_head(self.head, image)
            aesthetic = ((rating - 1) / 9).clamp(0, 1)
            return [
                VerifierScore((c + a) / 2, {"clip": c, "aesthetic": a})
                for c, a in zip(clip.tolist(), aesthetic.tolist(), strict=True)
            ]

    def _prompt_embedding(self, prompt: str, device: torch.device) -> torch.Tensor:
        key = (prompt, device)
        if key not in self._prompts:
            tokens = self.tokenizer(
                [prompt], padding=True, truncation=True, return_tensors="pt"
            ).to(device)
            self._prompts.clear()  # one prompt per run; keep only the latest
            self._prompts[key] = _normalised(self.model.get_text_features(**tokens))
        return self._prompts[key]


def _normalised(features: Any) -> torch.Tensor:
    # transformers 5 returns an output object; 4 returned the tensor itself.
    tensor: torch.Tensor = getattr(features, "pooler_output", features)
    return F.normalize(tensor.float(), dim=-1)


def _image_statistics(source: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    config = Path(source) / "preprocessor_config.json"
    if config.is_file():
        import json

        values = json.loads(config.read_text(encoding="utf-8"))
        mean, std = values.get("image_mean"), values.get("image_std")
        if isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3:
            return tuple(map(float, mean)), tuple(map(float, std))
    return CLIP_MEAN, CLIP_STD


Head = list[tuple[torch.Tensor, torch.Tensor | None]]


def _load_head(path: str) -> Head:
    """The linear layers of an aesthetic head file, in the order of their indices."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(path)
    except (OSError, ValueError, RuntimeError) as exc:
        raise VerifierError(f"cannot read the aesthetic head {path!r}: {exc}") from exc
    layers: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        match = _LAYER.match(name)
        if match is None:
            raise VerifierError(f"aesthetic head {path!r}: {name!r} is not <n>.weight or <n>.bias")
        layers.setdefault(int(match[1]), {})[match[2]] = tensor.float()
    head: Head = []
    for index in sorted(layers):
        weight = layers[index].get("weight")
        if weight is None or weight.ndim != 2:
            raise VerifierError(f"aesthetic head {path!r}: layer {index} has no 2-D weight")
        head.append((weight, layers[index].get("bias")))
    if not head or head[-1][0].shape[0] != 1:
        raise VerifierError(f"aesthetic head {path!r} must end in one output (a rating)")
    return head


def _apply_head(head: Head, embedding: torch.Tensor) -> torch.Tensor:
    hidden = embedding
    for weight, bias in head:
        hidden = F.linear(
            hidden,
            weight.to(hidden.device),
            None if bias is None else bias.to(hidden.device),
        )
    return hidden.squeeze(-1)
