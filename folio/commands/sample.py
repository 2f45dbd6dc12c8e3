"""`folio sample`: text from a checkpoint (folio/sample/sampler.py)."""

from __future__ import annotations

import argparse
import sys

from folio.commands.common import checkpoint_arguments, precision_arguments
from folio.errors import FolioError

HELP = "generate text from a checkpoint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `folio sample`."""
    checkpoint_arguments(parser)
    parser.add_argument(
        "--prompt", default="", help="text to continue (empty: start from a newline)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=500, help="tokens to generate (>= 1)")
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
        "--num-samples", type=int, default=1, help="samples decoded together as a batch (>= 1)"
    )
    parser.add_argument(
        "--stream", action="store_true", help="print tokens as they are generated (one sample only)"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="sample even when the memory estimate for --num-samples x (prompt + "
        "--max-new-tokens) exceeds the memory available",
    )
    parser.add_argument(
        "--decode",
        default="auto",
        metavar="PATH",
        help="how cached steps run (folio/sample/paths.py): static (one loop over a static KV "
        "cache; auto's choice in float32), module (the model's forward with a KV cache), "
        "compiled (static, torch.compile'd: pays seconds of compile first), aot (static, "
        "compiled ahead of time into a library cached in $FOLIO_CACHE: the fastest; 20-30 s "
        "the first time); static, compiled and aot also come with -bf16, -int8 or -w8a8 "
        "weights, e.g. aot-w8a8 (the same as --weights)",
    )
    parser.add_argument(
        "--weights",
        default="float32",
        choices=["float32", "bfloat16", "int8", "w8a8"],
        help="weights of the static and compiled paths: bfloat16 and int8 are faster where "
        "the CPU supports them, and approximate; w8a8 (int8 weights and activations, built "
        "at first use) is the fastest where the CPU has AVX512-VNNI",
    )
    precision_arguments(parser)


def _positive(flag: str, value: int | None) -> None:
    """Refuse a count below 1 (argparse has already made it an int)."""
    if value is not None and value < 1:
        raise FolioError(f"{flag} must be a positive integer, got {value}")


def run(args: argparse.Namespace) -> None:
    """Print the prompt and its continuation(s), streamed if asked."""
    import warnings

    from folio.inputs import check_seed
    from folio.runtime import autocast_dtype, pick_device, resolve_dtype
    from folio.sample import SamplingConfig, load_sampler
    from folio.sample.paths import parse_decode_path

    check_seed(args.seed)
    path = parse_decode_path(args.decode)
    weights = args.weights
    if path.weights != "float32":
        if weights not in ("float32", path.weights):
            raise FolioError(
                f"--decode {args.decode} has {path.weights} weights and --weights says "
                f"{weights}: give one of them"
            )
        weights = path.weights

    _positive("--max-new-tokens", args.max_new_tokens)
    _positive("--num-samples", args.num_samples)
    if args.stream and args.num_samples > 1:
        raise FolioError(
            "--stream prints one sample as it is generated: drop --stream, or use --num-samples 1"
        )
    device = pick_device(args.device)
    sampler = load_sampler(
        args.checkpoint, args.which, device, autocast_dtype(resolve_dtype(args.dtype, device)),
        check_memory=not args.force, decode=path.how, weights=weights,
    )  # fmt: skip
    cfg = SamplingConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop=args.stop or [],
        num_samples=args.num_samples,
    )

    def show(message, *_args, **_kwargs) -> None:  # as it happens: before the output
        print(f"warning: {message}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        if args.stream:
            pieces = sampler.stream(args.prompt, cfg)  # checks the prompt, warns, then prints
            sys.stdout.write(args.prompt)
            for piece in pieces:
                sys.stdout.write(piece[0])
                sys.stdout.flush()
            sys.stdout.write("\n")
        else:
            for i, text in enumerate(sampler.generate(args.prompt, cfg)):
                if cfg.num_samples > 1:
                    print(f"--- sample {i + 1} ---")
                print(args.prompt + text)
