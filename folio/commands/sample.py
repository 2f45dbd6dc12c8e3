"""`folio sample`: text from a checkpoint (folio/sample/sampler.py)."""

from __future__ import annotations

import argparse
import sys

from folio.commands.common import checkpoint_arguments, precision_arguments

HELP = "generate text from a checkpoint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `folio sample`."""
    checkpoint_arguments(parser)
    parser.add_argument(
        "--prompt", default="", help="text to continue (empty: start from a newline)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=500, help="tokens to generate")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    parser.add_argument(
        "--top-k", type=int, default=None, help="sample among the k most likely tokens"
    )
    parser.add_argument(
        "--top-p", type=float, default=None, help="nucleus sampling threshold in (0, 1]"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible samples")
    parser.add_argument(
        "--stop",
        action="append",
        metavar="TEXT",
        help="stop a sample when it produces TEXT (repeatable)",
    )
    parser.add_argument(
        "--num-samples", type=int, default=1, help="samples decoded together as a batch"
    )
    parser.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    precision_arguments(parser)


def run(args: argparse.Namespace) -> None:
    """Print the prompt and its continuation(s), streamed if asked."""
    import warnings

    from folio.runtime import autocast_dtype, pick_device, resolve_dtype
    from folio.sample import SamplingConfig, load_sampler

    device = pick_device(args.device)
    sampler = load_sampler(
        args.checkpoint, args.which, device, autocast_dtype(resolve_dtype(args.dtype, device))
    )
    cfg = SamplingConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop=args.stop or [],
        num_samples=args.num_samples,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if args.stream and cfg.num_samples == 1:
            sys.stdout.write(args.prompt)
            for pieces in sampler.stream(args.prompt, cfg):
                sys.stdout.write(pieces[0])
                sys.stdout.flush()
            sys.stdout.write("\n")
        else:
            for i, text in enumerate(sampler.generate(args.prompt, cfg)):
                if cfg.num_samples > 1:
                    print(f"--- sample {i + 1} ---")
                print(args.prompt + text)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
