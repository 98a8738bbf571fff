"""The Starlette app: :func:`create_app`, and the :class:`Service` its lifespan owns.

::

    GET /ws                     the protocol's WebSocket (subprotocol stepwatch.v1)
    GET /healthz, /api/...      the HTTP API (:mod:`stepwatch.server.http`)
    GET /                       the dashboard's static files, when there are any

The lifespan loads the configured models and verifiers in a worker thread, opens the store and
starts the run manager; it owns all of them until the app stops. Nothing lives in module-level
globals: the service hangs off ``app.state.service`` for the endpoints to find.

:meth:`Service.close` is the graceful end: it finishes every run with reason ``shutdown``
(stored, and ``finished`` sent), then closes every connection with 1001. The serving loop
(:mod:`stepwatch.server.serving`) calls it before it lets uvicorn close anything.
"""

from __future__ import annotations

import importlib.resources
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.routing import BaseRoute, Mount, WebSocketRoute
from starlette.staticfiles import StaticFiles

from stepwatch.server import http
from stepwatch.server.catalog import Catalog
from stepwatch.server.config import ServerConfig
from stepwatch.server.execution import Sampler, engine_batch_sampler, engine_sampler
from stepwatch.server.gate import Gate
from stepwatch.server.runs import Batching, RunManager
from stepwatch.server.session import OpenSessions, SessionServices, serve_connection
from stepwatch.server.store import Store

if TYPE_CHECKING:
    from stepwatch.server.engine.model import LoadedModel
    from stepwatch.server.engine.verifiers import VerifierRegistry

__all__ = ["ModelLoader", "Service", "create_app", "load_configured_models"]

logger = logging.getLogger(__name__)

#: Loads the models a configuration names (called in a worker thread; the first is the default).
ModelLoader = Callable[[ServerConfig], "Sequence[LoadedModel]"]


def server_name() -> str:
    """``stepwatch/VERSION``, as ``welcome.server`` and ``/healthz`` report it."""
    try:
        return f"stepwatch/{version('stepwatch')}"
    except PackageNotFoundError:  # pragma: no cover - running from a bare source tree
        return "stepwatch/unknown"


def load_configured_models(config: ServerConfig) -> list[LoadedModel]:
    """Load every model of ``config`` (blocking; the lifespan runs it in a worker thread)."""
    from stepwatch.server.models.loading import ModelSpec, load_model

    quiet_libraries()
    models = []
    for text in config.model_texts():
        spec = ModelSpec.parse(text)
        logger.info("loading model %s from %s", spec.name, spec.source)
        models.append(load_model(spec))
    return models


def quiet_libraries() -> None:
    """Keep diffusers' and transformers' progress bars and advice out of the server's log."""
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:  # only pipelines with text encoders need transformers
        return
    transformers_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def build_verifiers(config: ServerConfig, models: Sequence[LoadedModel]) -> VerifierRegistry:
    """The registry: the built-in image verifiers, the models' own, entry points, the config's."""
    from stepwatch.server.engine.verifiers import VerifierRegistry

    registry = VerifierRegistry()
    for model in models:
        registry.register_model_verifiers(model.verifiers)
    if config.entry_point_verifiers:
        registry.load_entry_points()
    for spec in config.verifiers:
        registry.register_spec(spec)
    return registry


