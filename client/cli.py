"""The ``stepwatch`` command line.

One console script serves every part of stepwatch. Every command registers through the
``stepwatch.commands`` entry point group: the client's ``generate``, ``watch`` and ``runs``
(:mod:`stepwatch.client.commands`) as well as the server's ``serve`` and ``sample``, so this
module never imports the server.

An entry point names a function that receives its sub-command's :class:`argparse.ArgumentParser`,
adds its arguments, and sets the ``handler`` default to a callable that takes the parsed
namespace and returns the exit status. The function's docstring is the command's help.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points, version

COMMAND_GROUP = "stepwatch.commands"

Handler = Callable[[argparse.Namespace], int]
Configure = Callable[[argparse.ArgumentParser], None]


def _summary(configure: Configure) -> str:
    doc = configure.__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def build_parser() -> argparse.ArgumentParser:
    """Build the parser with every registered sub-command."""
    parser = argparse.ArgumentParser(
        prog="stepwatch",
        description="Watch and steer diffusion image generation while it runs.",
    )
    parser.add_argument("--version", action="version", version=f"stepwatch {version('stepwatch')}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    registered: dict[str, Configure] = {}
    for entry in entry_points(group=COMMAND_GROUP):
        registered[entry.name] = entry.load()
    for name in sorted(registered):
        configure = registered[name]
        summary = _summary(configure)
        sub = commands.add_parser(name, help=summary, description=summary)
        configure(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    return handler(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
