"""`folio train`: pretrain a model on a prepared dataset (folio/stages/pretrain.py)."""

from __future__ import annotations

import argparse

from folio.commands.common import report_result, run_flags, trainer_flags
from folio.config.run import add_config_flags, list_presets
from folio.errors import FolioError

HELP = "train a model on a prepared dataset"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `folio train`."""
    parser.add_argument("--data", required=True, help="dataset directory from `folio prepare`")
    parser.add_argument(
        "--preset",
        default=None,
        help=f"required: preset name ({', '.join(list_presets())}) or a TOML file "
        "(with --resume too: the run's model must match it)",
    )
    parser.add_argument("--out", required=True, help="run directory (checkpoints, metrics, plot)")
    parser.add_argument(
        "--init-from",
        default=None,
        metavar="hf:DIR|run:DIR",
        help="start from a local Hugging Face GPT-2 directory's weights, or a Folio run's "
        "(its latest checkpoint) or checkpoint's, its vocabulary extended for the dataset; "
        "the model's shape comes from DIR and the preset's [model] section is ignored except "
        "dropout",
    )
    run_flags(parser)
    add_config_flags(parser)


def run(args: argparse.Namespace) -> None:
    """Train, then print the result (rank 0 only under torchrun)."""
    from folio.config.run import build_run_config, check_model_overrides, config_overrides

    if args.preset is None:
        raise FolioError(
            f"--preset is required: one of {', '.join(list_presets())}, or a TOML file "
            "(bigram is the video's first model)"
        )
    overrides = config_overrides(args)
    check_model_overrides(overrides, args.init_from)
    run = build_run_config(args.preset, overrides, stages=())
    from folio.stages.pretrain import train  # torch, only once the flags are known to be good

    result = train(
        run,
        args.data,
        args.out,
        init_from=args.init_from,
        **trainer_flags(args),
    )
    report_result(args, result)
