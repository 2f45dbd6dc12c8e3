"""`folio prefs make` and `folio prefs check`: preference pairs for a reward model and DPO."""

from __future__ import annotations

import argparse
import json

from folio.commands.common import DefaultsOnceFormatter
from folio.data.prefs import FLIP

HELP = "make preference pairs ranked by a hidden rule, or check pairs written by hand"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `make` and `check` subcommands of `folio prefs`."""
    sub = parser.add_subparsers(dest="prefs_command", required=True, metavar="ACTION")
    pm = sub.add_parser(
        "make",
        help="sample replies from a chat model, rank them by the gold rule, write train/test pairs",
        formatter_class=DefaultsOnceFormatter,
    )
    pm.add_argument("--checkpoint", required=True, metavar="run:DIR", help="the chat model (SFT)")
    pm.add_argument("--out", required=True, help="directory to write (new, empty, or a prefs dir)")
    pm.add_argument("--n", type=int, default=400, help="training prompts")
    pm.add_argument("--n-test", type=int, default=100, help="held-out prompts")
    pm.add_argument("--replies", type=int, default=4, help="replies sampled per prompt (>= 2)")
    pm.add_argument("--flip", type=float, default=FLIP, help="share of labels flipped")
    pm.add_argument(
        "--seed", type=int, default=0, help="seed of the prompts, replies and flips, in [0, 2**63)"
    )
    pm.add_argument("--corpus", default="shakespeare", help="where speakers and words come from")
    pm.add_argument("--max-new-tokens", type=int, default=64, help="reply length limit")
    pm.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    pm.add_argument(
        "--pairs", choices=("extremes", "all"), default="extremes",
        help="pair each prompt's best reply with its worst (one pair a prompt), or every two "
        "replies whose scores differ (up to replies*(replies-1)/2 pairs a prompt)",
    )  # fmt: skip
    pm.add_argument(
        "--force", action="store_true", help="replace a preference directory edited by hand"
    )
    pm.add_argument("--json", action="store_true", help="print the manifest as one JSON object")
    pc = sub.add_parser(
        "check", help="read a preference directory (or one JSONL file) and count its pairs",
        formatter_class=DefaultsOnceFormatter,
    )  # fmt: skip
    pc.add_argument("path", help="a directory with train.jsonl and test.jsonl, or a .jsonl file")
    pc.add_argument("--json", action="store_true", help="print the counts as one JSON object")


def run(args: argparse.Namespace) -> None:
    """Make a preference directory, or check one."""
    from pathlib import Path

    from folio.data.prefs import read_pairs, read_pref_dir

    if args.prefs_command == "check":
        if Path(args.path).is_dir():
            train, test = read_pref_dir(args.path)
            counts = {"train": len(train), "test": len(test)}
        else:
            counts = {"pairs": len(read_pairs(args.path))}
        print(
            json.dumps(counts)
            if args.json
            else ", ".join(f"{k}: {v} pairs" for k, v in counts.items())
        )
        return
    from folio.stages.prefs import make_preferences

    manifest = make_preferences(
        args.checkpoint, args.out, n=args.n, n_test=args.n_test, replies=args.replies,
        flip=args.flip, seed=args.seed, corpus=args.corpus, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, force=args.force, pairing=args.pairs,
    )  # fmt: skip
    if args.json:
        print(json.dumps({"out": args.out, **manifest}))
    else:
        p = manifest["pairs"]
        print(f"wrote {args.out}: train.jsonl ({p['train']} pairs), test.jsonl ({p['test']} pairs)")
