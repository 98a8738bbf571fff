"""The quality history as a picture: :func:`quality_chart`, the InferenceScalingNode's IMAGE.

Scores (0 to 1, left axis) are a line with a dot per check, coloured by decision (grey
continue, orange raise CFG, green early stop); the threshold is a dashed line; CFG (right axis,
0 to its highest value in the run) is a blue step line. Steps run along the bottom axis, from 0
to the run's planned steps.

:func:`candidates_chart` draws a best-of-N run: a line per candidate (the chosen one thick and
black, the others thin, each in its own colour and labelled with its number at its end) over
the same axes, with the threshold dashed. It imports neither torch nor ComfyUI.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from stepwatch.protocol import Check

WIDTH, HEIGHT = 512, 256
_MARGIN = 36
_BACKGROUND = (255, 255, 255)
_AXES = (60, 60, 60)
_SCORE = (30, 30, 30)
_THRESHOLD = (200, 40, 40)
_CFG = (40, 90, 200)
_DECISION_COLOURS = {
    "continue": (140, 140, 140),
    "raise_cfg": (240, 140, 20),
    "early_stop": (30, 160, 60),
}


def quality_chart(history: Sequence[Check], steps: int, final_cfg: float) -> np.ndarray[Any, Any]:
    """Draw ``history`` of a run planned for ``steps`` steps that ended at ``final_cfg``.

    Returns an H×W×3 float32 array in [0, 1]. A record's CFG is the one the steps up to it ran
    with, so each record draws the CFG span that ends at its step.
    """
    image = Image.new("RGB", (WIDTH, HEIGHT), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = _MARGIN, _MARGIN // 2, WIDTH - _MARGIN, HEIGHT - _MARGIN
    draw.rectangle((left, top, right, bottom), outline=_AXES)
    draw.text((4, top), "1.0", fill=_AXES)
    draw.text((4, bottom - 10), "0.0", fill=_AXES)
    draw.text((left, bottom + 6), "step 0", fill=_AXES)
    draw.text((right - 40, bottom + 6), f"step {steps}", fill=_AXES)

    def x_of(step: int) -> float:
        return left + (right - left) * step / max(steps, 1)

    def y_of(value: float, high: float = 1.0) -> float:
        return bottom - (bottom - top) * min(max(value / high, 0.0), 1.0)

    if not history:
        draw.text((left + 8, top + 8), "no checks ran", fill=_AXES)
        return _as_array(image)
    for record, following in zip(history, [*history[1:], None], strict=True):
        end = following.step if following is not None else steps
        y = y_of(record.threshold)
        for x in range(int(x_of(record.step)), int(x_of(end)), 8):
            draw.line((x, y, min(x + 4, x_of(end)), y), fill=_THRESHOLD)
    spans, start = [], 0
    for record in history:
        spans.append((start, record.step, record.cfg))
        start = record.step
    spans.append((start, steps, final_cfg))
    cfg_high = max(cfg for _, _, cfg in spans) or 1.0
    draw.text((right + 4, top), f"{cfg_high:g}", fill=_CFG)
    cfg_line: list[tuple[float, float]] = []
    for first, last, cfg in spans:
        cfg_line += [(x_of(first), y_of(cfg, cfg_high)), (x_of(last), y_of(cfg, cfg_high))]
    draw.line(cfg_line, fill=_CFG, width=2)
    points = [(x_of(record.step), y_of(record.score)) for record in history]
    if len(points) > 1:
        draw.line(points, fill=_SCORE, width=2)
    for (px, py), record in zip(points, history, strict=True):
        colour = _DECISION_COLOURS[record.decision]
        draw.ellipse((px - 4, py - 4, px + 4, py + 4), fill=colour, outline=_SCORE)
    return _as_array(image)


#: The thin lines of the candidates that were not chosen, in turn.
_CANDIDATE_COLOURS = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (23, 190, 207),
)


def candidates_chart(
    histories: Sequence[Sequence[Check]], steps: int, chosen: int
) -> np.ndarray[Any, Any]:
    """Draw each candidate's checks (``histories[i]``: candidate *i*'s) of a run planned for
    ``steps`` steps, ``chosen`` the result. Returns an H×W×3 float32 array in [0, 1]."""
    image = Image.new("RGB", (WIDTH, HEIGHT), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = _MARGIN, _MARGIN // 2, WIDTH - _MARGIN, HEIGHT - _MARGIN
    draw.rectangle((left, top, right, bottom), outline=_AXES)
    draw.text((4, top), "1.0", fill=_AXES)
    draw.text((4, bottom - 10), "0.0", fill=_AXES)
    draw.text((left, bottom + 6), "step 0", fill=_AXES)
    draw.text((right - 40, bottom + 6), f"step {steps}", fill=_AXES)
    draw.text((left + 60, bottom + 6), f"{len(histories)} candidates, #{chosen} chosen", fill=_AXES)

    def point(record: Check) -> tuple[float, float]:
        x = left + (right - left) * record.step / max(steps, 1)
        return x, bottom - (bottom - top) * min(max(record.score, 0.0), 1.0)

    if not any(histories):
        draw.text((left + 8, top + 8), "no checks ran", fill=_AXES)
        return _as_array(image)
    threshold = next(history[0].threshold for history in histories if history)
    y = bottom - (bottom - top) * threshold
    for x in range(left, right, 8):
        draw.line((x, y, min(x + 4, right), y), fill=_THRESHOLD)
    order = [i for i in range(len(histories)) if i != chosen] + [chosen]  # chosen on top
    for i in order:
        points = [point(record) for record in histories[i]]
        if not points:
            continue
        colour = _SCORE if i == chosen else _CANDIDATE_COLOURS[i % len(_CANDIDATE_COLOURS)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=3 if i == chosen else 1)
        for px, py in points:
            draw.ellipse((px - 2, py - 2, px + 2, py + 2), fill=colour)
        px, py = points[-1]
        draw.text((min(px + 4, right + 2), py - 6), f"{i}", fill=colour)
    return _as_array(image)


def _as_array(image: Image.Image) -> np.ndarray[Any, Any]:
    return np.asarray(image, dtype=np.float32) / 255.0
