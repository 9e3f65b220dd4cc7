"""The ``autolora`` command line: one module per sub-command, each with ``register`` and ``run``.

A sub-command module defines ``register(subparsers) -> argparse.ArgumentParser`` and
``run(args) -> int``. Errors caused by the user (``AutoLoRAError``) are printed as one line
and give exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from autolora import __version__
from autolora.errors import AutoLoRAError

COMMANDS = (
    "generate",
    "eval",
    "sweep",
    "report",
    "demo",
    "world",
    "app",
    "bank",
    "prior",
    "synth",
    "tune",
    "tradeoffs",
    "distill",
    "doctor",
)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available sub-command."""
    parser = argparse.ArgumentParser(prog="autolora", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"autolora {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"autolora.cli.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"autolora.cli.{name}":
                raise
            continue
        sub = module.register(subparsers)
        sub.set_defaults(_run=module.run)
    return parser


def one_line(error: AutoLoRAError) -> str:
    """The message of ``error`` on one line: loaders quote library errors that list one problem a line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
    return " ".join(lines[:2]) + more


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen sub-command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except AutoLoRAError as error:
        print(f"autolora {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"autolora {args.command}: interrupted", file=sys.stderr)
        return 130
