"""What a run reports while it goes, in the protocol's words.

:func:`~.monitor.run_monitored` calls its event sink, an :data:`EventSink`, from the sampler's
thread with the protocol's run events, unstamped (``run_id`` empty, ``seq`` 0: the service that
numbers a run's events stamps them, see :func:`stepwatch.protocol.stamp`), in this order::

    Started  (Progress | Check | Adjusted | Applied | Error)*  Finished

- ``Started`` once, with the resolved parameters;
- ``Progress`` after every denoising step;
- ``Check`` every ``check_interval`` steps, with the verifier's score, the policy's decision and
  a thumbnail of the decoded x0 estimate (none when ``preview_size`` is 0);
- ``Adjusted`` when a decision changed the run (CFG raised);
- ``Applied`` when a control request (a ``set`` or a ``stop``) that carries a request id took
  effect, with each setting's old and new value; ``request_id`` is the id the request was made
  with (:class:`~.control.RunControl`);
- an ``Error`` (``invalid_value``, with that ``request_id``) for the part of a ``set`` the run
  refused, such as a CFG it cannot switch to;
- ``Finished`` last, always: the same event :func:`~.monitor.run_monitored` returns.

Everything the engine puts into an event fits the protocol's bounds: the helpers here clip what
a verifier or a clock reported (a score outside [0, 1], a long reason, a seventeenth component).
The sink must return quickly: the sampler waits for it. This module imports neither torch nor
diffusers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from stepwatch.protocol import Error, RunEvent
from stepwatch.protocol import limits as wire

__all__ = [
    "EngineEvent",
    "EventSink",
    "fit_cfg",
    "fit_components",
    "fit_score",
    "fit_seconds",
    "fit_text",
]

#: What a run's sink receives.
EngineEvent = RunEvent | Error
EventSink = Callable[[EngineEvent], None]


def fit_text(text: str) -> str:
    """A message or reason cut to the length the wire carries."""
    return text if len(text) <= wire.MAX_MESSAGE_CHARS else text[: wire.MAX_MESSAGE_CHARS - 1] + "…"


def fit_seconds(value: float) -> float:
    """A duration within the wire's range (a clock that went wrong reads as 0)."""
    return min(max(value, 0.0), wire.MAX_SECONDS) if math.isfinite(value) else 0.0


def fit_score(value: float) -> float:
    """A score or threshold within [0, 1]."""
    return min(max(value, wire.MIN_SCORE), wire.MAX_SCORE)


def fit_cfg(value: float) -> float:
    """A guidance scale within the wire's range."""
    return min(max(value, wire.MIN_CFG), wire.MAX_CFG)


def fit_components(components: Mapping[str, float]) -> dict[str, float]:
    """The components a verifier reported, cut to what the wire carries (named, finite, at
    most :data:`~stepwatch.protocol.limits.MAX_COMPONENTS`)."""
    kept: dict[str, float] = {}
    for name, value in components.items():
        if len(kept) == wire.MAX_COMPONENTS:
            break
        if name and math.isfinite(value):
            kept[name[: wire.MAX_NAME_CHARS]] = float(value)
    return kept
