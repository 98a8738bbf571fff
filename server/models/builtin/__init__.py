"""The built-in model: a small class-conditional diffusion model of coloured shapes.

It ships in the package (``weights/``) so ``stepwatch serve`` works offline. Its parts:

- :mod:`.vocabulary`: the prompt vocabulary, :func:`parse_prompt`, :class:`PromptError`;
- :mod:`.data`: the procedural images it was trained on;
- :mod:`.pipeline`: :class:`ShapesPipeline` (a diffusers pipeline) and :func:`load_builtin`;
- :mod:`.adherence`: :class:`AdherenceScorer`, the verifier that may steer sampling, and
  :class:`Judge`, the held-out classifier benchmarks report;
- :mod:`.cleanliness`: the regressor behind the adherence verifier's ``clean`` component (how
  finished an image looks);
- :mod:`.train` and :mod:`.train_cleanliness`: the scripts that reproduce every weight from a seed.

Importing this package is cheap; the torch-backed names load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stepwatch.server.models.builtin.vocabulary import (
    ParsedPrompt,
    PromptError,
    Vocabulary,
    parse_prompt,
    vocabulary,
)

if TYPE_CHECKING:
    from stepwatch.server.models.builtin.adherence import AdherenceScorer, Judge
    from stepwatch.server.models.builtin.pipeline import ShapesPipeline, load_builtin

__all__ = [
    "AdherenceScorer",
    "Judge",
    "ParsedPrompt",
    "PromptError",
    "ShapesPipeline",
    "Vocabulary",
    "load_builtin",
    "parse_prompt",
    "vocabulary",
]

_LAZY = {
    "AdherenceScorer": "adherence",
    "Judge": "adherence",
    "ShapesPipeline": "pipeline",
    "load_builtin": "pipeline",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
