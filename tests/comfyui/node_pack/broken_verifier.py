"""A custom stepwatch verifier that fails when it scores, for the ComfyUI error test."""

from __future__ import annotations


class Broken:
    """Fails at every score, as a verifier whose model went missing would."""

    def score(self, images: object, prompt: str) -> list[float]:
        raise RuntimeError("the sharpness model is missing")
