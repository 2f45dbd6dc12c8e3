"""Flags several commands share: which checkpoint, the precision and device to run it on, and the
run flags and printed result of every training command."""

from __future__ import annotations

import argparse
import json
import re
import sys

from folio.runtime import DTYPES


class DefaultsOnceFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: ...)" to a flag's help unless the help already says its default.

    A required flag has no default to show, and one whose help says "default"
    or "required" already says it (argparse's own formatter would add a second).
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required or re.search(r"\bdefault\b|\brequired\b", text):
            return text
        return super()._get_help_string(action)


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (argparse prints the one-line error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def checkpoint_arguments(p: argparse.ArgumentParser, required: bool = True) -> None:
    """--checkpoint and --which."""
    p.add_argument("--checkpoint", required=required, help="run directory or checkpoint directory")
    p.add_argument(
        "--which",
        choices=["latest", "best"],
        default="latest",
        help="which checkpoint of a run directory",
    )


def precision_arguments(p: argparse.ArgumentParser) -> None:
    """--dtype and --device."""
    p.add_argument("--dtype", default="float32", choices=list(DTYPES), help="precision")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")


def run_flags(p: argparse.ArgumentParser) -> None:
    """--resume, --restart, --force, --quiet and --json: the run flags of every training command."""
    p.add_argument(
        "--resume", action="store_true", help="continue from the run directory's latest checkpoint"
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help="start over in a run directory that already holds a run, moving the old one "
        "aside to RUN.old-N (never deleted)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="train even when the memory estimate exceeds the memory available",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


def trainer_flags(args: argparse.Namespace) -> dict:
    """The run flags as the stages take them; with --json, progress lines go to stderr."""
    return dict(
        resume=args.resume,
        restart=args.restart,
        force=args.force,
        progress=not args.quiet,
        log=(lambda *a: print(*a, file=sys.stderr)) if args.json else print,
    )


def report_result(
    args: argparse.Namespace, result, figures: tuple[str, ...] = (), **extra: object
) -> None:
    """Print how a training command ended: one shape for every stage.

    With --json, one object: the run's fields (run_dir, step, the losses, seconds,
    tokens/s, params, why it stopped), then `extra` and the stage's `figures` from its
    last evaluation. Without, one line: "done: step N, ... -> RUN".
    """
    from folio.runtime import is_main

    if not is_main():  # under torchrun, rank 0 speaks for the job
        return
    last = result.history[-1] if result.history else {}
    shown = {k: last[k] for k in figures if k in last}
    summary = {
        "run_dir": str(result.run_dir),
        **extra,
        "step": result.step,
        "train_loss": result.train_loss,
        "val_loss": result.val_loss,
        "best_val_loss": result.best_val_loss,
        **shown,
        "seconds": round(result.seconds, 2),
        "tokens_per_s": round(result.tokens_per_s, 1),
        "params": result.n_params,
        "stopped": result.stopped,
    }
    if args.json:
        print(json.dumps(summary))
        return
    parts = [f"step {result.step}"]
    if result.val_loss is not None:
        parts.append(f"val loss {result.val_loss:.4f}")
    parts += [f"{k.replace('_at_', '@').replace('_', ' ')} {v:.4f}" for k, v in shown.items()]
    parts.append(f"{result.seconds:.1f} s")
    if not shown:
        parts.append(f"{result.tokens_per_s:,.0f} tokens/s")
    print(f"done: {', '.join(parts)} -> {result.run_dir}")
