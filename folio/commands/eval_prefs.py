"""`folio eval prefs`: a reward model's pairwise accuracy on held-out preference pairs."""

from __future__ import annotations

import argparse
import json

from folio.commands.common import checkpoint_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `folio eval prefs`."""
    checkpoint_arguments(parser)
    parser.add_argument(
        "--data", required=True,
        help="a preference directory (its test.jsonl is scored) or a JSONL file of pairs",
    )  # fmt: skip
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> None:
    """Score every pair: the share the reward model orders as labelled, and the mean margin."""
    from pathlib import Path

    from folio.checkpoint import load_checkpoint
    from folio.data.prefs import read_pairs, read_pref_dir
    from folio.errors import FolioError
    from folio.runtime import pick_device
    from folio.stages.preference import pair_rows, pairwise_accuracy

    ck = load_checkpoint(args.checkpoint, args.which, pick_device(args.device))
    if ck.model_config.model_type != "reward":
        raise FolioError(
            f"{ck.path}: this is a {ck.model_config.model_type} language model, not a reward "
            f"model; train one with `folio reward`"
        )
    pairs = read_pref_dir(args.data)[1] if Path(args.data).is_dir() else read_pairs(args.data)
    ck.model.eval()
    figures = pairwise_accuracy(
        ck.model, pair_rows(pairs, ck.tokenizer, ck.model_config.block_size)
    )
    out = {"checkpoint": str(ck.path), "pairs": len(pairs), **figures}
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"pairs {len(pairs)}, accuracy {figures['accuracy']:.4f}, margin {figures['margin']:.4f}"
        )
