"""`folio sft`: fine-tune a trained model on conversations (folio/stages/sft.py)."""

from __future__ import annotations

import argparse

from folio.commands.common import report_result, run_flags, trainer_flags
from folio.config.run import add_config_flags, add_stage_flags
from folio.config.sft import EVAL_PROMPTS, MIX_FRACTION, VAL_FRACTION, SFTConfig
from folio.errors import FolioError

HELP = "fine-tune a trained model on conversations (loss on the assistant's tokens only)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `folio sft`."""
    parser.add_argument(
        "--init-from",
        required=True,
        metavar="run:DIR",
        help="the base model: run:DIR (a Folio run directory, its latest checkpoint, or a "
        "checkpoint directory) or hf:DIR (a Hugging Face GPT-2 directory with its tokenizer); "
        "the model's shape and block size are the base's",
    )
    parser.add_argument(
        "--data",
        required=True,
        help="conversations: a JSONL file, or a directory (with a train.jsonl, as `folio tasks "
        "make` writes: it trains, and val.jsonl or test.jsonl validates; else every *.jsonl "
        "trains)",
    )
    parser.add_argument("--out", required=True, help="run directory (checkpoints, metrics, plot)")
    parser.add_argument(
        "--preset",
        default="sft",
        help="training settings (a preset name or TOML file); of its [model] section only "
        "dropout applies",
    )
    parser.add_argument(
        "--mix-data",
        default=None,
        help="a prepared dataset (`folio prepare`) whose text is mixed into training batches, "
        "so the model keeps it (default: none)",
    )
    parser.add_argument(
        "--mix-fraction", dest="cfg:sft.mix_fraction", metavar="V", default=None,
        help=f"= --sft.mix_fraction V: share of each training batch's rows taken from --mix-data "
        f"(the preset's: {MIX_FRACTION})",
    )  # fmt: skip
    parser.add_argument(
        "--val-fraction", dest="cfg:sft.val_fraction", metavar="V", default=None,
        help=f"= --sft.val_fraction V: share of the conversations held out for validation when "
        f"no val.jsonl or test.jsonl is given (the preset's: {VAL_FRACTION})",
    )  # fmt: skip
    parser.add_argument(
        "--eval-prompts", dest="cfg:sft.eval_prompts", metavar="V", default=None,
        help=f"= --sft.eval_prompts V: validation prompts answered greedily at each eval for "
        f"pass@1 and the end rate, 0: none (the preset's: {EVAL_PROMPTS})",
    )  # fmt: skip
    run_flags(parser)
    add_stage_flags(parser, "sft", SFTConfig, "SFT settings (override the preset's [sft] table)")
    add_config_flags(parser)


def run(args: argparse.Namespace) -> None:
    """Fine-tune, then print the result (rank 0 only under torchrun)."""
    from folio.config.run import (
        build_run_config,
        check_model_overrides,
        config_overrides,
        stage_config,
    )

    overrides = config_overrides(args)
    check_model_overrides(overrides, args.init_from)
    run_config = build_run_config(args.preset, overrides, stages=("sft",))
    cfg = stage_config(SFTConfig, args.preset, "sft", overrides)
    if args.mix_data is None and any(k == "sft.mix_fraction" for k, _ in overrides):
        raise FolioError("--mix-fraction needs --mix-data (the pretraining dataset to mix in)")
    from folio.stages.sft import train  # torch, only once the flags are known to be good

    result = train(
        run_config,
        args.init_from,
        args.data,
        args.out,
        mix_data=args.mix_data,
        mix_fraction=cfg.mix_fraction if args.mix_data is not None else None,
        val_fraction=cfg.val_fraction,
        eval_prompts=cfg.eval_prompts,
        **trainer_flags(args),
    )
    report_result(args, result, ("pass_at_1", "end_rate", "text_val_loss"))
