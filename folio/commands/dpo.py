"""`folio dpo`: Direct Preference Optimization of a chat model on preference pairs."""

from __future__ import annotations

import argparse

from folio.commands.common import report_result, trainer_flags
from folio.commands.reward import add_preference_arguments, configs
from folio.config.rl import check_ptx

HELP = "DPO: tune a chat model on preference pairs against a frozen reference"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `folio dpo`."""
    add_preference_arguments(parser, "dpo")
    parser.add_argument(
        "--beta", dest="cfg:prefs.beta", metavar="V", default=None,
        help="= --prefs.beta V: the strength of the KL leash (the preset's: 0.1)",
    )  # fmt: skip
    parser.add_argument(
        "--reference", default=None, metavar="run:DIR",
        help="the frozen reference (default: the --init-from model)",
    )  # fmt: skip
    parser.add_argument(
        "--ptx-data", default=None, metavar="PATH",
        help="conversations (a JSONL file, or a tasks directory's train.jsonl) whose SFT loss is "
        "mixed into every step, weighted by --prefs.ptx_coef",
    )  # fmt: skip


def run(args: argparse.Namespace) -> None:
    """Train with DPO, then print the held-out margin, accuracy and gold score."""
    run_config, cfg = configs(args)
    check_ptx(args.ptx_data, cfg.ptx_coef, "prefs")
    from folio.stages.dpo import train_dpo  # torch, only once the flags are known to be good

    result = train_dpo(
        run_config, cfg, args.init_from, args.data, args.out, reference_from=args.reference,
        ptx_data=args.ptx_data, **trainer_flags(args),
    )  # fmt: skip
    report_result(
        args, result, ("margin", "accuracy", "gold_score", "chosen_logprob", "rejected_logprob")
    )
