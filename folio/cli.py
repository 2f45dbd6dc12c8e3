"""The `folio` command: a table of subcommands, each a module in folio/commands/.

A command module has `HELP` (one line), `add_arguments(parser)` and
`run(args)`, and calls library functions a notebook can call too. Every error
a user can cause surfaces as a FolioError, printed here as one line on stderr
with exit status 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from folio.errors import FolioError

COMMANDS = (
    "prepare",
    "train",
    "eval",
    "sample",
    "chat",
    "serve",
    "tasks",
    "bench",
    "ladder",
    "export",
)
"""In the order `folio --help` lists them; `folio NAME` runs folio/commands/NAME.py."""


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand, built from the table."""
    parser = argparse.ArgumentParser(
        prog="folio", description="Folio: build, train, sample and evaluate a GPT from scratch."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"folio.commands.{name}")
        command = sub.add_parser(
            name, help=module.HELP, formatter_class=argparse.ArgumentDefaultsHelpFormatter
        )
        module.add_arguments(command)
        command.set_defaults(func=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except FolioError as e:
        print(f"folio: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("folio: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
