"""`folio recipe assistant`: pretrain, SFT, GRPO, preference pairs, a reward model, PPO and DPO in
one resumable command, with a table of held-out figures per stage (folio/recipes/assistant.py)."""

from __future__ import annotations

import argparse
import json
import sys

HELP = "the whole assistant pipeline (pretrain -> SFT -> GRPO -> reward model -> PPO, DPO)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `folio recipe`."""
    from folio.commands.common import positive_int

    parser.add_argument("recipe", choices=["assistant"], help="the recipe to run")
    parser.add_argument(
        "--out", required=True,
        help="directory of every stage's run, data and log (new, empty, or an earlier recipe's "
        "OUT: its finished steps are skipped)",
    )  # fmt: skip
    parser.add_argument(
        "--base", default=None, metavar="RUN",
        help="start from this pretrained run instead of pretraining one (no Shakespeare is "
        "mixed into SFT then)",
    )  # fmt: skip
    parser.add_argument(
        "--scale", choices=["laptop", "tiny"], default="laptop",
        help="laptop: the BENCHMARKS.md figures, about 22 minutes on 2 cores; tiny: about a "
        "minute (each step's start-up is most of it), figures meaningless",
    )  # fmt: skip
    parser.add_argument(
        "--tokenizer", choices=["char", "bpe"], default="char",
        help="the pretrained base's tokenizer (char, or a byte-level BPE of --bpe-vocab tokens)",
    )  # fmt: skip
    parser.add_argument("--bpe-vocab", type=positive_int, default=1024, help="BPE vocabulary size")
    parser.add_argument(
        "--seed", type=int, default=None,
        help="train.seed of every training step (default: each preset's); the data and the "
        "held-out sets stay the same, so two seeds' tables compare",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the table as one JSON object")


def run(args: argparse.Namespace) -> None:
    """Run every stage not yet done, then print the table (and keep it in OUT/table.*)."""
    from pathlib import Path

    from folio.errors import FolioError
    from folio.fsutil import atomic_write_json, atomic_write_text
    from folio.inputs import check_seed
    from folio.recipes.assistant import SCALES, Recipe, format_table
    from folio.recipes.runner import Stopped
    from folio.recipes.transcript import make_transcript

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FolioError(f"--out {out}: exists and is not a directory")
    base = None
    if args.base is not None:
        base = Path(args.base)
        if not (base / "latest.json").exists():
            raise FolioError(f"--base {base}: not a Folio run directory (no latest.json)")
        if args.tokenizer != "char":
            raise FolioError("--tokenizer applies when the recipe pretrains; --base has its own")
    if args.seed is not None:
        check_seed(args.seed)
    recipe = Recipe(out, SCALES[args.scale], base, args.tokenizer, args.bpe_vocab, args.seed)
    try:
        table = recipe.run()
    except Stopped as e:  # exit as a shell reports the signal, the step's work kept
        print(f"folio: {e}", file=sys.stderr)
        raise SystemExit(128 + e.signum) from None
    atomic_write_json(out / "table.json", table)
    text = format_table(table)
    atomic_write_text(out / "table.md", text + "\n")
    # the models talking: a scripted chat with each, beside the figures
    chats = make_transcript(out, ("sft", "grpo", "ppo", "dpo"), out / "tasks" / "test.jsonl")
    atomic_write_text(out / "transcript.md", chats)
    print(json.dumps(table) if args.json else text)
