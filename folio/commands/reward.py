"""`folio reward`: a Bradley-Terry reward model from a chat model and preference pairs."""

from __future__ import annotations

import argparse

from folio.commands.common import report_result, run_flags, trainer_flags
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
    run_flags(parser)
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `folio reward`."""
    add_preference_arguments(parser, "reward")


def run(args: argparse.Namespace) -> None:
    """Train the reward model, then print its held-out pairwise accuracy."""
    run_config, cfg = configs(args)
    from folio.stages.reward import train_reward  # torch, only once the flags are known to be good

    result = train_reward(
        run_config, cfg, args.init_from, args.data, args.out, **trainer_flags(args)
    )
    report_result(args, result, ("accuracy", "margin"))
