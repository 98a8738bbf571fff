"""How the service is configured: :class:`ServerConfig`, and every limit in :class:`ServiceLimits`.

The command line (:mod:`stepwatch.server.cli`) builds one :class:`ServerConfig`; tests build
their own. Nothing else reads settings from anywhere: the app gets the config object and passes
the parts on. This module imports neither torch nor the web stack, so the command line stays
quick to start.

Every limit a client can run into is in :class:`ServiceLimits`, and every one of them is either
announced in ``welcome.limits`` or documented with the error code it produces.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from stepwatch.protocol import limits as wire

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_PORT",
    "DEFAULT_MAX_PROMPT_CHARS",
    "ConfigError",
    "ServerConfig",
    "ServiceLimits",
]

#: The model ``stepwatch serve`` loads when none is configured: the built-in shapes model.
DEFAULT_MODEL = "shapes=builtin:shapes"
#: The port the protocol README names.
DEFAULT_PORT = 8765
#: The longest prompt a server accepts unless configured otherwise (the protocol allows
#: ``MAX_PROMPT_CHARS``; no model's text encoder reads anywhere near 2000 characters).
DEFAULT_MAX_PROMPT_CHARS = 2000
#: The most runs one batch may carry (``max_batch``).
MAX_BATCH = 64
DEVICES = ("auto", "cpu", "cuda", "mps")
#: The ``Host`` names a server always answers to (DNS rebinding cannot produce them).
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
#: Listening addresses that name no host a client could put in ``Host``.
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


def default_sampler_threads() -> int:
    """torch's threads for sampling when none are configured: half the CPUs this process may
    use, at most 8 and at least 1. torch's own default (every core) oversubscribes a machine
    that does anything else, and a step then waits for its slowest thread."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus // 2))


