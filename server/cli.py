"""The server's sub-commands of the ``stepwatch`` command line: ``stepwatch serve``.

Registered through the ``stepwatch.commands`` entry point group (see
:mod:`stepwatch.client.cli`). Importing this module must stay cheap: torch and the web stack are
imported inside the handler, never at module level.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from stepwatch.server.config import DEFAULT_MODEL, DEFAULT_PORT, ServerConfig, ServiceLimits

TOKEN_ENVIRONMENT = "STEPWATCH_TOKEN"


def serve(parser: argparse.ArgumentParser) -> None:
    """Run the stepwatch service (the built-in model by default, offline)."""
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="port to listen on (0: any free port)"
    )
    parser.add_argument(
        "--model",
        action="append",
        metavar="NAME=SPEC",
        help="a model: NAME=SOURCE[,device=...,dtype=...,tiny_vae=...]; SOURCE is builtin:shapes, "
        f"a diffusers folder or a hub id (repeatable; the first is the default; "
        f"default {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--verifier",
        action="append",
        default=[],
        metavar="ID=module:callable",
        help="register a custom verifier (repeatable), or a CLIP-score one: "
        "ID=clip:SOURCE[,aesthetic=HEAD.safetensors], SOURCE a CLIP folder or hub id; entry "
        "points in the stepwatch.verifiers group are registered too",
    )
    parser.add_argument(
        "--data", type=Path, default=Path("data"), help="folder for the run store and images"
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="auto, cpu, cuda or cuda:N, for models whose spec names no device",
    )
    parser.add_argument(
        "--max-queue", type=int, default=ServiceLimits.max_queue, help="runs that may wait"
    )
    parser.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENVIRONMENT),
        help=f"API token every client must present (default: ${TOKEN_ENVIRONMENT})",
    )
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="browser origin allowed besides this server's own, e.g. "
        "https://example.org (repeatable; * allows any)",
    )
    parser.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a Host name (or address) clients may reach this server under, besides the "
        "loopback names and --host (repeatable; * allows any, which DNS rebinding can exploit)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per sampler (default: half the CPUs, at most 8)",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=ServerConfig.max_batch,
        help="queued runs that can share a denoiser call run as one batch of at most this many "
        f"(1: every run alone; default {ServerConfig.max_batch})",
    )
    parser.add_argument(
        "--batch-window",
        type=float,
        default=ServerConfig.batch_window,
        metavar="SECONDS",
        help="longest a run waits for starts being admitted at that moment to join its batch "
        f"(never when none is; default {ServerConfig.batch_window})",
    )
    parser.add_argument(
        "--dashboard", type=Path, default=None, help="folder of static files to serve at /"
    )
    parser.set_defaults(handler=_serve)


def config_from(args: argparse.Namespace) -> ServerConfig:
    """The :class:`ServerConfig` the parsed arguments describe."""
    return ServerConfig(
        host=args.host,
        port=args.port,
        models=tuple(args.model) if args.model else (DEFAULT_MODEL,),
        verifiers=tuple(args.verifier),
        data_dir=args.data,
        device=args.device,
        token=args.token or None,
        allowed_origins=tuple(args.allow_origin),
        allowed_hosts=tuple(args.allow_host),
        max_batch=args.max_batch,
        batch_window=args.batch_window,
        **({"sampler_threads": args.threads} if args.threads is not None else {}),
        dashboard_dir=args.dashboard,
        limits=ServiceLimits(max_queue=args.max_queue),
    )


def _announce(host: str, port: int) -> None:
    shown = f"[{host}]" if ":" in host else host
    print(
        f"stepwatch: serving on http://{shown}:{port} (WebSocket /ws)", file=sys.stderr, flush=True
    )


def _serve(args: argparse.Namespace) -> int:
    from stepwatch.server.config import ConfigError

    try:
        config = config_from(args)
    except ConfigError as exc:
        print(f"stepwatch serve: {exc}", file=sys.stderr)
        return 2
    from stepwatch.server.store import StoreError, probe_writable

    try:
        probe_writable(config.data_dir)
    except StoreError as exc:  # said plainly here, not as a traceback from the app's start-up
        print(f"stepwatch serve: the data folder must be writable: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    import anyio

    from stepwatch.server.app import build_verifiers, load_configured_models
    from stepwatch.server.engine.errors import ModelError, VerifierError
    from stepwatch.server.serving import serve_until_signalled

    # Loaded before serving, so that a model the engine cannot watch, or a verifier that cannot
    # be had, is one line, not the traceback an app's failed start-up prints.
    try:
        models = load_configured_models(config)
        verifiers = build_verifiers(config, models)
    except (ModelError, VerifierError) as exc:
        print(f"stepwatch serve: {exc}", file=sys.stderr)
        return 2
    return anyio.run(serve_until_signalled, config, _announce, lambda _config: models, verifiers)
