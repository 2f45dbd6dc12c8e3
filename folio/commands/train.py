"""`folio train`: pretrain a model on a prepared dataset (folio/stages/pretrain.py)."""

from __future__ import annotations

import argparse
import json

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
        "--resume", action="store_true", help="continue from the run directory's latest checkpoint"
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="start over in a run directory that already holds a run, moving the old one "
        "aside to RUN.old-N (never deleted)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="train even when the memory estimate exceeds the memory available",
    )
    parser.add_argument(
        "--init-from",
        default=None,
        metavar="hf:DIR|run:DIR",
        help="start from a local Hugging Face GPT-2 directory's weights, or a Folio run's "
        "(its latest checkpoint) or checkpoint's, its vocabulary extended for the dataset; "
        "the model's shape comes from DIR and the preset's [model] section is ignored except "
        "dropout",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
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
        resume=args.resume,
        progress=not args.quiet,
        init_from=args.init_from,
        force=args.force,
        restart=args.restart,
    )
    from folio.runtime import is_main

    if not is_main():  # under torchrun, rank 0 speaks for the job
        return
    summary = {
        "run_dir": str(result.run_dir),
        "step": result.step,
        "train_loss": result.train_loss,
        "val_loss": result.val_loss,
        "best_val_loss": result.best_val_loss,
        "seconds": round(result.seconds, 2),
        "tokens_per_s": round(result.tokens_per_s, 1),
        "params": result.n_params,
        "stopped": result.stopped,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"done: step {result.step}, val loss {result.val_loss:.4f}, "
            f"{result.seconds:.1f} s, {result.tokens_per_s:,.0f} tokens/s -> {result.run_dir}"
        )
