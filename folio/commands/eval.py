"""`folio eval`: a checkpoint's loss, perplexity and bits per character/byte on a dataset
(folio/eval/loss.py); `folio eval tasks` scores replies to task prompts (folio/commands/eval_tasks.py),
`folio eval prefs` a reward model's pairwise accuracy, `folio eval gold` a chat model's gold score."""

from __future__ import annotations

import argparse
import json

from folio.commands import eval_gold, eval_prefs, eval_tasks
from folio.commands.common import DefaultsOnceFormatter, checkpoint_arguments, precision_arguments
from folio.errors import FolioError

HELP = (
    "loss, perplexity and bits per character of a checkpoint; "
    "`folio eval tasks` scores replies to task prompts"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `folio eval`."""
    checkpoint_arguments(parser, required=False)  # required, but not before `folio eval tasks`
    parser.add_argument(
        "--data", default=None, help="dataset directory (default: the one the run trained on)"
    )
    parser.add_argument(
        "--splits",
        nargs="+",
        choices=["train", "val"],
        default=["val"],
        help="splits to evaluate (the train split of a real corpus takes minutes: ask for it)",
    )
    parser.add_argument(
        "--max-batches",
        type=int,
        default=None,
        help="stop after this many batches per split, at least 1 (default: the whole split)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="windows per batch (>= 1)")
    precision_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    modes = parser.add_subparsers(dest="eval_mode", metavar="[tasks|prefs|gold]")
    tasks = modes.add_parser(
        "tasks",
        help="pass@1, pass@k, end rate and reply length on tasks",
        formatter_class=DefaultsOnceFormatter,
    )
    eval_tasks.add_arguments(tasks)
    tasks.set_defaults(func=eval_tasks.run)
    prefs = modes.add_parser(
        "prefs",
        help="a reward model's pairwise accuracy on held-out preference pairs",
        formatter_class=DefaultsOnceFormatter,
    )
    eval_prefs.add_arguments(prefs)
    prefs.set_defaults(func=eval_prefs.run)
    gold = modes.add_parser(
        "gold",
        help="a chat model's gold-rule score on held-out prompts, and its KL to a reference",
        formatter_class=DefaultsOnceFormatter,
    )
    eval_gold.add_arguments(gold)
    gold.set_defaults(func=eval_gold.run)


def run(args: argparse.Namespace) -> None:
    """Evaluate the checkpoint on each split and print the figures."""
    from folio.eval.loss import check_eval_limits, evaluate_checkpoint
    from folio.runtime import pick_device, resolve_dtype

    if args.checkpoint is None:
        raise FolioError("eval: --checkpoint is required (or use `folio eval tasks ...`)")
    check_eval_limits(args.batch_size, args.max_batches)
    device = pick_device(args.device)
    out = evaluate_checkpoint(
        args.checkpoint, args.data, splits=args.splits, which=args.which, device=device,
        dtype=resolve_dtype(args.dtype, device), batch_size=args.batch_size,
        max_batches=args.max_batches, progress=True,
    )  # fmt: skip
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")
