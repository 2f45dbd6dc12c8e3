"""`folio bench train` and `folio bench sample`: speed, measured side by side (folio/bench/).

The flags live here and the measuring code in folio/bench/, which is imported
only once a benchmark runs: `folio bench --help` needs no torch.
"""

from __future__ import annotations

import argparse

from folio.commands.common import DefaultsOnceFormatter

HELP = "measure training or sampling speed"


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `folio bench train`."""
    p.add_argument("--preset", default="video", help="preset whose model is measured")
    p.add_argument("--steps", type=int, default=3, help="timed optimizer steps per mode")
    p.add_argument(
        "--warmup", type=int, default=1, help="untimed steps first (compilation happens here)"
    )
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile modes")
    p.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure bf16 modes (default: only where bf16 is fast)",
    )
    p.add_argument("--batch-size", type=int, default=None, help="override the preset's batch size")
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default: physical cores)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--json", action="store_true", help="print one JSON object")


SAMPLE_PATHS = (
    "uncached", "module", "module-bf16", "static", "static-bf16", "static-int8",
    "static-w8a8", "compiled", "compiled-bf16", "compiled-int8", "compiled-w8a8", "aot",
    "aot-bf16", "aot-int8", "aot-w8a8",
)  # fmt: skip
"""The decode paths `folio bench sample` measures (folio/bench/sample.py's PATHS)."""
DEFAULT_SAMPLE_PATHS = (
    "uncached",
    "module",
    "static",
    "compiled",
    "compiled-bf16",
    "compiled-int8",
)


def add_sample_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `folio bench sample`."""
    p.add_argument("--preset", default="video", help="preset whose model is measured")
    p.add_argument(
        "--batch-sizes", type=int, nargs="+", default=[1, 8], help="batch sizes to measure"
    )
    p.add_argument("--new-tokens", type=int, default=500, help="new tokens per timed run")
    p.add_argument("--uncached-tokens", type=int, default=200, help="new tokens of uncached runs")
    p.add_argument(
        "--paths",
        nargs="+",
        default=list(DEFAULT_SAMPLE_PATHS),
        choices=list(SAMPLE_PATHS),
        help="decode paths to measure (see folio/bench/sample.py)",
    )
    p.add_argument(
        "--agreement-steps",
        type=int,
        default=300,
        help="greedy steps compared against float32 for the bfloat16, int8 and w8a8 paths",
    )
    p.add_argument("--repeats", type=int, default=2, help="rounds of timed runs, best kept")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or mps")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `folio bench`."""
    sub = parser.add_subparsers(dest="bench", required=True, metavar="WHAT")
    fmt = DefaultsOnceFormatter
    train = sub.add_parser(
        "train", help="training tokens/s: baseline and fast modes side by side", formatter_class=fmt
    )
    add_train_arguments(train)
    sample = sub.add_parser(
        "sample",
        help="sampling tokens/s: KV cache against re-running the context",
        formatter_class=fmt,
    )
    add_sample_arguments(sample)


def run(args: argparse.Namespace) -> None:
    """Run the benchmark chosen (train or sample)."""
    if args.bench == "train":
        from folio.bench.train import run_train

        run_train(args)
    else:
        from folio.bench.sample import run as run_sample

        run_sample(args)
