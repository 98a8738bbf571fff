"""The server's run history, read from its HTTP API (``GET /api/runs``).

The WebSocket protocol streams runs; the list of past runs is plain HTTP on the same host and
port. The standard library's :mod:`urllib` fetches it in a worker thread, so the client needs
no HTTP library for one GET.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode, urlsplit, urlunsplit

from stepwatch.protocol import ErrorCode

from .errors import ConnectionFailed, ProtocolViolation, Refused
from .transport import DEFAULT_URL

__all__ = ["RunSummary", "http_base", "list_runs"]

#: The most runs one page of ``/api/runs`` holds.
MAX_PAGE: Final = 200

_HTTP_SCHEMES: Final = {"ws": "http", "wss": "https", "http": "http", "https": "https"}


@dataclass(frozen=True, slots=True)
class RunSummary:
    """One run as the server's history lists it."""

    run_id: str
    #: ``queued``, ``running`` or ``finished``.
    state: str
    model: str
    prompt: str
    #: Why it ended; ``None`` while it goes on.
    reason: str | None
    steps_run: int | None
    final_score: float | None
    #: Unix seconds.
    created_at: float | None
    finished_at: float | None

    @classmethod
    def from_json(cls, item: object) -> RunSummary:
        """Read one summary of ``/api/runs``; raise :class:`ProtocolViolation` if malformed."""
        if not isinstance(item, dict):
            raise ProtocolViolation(f"a run summary is a JSON object, got {item!r:.80}")
        try:
            return cls(
                run_id=_typed(item["run_id"], str),
                state=_typed(item["state"], str),
                model=_typed(item["model"], str),
                prompt=_typed(item["prompt"], str),
                reason=_optional(item.get("reason"), str),
                steps_run=_optional(item.get("steps_run"), int),
                final_score=_number(item.get("final_score")),
                created_at=_number(item.get("created_at")),
                finished_at=_number(item.get("finished_at")),
            )
        except (KeyError, TypeError) as exc:
            raise ProtocolViolation(f"a run summary lacks or mistypes {exc}") from exc


def _typed(value: object, kind: type[Any] | tuple[type[Any], ...]) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"{value!r:.40} (expected {kind})")
    return value


def _optional(value: object, kind: type[Any]) -> Any:
    return None if value is None else _typed(value, kind)


def _number(value: object) -> float | None:
    return None if value is None else float(_typed(value, (int, float)))


def http_base(url: str) -> str:
    """The HTTP root of the server whose WebSocket is at ``url`` (``ws://h:p/ws`` → ``http://h:p``).

    A path before the final ``/ws`` (a reverse proxy's prefix) is kept.
    """
    parts = urlsplit(url)
    scheme = _HTTP_SCHEMES.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ConnectionFailed(f"{url} is not a server URL (ws://HOST:PORT/ws)")
    path = parts.path.rstrip("/")
    if path.endswith("/ws"):
        path = path[: -len("/ws")]
    return urlunsplit((scheme, parts.netloc, path, "", ""))


async def list_runs(
    url: str = DEFAULT_URL, *, token: str | None = None, limit: int = 50, http_timeout: float = 10.0
) -> list[RunSummary]:
    """The server's latest ``limit`` runs (1 to 200), newest first.

    ``url`` is the server's WebSocket URL, as for :func:`~stepwatch.client.connect`; ``token``
    its API token. Raises :class:`ConnectionFailed` when the server cannot be reached,
    :class:`Refused` when it refuses (``ErrorCode.UNAUTHORIZED`` for a missing or wrong token).
    """
    if not 1 <= limit <= MAX_PAGE:
        raise Refused(
            ErrorCode.INVALID_VALUE, f"limit is 1..{MAX_PAGE}", field="limit", by_server=False
        )
    address = f"{http_base(url)}/api/runs?{urlencode({'limit': limit})}"
    body = await asyncio.to_thread(_get_json, address, token, http_timeout)
    runs = body.get("runs") if isinstance(body, dict) else None
    if not isinstance(runs, list):
        raise ProtocolViolation(f"{address} answered without a list of runs")
    return [RunSummary.from_json(item) for item in runs]


def _get_json(address: str, token: str | None, timeout: float) -> object:
    request = urllib.request.Request(address, headers={"Accept": "application/json"})
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return _parse(address, response.read())
    except urllib.error.HTTPError as exc:
        raise _refusal(address, exc) from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConnectionFailed(f"cannot reach {address}: {reason}") from exc


def _parse(address: str, data: bytes) -> object:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ProtocolViolation(f"{address} did not answer JSON") from exc


def _refusal(address: str, exc: urllib.error.HTTPError) -> Refused | ProtocolViolation:
    """The server's ``{"error": {code, message, field}}`` answer as :class:`Refused`."""
    try:
        body = json.loads(exc.read())
        error = body["error"]
        return Refused(ErrorCode(error["code"]), str(error["message"]), field=error.get("field"))
    except (ValueError, KeyError, TypeError):
        return ProtocolViolation(f"{address} answered HTTP {exc.code} without a coded error")
