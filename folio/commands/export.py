"""`folio export`: a checkpoint as a Hugging Face GPT-2 directory (folio/hf.py)."""

from __future__ import annotations

import argparse

from folio.commands.common import checkpoint_arguments

HELP = "write a checkpoint in another format (Hugging Face GPT-2)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `folio export`."""
    checkpoint_arguments(parser)
    parser.add_argument(
        "--format", choices=["hf"], default="hf", help="hf: a GPT2LMHeadModel directory"
    )
    parser.add_argument(
        "--out", required=True, help="directory to write (must not exist, or be empty)"
    )


def run(args: argparse.Namespace) -> None:
    """Write the Hugging Face directory."""
    from folio.hf import export_checkpoint_hf

    out = export_checkpoint_hf(args.checkpoint, args.out, args.which)
    print(f"wrote {out} (GPT2LMHeadModel.from_pretrained loads it)")
