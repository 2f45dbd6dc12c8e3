"""Flags several commands share: which checkpoint, and the precision and device to run it on."""

from __future__ import annotations

import argparse

from folio.runtime import DTYPES


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
