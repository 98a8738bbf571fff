"""The gate's rules on their own: origins, tokens, the subprotocol, the rate limit; and the
configuration's checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from stepwatch.protocol import SUBPROTOCOL
from stepwatch.server.config import ConfigError, ServerConfig, ServiceLimits
from stepwatch.server.gate import Gate, TokenBucket

HOST = "stepwatch.example:8765"


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("http://stepwatch.example:8765", True),  # the server's own origin
        ("https://stepwatch.example:8765", True),
        ("http://stepwatch.example:9999", False),
        # Other local pages are not the server's own: any app on this machine could be one.
        ("http://localhost:3000", False),
        ("http://127.0.0.1", False),
        ("http://[::1]:8080", False),
        ("https://studio.example", True),  # allowed by the operator
        ("https://STUDIO.example/", True),
        ("https://evil.example", False),
        ("null", False),
        ("file://", False),
    ],
)
def test_origins(origin: str, allowed: bool) -> None:
    assert Gate(None, ["https://studio.example"]).origin_allowed(origin, HOST) is allowed


def test_a_star_allows_every_origin() -> None:
    assert Gate(None, ["*"]).origin_allowed("null", HOST)


def test_handshake_verdicts() -> None:
    gate = Gate("secret", [])
    offered = [SUBPROTOCOL]
    assert gate.check_handshake({}, ["chat"]).status == 400
    assert gate.check_handshake({"origin": "https://evil.example"}, offered).status == 403
    assert gate.check_handshake({"authorization": "Bearer nope"}, offered).status == 403
    verdict = gate.check_handshake({"authorization": "Bearer secret"}, offered)
    assert not verdict.refused and verdict.authorized
    verdict = gate.check_handshake({}, offered)
    assert not verdict.refused and not verdict.authorized  # hello must carry the token
    assert Gate(None, []).check_handshake({}, offered).authorized


def test_tokens() -> None:
    gate = Gate("secret", [])
    assert gate.token_ok("secret") and not gate.token_ok("Secret") and not gate.token_ok(None)
    assert gate.http_authorized({"authorization": "bearer secret"})
    assert not gate.http_authorized({"authorization": "Basic secret"})
    assert Gate(None, []).http_authorized({})


def test_the_token_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] = 0.5  # one token back
    assert [bucket.take() for _ in range(2)] == [True, False]
    now[0] = 100.0  # never more than the burst
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]


def test_limits_are_checked_and_announced() -> None:
    limits = ServiceLimits(max_steps=200, max_image_side=512, max_queue=3)
    announced = limits.welcome_limits()
    assert announced["max_steps"] == 200 and announced["max_width"] == 512
    assert announced["max_queue"] == 3 and announced["max_prompt_chars"] == 2000
    for bad in ({"max_steps": 0}, {"max_frame_bytes": 10**6}, {"send_timeout": 0.0}):
        with pytest.raises(ConfigError):
            ServiceLimits(**bad)  # type: ignore[arg-type]


def test_the_device_applies_to_models_that_name_none() -> None:
    config = ServerConfig(models=("a=builtin:shapes", "b=/m,device=cuda:1"), device="cpu")
    assert config.model_texts() == ("a=builtin:shapes,device=cpu", "b=/m,device=cuda:1")
    with pytest.raises(ConfigError):
        ServerConfig(device="tpu")
    with pytest.raises(ConfigError):
        ServerConfig(allowed_origins=("example.org",))
    assert "token=set" in ServerConfig(token="t", data_dir=Path("d")).describe()
