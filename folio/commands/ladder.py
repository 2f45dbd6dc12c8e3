"""`folio ladder`: the video's build-up, rung by rung, as one table (folio/recipes/ladder.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "reproduce the video's build-up as one table of val losses"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `folio ladder`."""
    parser.add_argument(
        "--data", required=True, help="dataset directory (the video uses tinyshakespeare)"
    )
    parser.add_argument(
        "--out", required=True, help="directory for the rung runs, ladder.md/.json/.png"
    )
    parser.add_argument(
        "--scale-up", action="store_true", help="also train the video preset (hours on a CPU)"
    )
    parser.add_argument("--seed", type=int, default=1337, help="seed shared by every rung")
    parser.add_argument(
        "--max-iters", type=int, default=None, help="override every rung's iterations (quick look)"
    )
    parser.add_argument(
        "--eval-iters",
        type=int,
        default=None,
        help="override the batches each rung's in-training evals average (the table's val loss "
        "is always the whole val split)",
    )
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON list")


def run(args: argparse.Namespace) -> None:
    """Train every rung and print the table."""
    from folio.recipes.ladder import markdown_table, rows_json, run_ladder

    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    rows = run_ladder(
        args.data,
        args.out,
        scale_up=args.scale_up,
        seed=args.seed,
        max_iters=args.max_iters,
        eval_iters=args.eval_iters,
        log=log,
    )
    if args.json:
        print(rows_json(rows))
    else:
        print(markdown_table(rows))
        print(f"wrote {Path(args.out) / 'ladder.md'}, ladder.json and ladder.png")
