"""The server's sub-commands of the ``stepwatch`` command line.

Registered through the ``stepwatch.commands`` entry point group (see
:mod:`stepwatch.client.cli`). Importing this module must stay cheap: torch and the web stack are
imported inside the handlers, never at module level.
"""

from __future__ import annotations

import argparse
import sys


def serve(parser: argparse.ArgumentParser) -> None:
    """Run the stepwatch service."""
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument("--port", type=int, default=8765, help="port to listen on")
    parser.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    print(
        "stepwatch serve: the service is not built yet (the streaming server is issue #5). "
        "Nothing is listening.",
        file=sys.stderr,
    )
    return 1
