"""The CLIP-score verifier on a tiny random CLIP the tests build and save: it loads from the
operator's folder only, scores prompt-image similarity in [0, 1], and adds an aesthetic head."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tiny_models import save_tiny_clip, tiny_tokenizer
from transformers import CLIPModel

from stepwatch.server.engine.clipscore import (
    CLIPSCORE_WEIGHT,
    ClipScoreVerifier,
    ClipSpec,
    parse_clip_spec,
)
from stepwatch.server.engine.errors import VerifierError
from stepwatch.server.engine.verifiers import VerifierRegistry, score_batch


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


def images(seed: int, count: int = 2, size: int = 24) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 3, size, size, generator=generator)


def preprocess(batch: torch.Tensor) -> torch.Tensor:
    """CLIP's input by hand: bicubic to 32 px, clamped, normalised with CLIP's statistics."""
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    pixels = F.interpolate(batch, size=(32, 32), mode="bicubic", align_corners=False)
    return (pixels.clamp(0, 1) - mean) / std


def test_the_score_is_clipscore_of_the_prompt_and_image(clip_folder: Path) -> None:
    verifier = ClipScoreVerifier(ClipSpec("clip", str(clip_folder)))
    batch = images(1)
    scores = score_batch(verifier, batch, "red circle")
    # The same arithmetic by hand, with transformers' own preprocessing pieces.
    model = CLIPModel.from_pretrained(clip_folder).eval()
    tokens = tiny_tokenizer()(["red circle"], padding=True, return_tensors="pt")
    with torch.no_grad():
        image = model.get_image_features(pixel_values=preprocess(batch))
        text = model.get_text_features(**tokens)
    image = getattr(image, "pooler_output", image)
    text = getattr(text, "pooler_output", text)
    cosine = F.cosine_similarity(image, text)
    expected = (CLIPSCORE_WEIGHT * cosine.clamp(min=0)).clamp(max=1)
    assert [s.value for s in scores] == pytest.approx(expected.tolist(), abs=1e-5)
    assert all(set(s.components) == {"clip"} and 0 <= s.value <= 1 for s in scores)
    # The prompt matters: another prompt scores the same images differently.
    other = score_batch(verifier, batch, "blue square 42")
    assert [s.value for s in other] != pytest.approx([s.value for s in scores], abs=1e-4)


def test_an_aesthetic_head_adds_its_rating(clip_folder: Path, tmp_path: Path) -> None:
    torch.manual_seed(3)
    first, last = torch.randn(4, 16), torch.randn(1, 4)
    head = tmp_path / "aesthetic.safetensors"
    save_file({"layers.0.weight": first, "layers.0.bias": torch.zeros(4),
               "layers.1.weight": last, "layers.1.bias": torch.tensor([5.5])}, head)  # fmt: skip
    plain = ClipScoreVerifier(ClipSpec("clip", str(clip_folder)))
    rated = ClipScoreVerifier(ClipSpec("clip", str(clip_folder), str(head)))
    batch = images(2)
    clip_only = score_batch(plain, batch, "red circle")
    scores = score_batch(rated, batch, "red circle")
    with torch.no_grad():
        model = CLIPModel.from_pretrained(clip_folder).eval()
        embedding = model.get_image_features(pixel_values=preprocess(batch))
    embedding = F.normalize(getattr(embedding, "pooler_output", embedding), dim=-1)
    rating = (embedding @ first.T) @ last.T + 5.5
    aesthetic = ((rating.squeeze(1) - 1) / 9).clamp(0, 1)
    for score, clip, expected in zip(scores, clip_only, aesthetic.tolist(), strict=True):
        assert score.components["clip"] == pytest.approx(clip.value, abs=1e-6)
        assert score.components["aesthetic"] == pytest.approx(expected, abs=1e-5)
        assert score.value == pytest.approx((clip.value + expected) / 2, abs=1e-5)


def test_the_registry_takes_a_clip_spec_and_loads_it_at_once(clip_folder: Path) -> None:
    registry = VerifierRegistry()
    assert registry.register_spec(f"clipscore=clip:{clip_folder}") == "clipscore"
    [info] = [i for i in registry.infos() if i.id == "clipscore"]
    assert info.components == ("clip",) and "CLIPScore" in info.description
    assert registry.register_spec(f"clip:{clip_folder}") == "clip"
    with pytest.raises(VerifierError, match="cannot load CLIP"):
        registry.register_spec(f"bad=clip:{clip_folder / 'missing'}")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("c=clip:", "is \\[id=\\]clip:SOURCE"),
        ("c=clip:/m,colour=red", "one option, aesthetic=PATH"),
        ("c=clip:/m,aesthetic=", "one option, aesthetic=PATH"),
    ],
)
def test_malformed_clip_specs_are_clear_errors(spec: str, message: str) -> None:
    with pytest.raises(VerifierError, match=message):
        parse_clip_spec(spec)


def test_a_head_file_that_is_no_linear_stack_is_refused(clip_folder: Path, tmp_path: Path) -> None:
    head = tmp_path / "head.safetensors"
    save_file({"layers.0.weight": torch.randn(2, 16)}, head)
    with pytest.raises(VerifierError, match="must end in one output"):
        ClipScoreVerifier(ClipSpec("c", str(clip_folder), str(head)))
    save_file({"conv.kernel": torch.randn(2, 16)}, head)
    with pytest.raises(VerifierError, match="is not <n>.weight or <n>.bias"):
        ClipScoreVerifier(ClipSpec("c", str(clip_folder), str(head)))
