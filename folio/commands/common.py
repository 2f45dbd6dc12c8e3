"""Flags several commands share: which checkpoint, and the precision and device to run it on."""

from __future__ import annotations

import argparse
import re

from folio.runtime import DTYPES


class DefaultsOnceFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: ...)" to a flag's help unless the help already says its default.

    A required flag has no default to show, and one whose help says "default"
    or "required" already says it (argparse's own formatter would add a second).
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required or re.search(r"\bdefault\b|\brequired\b", text):
            return text
        return super()._get_help_string(action)


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (argparse prints the one-line error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def checkpoint_arguments(p: argparse.ArgumentParser, required: bool = True) -> None:
    """--checkpoint and --which."""
    p.add_argument("--checkpoint", required=required, help="run directory or checkpoint directory")
    p.add_argument(
        "--which",
        choices=["latest", "best"],
        default="latest",
        help="which checkpoint of a run directory",
    )


def precision_arguments(p: argparse.ArgumentParser) -> None:
    """--dtype and --device."""
    p.add_argument("--dtype", default="float32", choices=list(DTYPES), help="precision")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