class Service:
    """Everything the app owns while it runs: catalog, store, runs, gate, open sessions.

    The endpoints get the narrow parts they use: :attr:`session_services` for the WebSocket
    sessions, :attr:`http_services` for the HTTP routes.
    """

    def __init__(
        self, config: ServerConfig, catalog: Catalog, store: Store, runs: RunManager
    ) -> None:
        self.config = config
        self.catalog = catalog
        self.store = store
        self.runs = runs
        self.gate = Gate(config.token, config.allowed_origins)
        self.sessions = OpenSessions()
        self.name = server_name()
        self._closed = anyio.Event()
        self.session_services = SessionServices(
            self.name, self.gate, catalog, runs, config.limits, self.sessions, store
        )
        self.http_services = http.HttpServices(
            self.name, self.gate, catalog, runs, store, self.sessions
        )

    @property
    def closing(self) -> bool:
        """Whether :meth:`close` has begun."""
        return self.sessions.closing

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        config: ServerConfig,
        load_models: ModelLoader,
        sampler: Sampler | None = None,
        verifiers: VerifierRegistry | None = None,
    ) -> AsyncIterator[Service]:
        """Load models and verifiers, open the store, run the manager; close all on exit.

        ``sampler`` is the engine runs are sampled by (by default the monitored engine with
        the configured verifiers, :func:`~.execution.engine_sampler`, and runs share batches up
        to ``config.max_batch``; a given ``sampler`` samples every run alone). ``verifiers``,
        when given, is the registry :func:`build_verifiers` already built for these models."""
        models = list(await anyio.to_thread.run_sync(load_models, config))
        if verifiers is None:
            verifiers = await anyio.to_thread.run_sync(build_verifiers, config, models)
        catalog = Catalog(models, verifiers, config.limits)
        store = await Store.open(config.data_dir)
        try:
            batching = None
            if sampler is None:
                sampler = engine_sampler(verifiers, config.sampler_threads)
                batched = engine_batch_sampler(verifiers, config.sampler_threads)
                batching = Batching(batched, config.max_batch, config.batch_window)
            async with RunManager.open(
                catalog, store, config.limits, sampler, config.samplers_per_device, batching
            ) as runs:
                service = cls(config, catalog, store, runs)
                try:
                    yield service
                finally:
                    with anyio.CancelScope(shield=True):
                        await service.close()
        finally:
            with anyio.CancelScope(shield=True):
                await store.close()

    async def close(self) -> None:
        """Finish every run with reason ``shutdown``, then close every connection (1001).

        Waits for the runs (up to ``shutdown_timeout``) and for the connections to send what
        waits in their outboxes (up to ``send_timeout``). Calling it again waits for the first
        call to finish.
        """
        if self.closing:
            await self._closed.wait()
            return
        self.sessions.begin_closing()
        try:
            await self.runs.shutdown()
            self.sessions.close_all("the server is shutting down")
            with anyio.move_on_after(self.config.limits.send_timeout + 1.0):
                await self.sessions.wait_closed()
        finally:
            self._closed.set()


def dashboard_directory(config: ServerConfig) -> Path | None:
    """The folder served at ``/``: the configured one, else the packaged dashboard, if any."""
    if config.dashboard_dir is not None:
        return config.dashboard_dir if config.dashboard_dir.is_dir() else None
    # The dashboard's build output (client/dashboard/dist, shipped as package data).
    packaged = importlib.resources.files("stepwatch.client") / "dashboard" / "dist"
    if packaged.is_dir() and (packaged / "index.html").is_file():
        return Path(str(packaged))
    return None


def create_app(
    config: ServerConfig,
    *,
    load_models: ModelLoader | None = None,
    sampler: Sampler | None = None,
    verifiers: VerifierRegistry | None = None,
) -> Starlette:
    """The stepwatch app for ``config``.

    ``load_models`` replaces :func:`load_configured_models` (tests hand in tiny in-memory
    pipelines this way); it runs in a worker thread during start-up. ``sampler`` replaces the
    engine at its declared interface (tests hand in a scripted one). ``verifiers`` is a registry
    built before start-up (``stepwatch serve`` builds it first, to refuse a bad verifier in one
    line).
    """
    loader = load_models or load_configured_models

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with Service.open(config, loader, sampler, verifiers) as service:
            app.state.service = service
            app.state.session_services = service.session_services
            app.state.http_services = service.http_services
            logger.info(
                "stepwatch ready: models %s, data under %s",
                ", ".join(service.catalog.models),
                config.data_dir,
            )
            yield

    routes: list[BaseRoute] = [WebSocketRoute("/ws", serve_connection), *http.routes()]
    dashboard = dashboard_directory(config)
    if dashboard is not None:
        routes.append(Mount("/", app=StaticFiles(directory=dashboard, html=True), name="dashboard"))
    # Only the Hosts the server is served under: a page whose own name was pointed at this
    # address (DNS rebinding) sends its own name, and is refused before any route.
    hosts = Middleware(
        TrustedHostMiddleware, allowed_hosts=list(config.served_hosts()), www_redirect=False
    )
    return Starlette(routes=routes, lifespan=lifespan, middleware=[hosts])
