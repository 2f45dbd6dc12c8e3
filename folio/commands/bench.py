"""`folio bench train` and `folio bench sample`: speed, measured side by side (folio/bench/)."""

from __future__ import annotations

import argparse

from folio.bench import sample as bench_sample
from folio.bench import train as bench_train

HELP = "measure training or sampling speed"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `folio bench`."""
    sub = parser.add_subparsers(dest="bench", required=True, metavar="WHAT")
    fmt = argparse.ArgumentDefaultsHelpFormatter
    train = sub.add_parser(
        "train", help="training tokens/s: baseline and fast modes side by side", formatter_class=fmt
    )
    bench_train.add_train_arguments(train)
    train.set_defaults(bench_run=bench_train.run_train)
    sample = sub.add_parser(
        "sample",
        help="sampling tokens/s: KV cache against re-running the context",
        formatter_class=fmt,
    )
    sample.add_argument("--preset", default="video", help="preset whose model is measured")
    bench_sample.add_arguments(sample)
    sample.set_defaults(bench_run=bench_sample.run)


def run(args: argparse.Namespace) -> None:
    """Run the benchmark chosen (train or sample)."""
    args.bench_run(args)
