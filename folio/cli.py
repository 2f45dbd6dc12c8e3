"""The `folio` command: a table of subcommands, each a module in folio/commands/.

A command module has `HELP` (one line), `add_arguments(parser)` and
`run(args)`, and calls library functions a notebook can call too. Every error
a user can cause surfaces as a FolioError, printed here as one line on stderr
with exit status 2; Ctrl-C exits with 130. When the reader of stdout goes
away (`folio sample | head -c 50`), the command stops quietly with exit
status 141, what a shell reports for a Unix tool stopped by SIGPIPE, so
`set -o pipefail` sees the output was cut short, as it would for `cat`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from folio.commands.common import DefaultsOnceFormatter
from folio.errors import FolioError

COMMANDS = (
    "prepare",
    "train",
    "sft",
    "eval",
    "sample",
    "chat",
    "serve",
    "tasks",
    "rl",
    "prefs",
    "reward",
    "dpo",
    "bench",
    "ladder",
    "export",
    "recipe",
)
"""In the order `folio --help` lists them; `folio NAME` runs folio/commands/NAME.py."""


EXIT_BROKEN_PIPE = 128 + 13  # as a shell reports a command stopped by SIGPIPE


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand, built from the table."""
    parser = argparse.ArgumentParser(
        prog="folio", description="Folio: build, train, sample and evaluate a GPT from scratch."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"folio.commands.{name}")
        command = sub.add_parser(name, help=module.HELP, formatter_class=DefaultsOnceFormatter)
        module.add_arguments(command)
        command.set_defaults(func=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
        sys.stdout.flush()  # here, so that a closed pipe is caught below and not at exit
    except FolioError as e:
        print(f"folio: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("folio: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    return 0


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush finds no closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout is no file (a test's StringIO)
        pass


if __name__ == "__main__":
    sys.exit(main())
