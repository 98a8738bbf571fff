"""What a CLIP-score check costs, beside the default ``structure`` verifier, in one process.

CLIP models of the two sizes people use (ViT-B/32 and ViT-L/14, the one LAION's aesthetic
predictor reads), built with transformers at their published shapes and random weights (the
cost of a forward pass does not depend on the weights; nothing is downloaded), saved to a
temporary folder and loaded as the operator's ``--verifier clip=clip:FOLDER`` would. For each:
milliseconds per check on one 64×64 preview (the linear preview of a 512 px image; CLIP resizes
every preview to 224 px, so the size hardly matters), the prompt's embedding already kept (every
check after a run's first); the first check of a run, which embeds the prompt too; and a check
with an aesthetic head of LAION's shape (768→1024→128→64→16→1, for L/14). Median and quartiles
over repeats, on the CPU with the given torch threads, and the ratio to ``structure`` measured in
the same run.

Prints a table and writes ``bench/results/clip_verifier.json``::

    nice -n 10 .venv/bin/python bench/clip_verifier.py [--repeats 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "server"), str(ROOT / "bench")]

from safetensors.torch import save_file  # noqa: E402
from tiny_models import tiny_tokenizer  # noqa: E402
from transformers import CLIPConfig, CLIPModel  # noqa: E402
from verifiers import timed_ms  # noqa: E402  (bench/verifiers.py: median and quartiles)

from stepwatch.server.engine.clipscore import ClipScoreVerifier, ClipSpec  # noqa: E402
from stepwatch.server.engine.verifiers import StructureVerifier  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "clip_verifier.json"
PROMPT = "a red circle on a dark background"

#: Published shapes: openai/clip-vit-base-patch32 and openai/clip-vit-large-patch14.
SHAPES: dict[str, dict[str, Any]] = {
    "ViT-B/32": {
        "text": {"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8},
        "vision": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                   "num_hidden_layers": 12, "patch_size": 32},
        "projection_dim": 512,
    },
    "ViT-L/14": {
        "text": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12},
        "vision": {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                   "num_hidden_layers": 24, "patch_size": 14},
        "projection_dim": 768,
    },
}  # fmt: skip
#: LAION's aesthetic predictor MLP (linear layers, no activations between them).
AESTHETIC_LAYERS = (1024, 128, 64, 16, 1)


def save_clip(folder: Path, shape: dict[str, Any]) -> None:
    tokenizer = tiny_tokenizer()
    text = {**shape["text"], "vocab_size": len(tokenizer), "num_hidden_layers": 12}
    text |= {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
    vision = {**shape["vision"], "image_size": 224}
    config = CLIPConfig(
        text_config=text, vision_config=vision, projection_dim=shape["projection_dim"]
    )
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def save_head(path: Path, width: int) -> None:
    tensors = {}
    for index, out in enumerate(AESTHETIC_LAYERS):
        tensors[f"layers.{index}.weight"] = torch.randn(out, width) / width**0.5
        tensors[f"layers.{index}.bias"] = torch.zeros(out)
        width = out
    save_file(tensors, path)


def measure(name: str, shape: dict[str, Any], folder: Path, repeats: int) -> dict[str, Any]:
    save_clip(folder / name.replace("/", "-"), shape)
    source = str(folder / name.replace("/", "-"))
    head = folder / f"{name.replace('/', '-')}-aesthetic.safetensors"
    save_head(head, shape["projection_dim"])
    plain = ClipScoreVerifier(ClipSpec("clip", source))
    rated = ClipScoreVerifier(ClipSpec("clip", source, str(head)))
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    prompts = iter(range(10**6))

    def first_check() -> object:
        return plain.score(image, f"{PROMPT} {next(prompts)}")

    return {
        "check_ms": timed_ms(lambda: plain.score(image, PROMPT), repeats),
        "first_check_ms": timed_ms(first_check, repeats),
        "check_with_aesthetic_ms": timed_ms(lambda: rated.score(image, PROMPT), repeats),
        "parameters_m": sum(p.numel() for p in plain.model.parameters()) / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    structure = StructureVerifier()
    report: dict[str, Any] = {
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": args.threads,
        "repeats": args.repeats,
        "structure_check_ms": timed_ms(lambda: structure.score(image, PROMPT), args.repeats * 5),
        "clip": {},
    }
    with tempfile.TemporaryDirectory() as folder:
        for name, shape in SHAPES.items():
            report["clip"][name] = measure(name, shape, Path(folder), args.repeats)
    base = report["structure_check_ms"][1]
    print(f"ms per check on one 64x64 preview, {args.threads} torch thread(s): median [quartiles]")
    print(f"  structure            {base:8.2f}  {_q(report['structure_check_ms'])}")
    for name, row in report["clip"].items():
        row["ratio_to_structure"] = row["check_ms"][1] / base
        ratio, size = row["ratio_to_structure"], row["parameters_m"]
        print(f"  CLIP {name:<10} check      {row['check_ms'][1]:8.1f}  {_q(row['check_ms'])}"
              f"  x{ratio:.0f} structure  ({size:.0f} M params)")  # fmt: skip
        print(f"  CLIP {name:<10} first      {row['first_check_ms'][1]:8.1f}  "
              f"{_q(row['first_check_ms'])}  (embeds the prompt too)")  # fmt: skip
        print(f"  CLIP {name:<10} +aesthetic {row['check_with_aesthetic_ms'][1]:8.1f}  "
              f"{_q(row['check_with_aesthetic_ms'])}")  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS}")


def _q(values: list[float]) -> str:
    return f"[{values[0]:.1f}, {values[2]:.1f}]"


if __name__ == "__main__":
    main()