class ConfigError(ValueError):
    """A configuration value is out of range or malformed; the message names it."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class ServiceLimits:
    """Every limit the service enforces, in one place.

    Frames and connections:

    - ``max_frame_bytes``: the largest client frame; a longer one gets ``frame_too_large``
      (far longer ones, over :attr:`transport_max_bytes`, make the WebSocket layer close 1009);
    - ``messages_per_second`` and ``message_burst``: a token bucket per connection; a frame
      beyond it is dropped with ``rate_limited``;
    - ``max_runs_per_connection``: unfinished runs one connection may have started
      (``too_many_runs``);
    - ``hello_timeout``: seconds a new connection has to send ``hello``.

    Runs: ``max_queue`` (runs waiting for a sampler; ``queue_full``), ``max_steps``,
    ``max_image_side`` (width and height), ``max_preview_size``, ``max_candidates`` (of a
    search), ``max_prompt_chars`` (all ``invalid_value`` naming the field).

    Delivery: ``outbox_size`` (frames waiting for one connection; a full outbox, or one whose
    oldest frame waits longer than ``send_timeout`` seconds, closes the connection with
    ``slow_consumer``). ``write_through``: when the server offers a direct frame writer (uvicorn
    with :mod:`~stepwatch.server.connections`' protocol class), a run event is framed once and
    written straight to each watcher's socket that has nothing waiting and is not backed up,
    from the fan-out itself; only frames behind a backed-up socket go through the outbox and the
    connection's task (see :mod:`~stepwatch.server.outbox`; off: every frame takes the
    connection's task and an ASGI send, one write each, as before; the benchmark compares
    them). ``send_batch_bytes``: the most bytes the connection's task writes in one batch of
    the frames that waited (at least one frame). ``abandon_grace``: seconds a run goes on with
    nobody attached before it is stopped as ``abandoned``. ``finished_retention``: seconds a
    finished run stays in memory (the store keeps it after). ``shutdown_timeout``: seconds
    shutdown waits for runs to finish.

    Sockets (see :mod:`~stepwatch.server.connections`): ``max_connections`` open at once
    (uvicorn answers HTTP requests beyond it with 503), ``max_connections_per_client`` from one
    address (one more is closed unanswered), ``request_timeout`` seconds for a connection to
    send a whole request head (and for a finished WebSocket to close before it is aborted).
    """

    max_frame_bytes: int = wire.MAX_CLIENT_FRAME_BYTES
    messages_per_second: float = 50.0
    message_burst: int = 100
    max_runs_per_connection: int = 8
    hello_timeout: float = 10.0
    max_queue: int = 16
    max_steps: int = wire.MAX_STEPS
    max_image_side: int = wire.MAX_SIZE
    max_preview_size: int = wire.MAX_PREVIEW_SIZE
    max_candidates: int = 8
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS
    outbox_size: int = 4096
    send_timeout: float = 10.0
    write_through: bool = True
    send_batch_bytes: int = 1 << 20
    abandon_grace: float = 30.0
    finished_retention: float = 300.0
    shutdown_timeout: float = 120.0
    max_connections: int = 1000
    max_connections_per_client: int = 64
    request_timeout: float = 10.0

    def __post_init__(self) -> None:
        _require(
            1024 <= self.max_frame_bytes <= wire.MAX_CLIENT_FRAME_BYTES,
            f"max_frame_bytes must be 1024..{wire.MAX_CLIENT_FRAME_BYTES}",
        )
        _require(
            self.messages_per_second > 0 and math.isfinite(self.messages_per_second),
            "messages_per_second must be a positive number",
        )
        _require(self.message_burst >= 1, "message_burst must be at least 1")
        _require(self.max_runs_per_connection >= 1, "max_runs_per_connection must be at least 1")
        _require(self.max_queue >= 0, "max_queue must not be negative")
        _require(
            wire.MIN_STEPS <= self.max_steps <= wire.MAX_STEPS,
            f"max_steps must be {wire.MIN_STEPS}..{wire.MAX_STEPS}",
        )
        _require(
            wire.MIN_SIZE <= self.max_image_side <= wire.MAX_SIZE,
            f"max_image_side must be {wire.MIN_SIZE}..{wire.MAX_SIZE}",
        )
        _require(
            0 <= self.max_preview_size <= wire.MAX_PREVIEW_SIZE,
            f"max_preview_size must be 0..{wire.MAX_PREVIEW_SIZE}",
        )
        _require(
            1 <= self.max_candidates <= wire.MAX_CANDIDATES,
            f"max_candidates must be 1..{wire.MAX_CANDIDATES}",
        )
        _require(
            1 <= self.max_prompt_chars <= wire.MAX_PROMPT_CHARS,
            f"max_prompt_chars must be 1..{wire.MAX_PROMPT_CHARS}",
        )
        _require(self.outbox_size >= 8, "outbox_size must be at least 8")
        _require(self.send_batch_bytes >= 1, "send_batch_bytes must be at least 1")
        _require(self.max_connections >= 1, "max_connections must be at least 1")
        _require(
            self.max_connections_per_client >= 1, "max_connections_per_client must be at least 1"
        )
        for name in (
            "hello_timeout",
            "send_timeout",
            "abandon_grace",
            "finished_retention",
            "shutdown_timeout",
            "request_timeout",
        ):
            value = getattr(self, name)
            _require(value > 0 and math.isfinite(value), f"{name} must be a positive number")

    @property
    def transport_max_bytes(self) -> int:
        """The largest WebSocket message the transport reads at all.

        Frames between :attr:`max_frame_bytes` and this get a coded ``frame_too_large`` error
        and the connection stays open; longer ones are refused by the WebSocket layer (close
        1009) before anything buffers them.
        """
        return 4 * self.max_frame_bytes

    def welcome_limits(self) -> dict[str, int]:
        """The limits in force under the names ``welcome.limits`` uses."""
        announced = wire.protocol_limits()
        announced.update(
            max_frame_bytes=self.max_frame_bytes,
            max_prompt_chars=self.max_prompt_chars,
            max_steps=self.max_steps,
            max_width=self.max_image_side,
            max_height=self.max_image_side,
            max_preview_size=self.max_preview_size,
            max_candidates=self.max_candidates,
            max_queue=self.max_queue,
            max_runs_per_connection=self.max_runs_per_connection,
            messages_per_second=math.floor(self.messages_per_second),
            message_burst=self.message_burst,
        )
        return announced


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``stepwatch serve`` is told.

    ``models`` are ``NAME=SOURCE[,option=value...]`` texts (see
    :mod:`stepwatch.server.models.loading`); the first is the default model. ``device`` applies
    to every model whose text names no ``device=``. ``verifiers`` are ``[ID=]module:callable``
    texts; verifiers installed under the ``stepwatch.verifiers`` entry point group are loaded too
    when ``entry_point_verifiers`` is true. ``token``, when set, is the API token every
    connection must present. ``allowed_origins`` are browser origins allowed besides the
    server's own (``*`` allows any). ``allowed_hosts`` are ``Host`` names the server answers
    besides the loopback names and the address it listens on (``*``: any; see
    :meth:`served_hosts`). ``sampler_threads`` is torch's thread count for sampling.
    ``max_batch`` is how many queued runs that can share a denoiser call are sampled as lanes of
    one batch (1: every run alone; see :mod:`~stepwatch.server.engine.batch`); ``batch_window``
    the longest, in seconds, a run taken from the queue waits for starts that are being admitted
    at that moment to join its batch (it never waits when none is).
    ``dashboard_dir`` is served at ``/`` when it exists (``None``: the packaged dashboard, if
    installed).
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    models: tuple[str, ...] = (DEFAULT_MODEL,)
    verifiers: tuple[str, ...] = ()
    entry_point_verifiers: bool = True
    data_dir: Path = Path("data")
    device: str = "auto"
    samplers_per_device: int = 1
    max_batch: int = 8
    batch_window: float = 0.25
    token: str | None = None
    allowed_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    sampler_threads: int = field(default_factory=lambda: default_sampler_threads())
    dashboard_dir: Path | None = None
    limits: ServiceLimits = field(default_factory=ServiceLimits)

    def __post_init__(self) -> None:
        _require(0 <= self.port <= 65535, f"port must be 0..65535, got {self.port}")
        _require(bool(self.models), "at least one model must be configured")
        _require(
            self.device.partition(":")[0] in DEVICES,
            f"device must be one of {', '.join(DEVICES)} (cuda:N allowed), got {self.device!r}",
        )
        _require(self.samplers_per_device >= 1, "samplers_per_device must be at least 1")
        _require(1 <= self.max_batch <= MAX_BATCH, f"max_batch must be 1..{MAX_BATCH}")
        _require(
            0.0 <= self.batch_window <= 10.0 and math.isfinite(self.batch_window),
            "batch_window must be 0..10 seconds",
        )
        if self.token is not None:
            _require(
                1 <= len(self.token) <= wire.MAX_TOKEN_CHARS,
                f"the API token must be 1..{wire.MAX_TOKEN_CHARS} characters",
            )
        _require(self.sampler_threads >= 1, "sampler_threads must be at least 1")
        for host in self.allowed_hosts:
            _require(
                bool(host) and "/" not in host and " " not in host,
                f"an allowed host is a name or an address without a port, got {host!r}",
            )
        for origin in self.allowed_origins:
            _require(
                origin == "*" or "://" in origin,
                f"an allowed origin is scheme://host[:port] or *, got {origin!r}",
            )

    def served_hosts(self) -> tuple[str, ...]:
        """The names a request's ``Host`` may carry (without the port): the loopback names, the
        address the server listens on unless it is a wildcard, and ``allowed_hosts``."""
        hosts = list(LOOPBACK_HOSTS)
        if self.host not in WILDCARD_HOSTS:
            hosts.append(f"[{self.host}]" if ":" in self.host else self.host)
        hosts.extend(
            f"[{host}]" if ":" in host and host != "*" else host for host in self.allowed_hosts
        )
        return tuple(dict.fromkeys(host.lower() for host in hosts))

    def model_texts(self) -> tuple[str, ...]:
        """The model texts with ``device`` applied to those that name none."""
        if self.device == "auto":
            return self.models
        return tuple(
            text if ",device=" in text.replace(" ", "") else f"{text},device={self.device}"
            for text in self.models
        )

    def describe(self) -> str:
        """One line per setting, for the log at start-up (the token is never shown)."""
        shown = []
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "token":
                value = "set" if value else "none"
            if item.name != "limits":
                shown.append(f"{item.name}={value}")
        return ", ".join(shown)
