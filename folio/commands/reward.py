"""`folio reward`: a Bradley-Terry reward model from a chat model and preference pairs."""

from __future__ import annotations

import argparse
import json
import sys

from folio.config.prefs import PrefConfig
from folio.config.run import add_config_flags, add_stage_flags

HELP = "train a reward model on preference pairs (scalar head at the end-of-turn token)"


def add_preference_arguments(parser: argparse.ArgumentParser, preset: str) -> None:
    """The flags `folio reward` and `folio dpo` share."""
    parser.add_argument(
        "--init-from", required=True, metavar="run:DIR",
        help="the chat model to start from (a `folio sft` run); its shape and tokenizer are kept",
    )  # fmt: skip
    parser.add_argument(
        "--data", required=True, help="preference directory with train.jsonl and test.jsonl"
    )
    parser.add_argument("--out", required=True, help="run directory (checkpoints, metrics, plot)")
    parser.add_argument("--preset", default=preset, help="preset with [train] and [prefs] tables")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the run directory's latest checkpoint"
    )
    parser.add_argument(
        "--restart", action="store_true",
        help="start over in a run directory that already holds a run, moving the old one aside",
    )  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_stage_flags(parser, "prefs", PrefConfig, "preference settings (override [prefs])")
    add_config_flags(parser, model=False)


def configs(args: argparse.Namespace):
    """(run config, PrefConfig) from the preset and flags; model settings are refused."""
    from folio.config.run import build_run_config, config_overrides, stage_config
    from folio.errors import FolioError

    overrides = config_overrides(args)
    for key, _ in overrides:
        if key.startswith("model."):
            raise FolioError(f"{key}: the model comes from the --init-from checkpoint")
    return build_run_config(args.preset, overrides, stages=("prefs",)), stage_config(
        PrefConfig, args.preset, "prefs", overrides
    )


def report(args: argparse.Namespace, result, keys: tuple[str, ...]) -> None:
    """Print the result and the last eval's figures (one JSON object with --json)."""
    last = result.history[-1] if result.history else {}
    figures = {k: last[k] for k in keys if k in last}
    summary = {"run_dir": str(result.run_dir), "step": result.step, "val_loss": result.val_loss,
               **figures, "seconds": round(result.seconds, 2)}  # fmt: skip
    if args.json:
        print(json.dumps(summary))
    else:
        shown = "".join(f", {k} {v:.4f}" for k, v in figures.items())
        print(f"done: step {result.step}{shown}, {result.seconds:.1f} s -> {result.run_dir}")


def trainer_args(args: argparse.Namespace) -> dict:
    return dict(
        resume=args.resume, restart=args.restart, progress=not args.quiet,
        log=(lambda *a: print(*a, file=sys.stderr)) if args.json else print,
    )  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `folio reward`."""
    add_preference_arguments(parser, "reward")


def run(args: argparse.Namespace) -> None:
    """Train the reward model, then print its held-out pairwise accuracy."""
    run_config, cfg = configs(args)
    from folio.stages.reward import train_reward  # torch, only once the flags are known to be good

    result = train_reward(
        run_config, cfg, args.init_from, args.data, args.out, **trainer_args(args)
    )
    report(args, result, ("accuracy", "margin"))
