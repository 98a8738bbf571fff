"""Who may connect, and how fast they may talk: :class:`Gate` and :class:`TokenBucket`.

The gate decides on a WebSocket handshake before the session starts (refused handshakes get an
HTTP error response, never a session):

- the client must offer the ``stepwatch.v1`` subprotocol (else 400);
- a browser (a request with an ``Origin`` header) must come from an allowed origin: the
  server's own (the ``Host`` it was reached at, which the app's Host check has already held to
  the names it is served under) or one the operator allowed (``*`` allows any); else 403;
- when the server has an API token, an ``Authorization: Bearer`` header that carries a wrong
  token is refused (403); a right one authorises the session, and without the header the token
  must come in ``hello.token``.

The HTTP API asks for the same token in the ``Authorization`` header. Tokens are compared with
:func:`hmac.compare_digest`.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from stepwatch.protocol import SUBPROTOCOL

__all__ = ["Gate", "HandshakeVerdict", "TokenBucket"]


@dataclass(frozen=True)
class HandshakeVerdict:
    """The gate's answer to a handshake: refused (``status`` and ``reason``) or let in,
    already authorised or not (then ``hello`` must carry the token)."""

    status: int | None = None
    reason: str = ""
    authorized: bool = False

    @property
    def refused(self) -> bool:
        return self.status is not None


def _normal_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


class Gate:
    """The handshake and token checks of one server. ``token`` ``None``: no API token."""

    def __init__(self, token: str | None, allowed_origins: Iterable[str] = ()) -> None:
        self._token = token
        self._allowed = frozenset(_normal_origin(origin) for origin in allowed_origins)

    @property
    def requires_token(self) -> bool:
        return self._token is not None

    def token_ok(self, token: str | None) -> bool:
        """Whether ``token`` is the API token (any token will do when none is required)."""
        if self._token is None:
            return True
        if token is None:
            return False
        return hmac.compare_digest(token.encode(), self._token.encode())

    def bearer(self, headers: Mapping[str, str]) -> str | None:
        """The token of an ``Authorization: Bearer`` header, if there is one."""
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return None
        return credentials.strip()

    def http_authorized(self, headers: Mapping[str, str]) -> bool:
        """Whether an HTTP API request may be answered."""
        return not self.requires_token or self.token_ok(self.bearer(headers))

    def origin_allowed(self, origin: str, host: str) -> bool:
        """Whether a browser page from ``origin`` may talk to this server, reached at ``host``."""
        normal = _normal_origin(origin)
        if "*" in self._allowed or normal in self._allowed:
            return True
        parts = urlsplit(normal)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False
        # Only the page's own server: "localhost on any port" would let every local page (any
        # app's dev server, anything served from this machine) read and start runs.
        return parts.netloc == host.strip().lower()

    def check_handshake(
        self, headers: Mapping[str, str], subprotocols: Iterable[str]
    ) -> HandshakeVerdict:
        """Decide on a WebSocket handshake from its headers and offered subprotocols."""
        if SUBPROTOCOL not in subprotocols:
            return HandshakeVerdict(400, f"offer the WebSocket subprotocol {SUBPROTOCOL}")
        origin = headers.get("origin")
        if origin is not None and not self.origin_allowed(origin, headers.get("host", "")):
            return HandshakeVerdict(403, f"origin {origin[:100]} is not allowed")
        bearer = self.bearer(headers)
        if bearer is not None and self.requires_token:
            if not self.token_ok(bearer):
                return HandshakeVerdict(403, "wrong API token")
            return HandshakeVerdict(authorized=True)
        return HandshakeVerdict(authorized=not self.requires_token)


class TokenBucket:
    """A rate limit: ``rate`` events a second on average, bursts of up to ``burst``.

    ``clock`` is :func:`time.monotonic` unless a test gives its own.
    """

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def take(self) -> bool:
        """Spend one token if there is one; return whether there was."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True
