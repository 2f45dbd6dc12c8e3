"""`folio sft`: fine-tune a trained model on conversations (folio/stages/sft.py)."""

from __future__ import annotations

import argparse
import json

from folio.config.run import add_config_flags
from folio.config.sft import EVAL_PROMPTS, MIX_FRACTION, VAL_FRACTION

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
        "--mix-fraction",
        type=float,
        default=None,
        help=f"share of each training batch's rows taken from --mix-data "
        f"(default: {MIX_FRACTION} with --mix-data)",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=VAL_FRACTION,
        help="share of the conversations held out for validation when no val.jsonl or "
        "test.jsonl is given",
    )
    parser.add_argument(
        "--eval-prompts",
        type=int,
        default=EVAL_PROMPTS,
        help="validation prompts answered greedily at each eval for pass@1 and the end rate "
        "(0: none)",
    )
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
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_config_flags(parser)


def run(args: argparse.Namespace) -> None:
    """Fine-tune, then print the result (rank 0 only under torchrun)."""
    from folio.config.run import build_run_config, check_model_overrides, config_overrides
    from folio.runtime import is_main

    overrides = config_overrides(args)
    check_model_overrides(overrides, args.init_from)
    run_config = build_run_config(args.preset, overrides, stages=())
    from folio.stages.sft import train  # torch, only once the flags are known to be good

    result = train(
        run_config,
        args.init_from,
        args.data,
        args.out,
        mix_data=args.mix_data,
        mix_fraction=args.mix_fraction,
        val_fraction=args.val_fraction,
        eval_prompts=args.eval_prompts,
        resume=args.resume,
        restart=args.restart,
        progress=not args.quiet,
        force=args.force,
    )
    if not is_main():
        return
    last = result.history[-1] if result.history else {}
    summary = {
        "run_dir": str(result.run_dir),
        "step": result.step,
        "train_loss": result.train_loss,
        "val_loss": result.val_loss,
        "best_val_loss": result.best_val_loss,
        **{k: last[k] for k in ("pass_at_1", "end_rate", "text_val_loss") if k in last},
        "seconds": round(result.seconds, 2),
        "tokens_per_s": round(result.tokens_per_s, 1),
        "params": result.n_params,
        "stopped": result.stopped,
    }
    if args.json:
        print(json.dumps(summary))
        return
    names = {"pass_at_1": "pass@1", "end_rate": "end rate"}
    extra = "".join(f", {name} {last[k]:.3f}" for k, name in names.items() if k in last)
    print(
        f"done: step {result.step}, val loss {result.val_loss:.4f}{extra}, "
        f"{result.seconds:.1f} s -> {result.run_dir}"
    )
