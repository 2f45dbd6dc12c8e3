"""`folio eval gold`: a chat model's score by the hidden gold rule on held-out prompts, and its KL
to a reference model (folio/eval/gold.py)."""

from __future__ import annotations

import argparse
import json

from folio.commands.common import positive_int
from folio.inputs import check_seed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `folio eval gold`."""
    parser.add_argument(
        "--checkpoint", required=True, metavar="run:DIR",
        help="the chat model (an SFT, PPO or DPO run, or a checkpoint directory)",
    )  # fmt: skip
    parser.add_argument(
        "--reference", default=None, metavar="run:DIR",
        help="measure the KL from this model too (the SFT model the policy started from)",
    )  # fmt: skip
    parser.add_argument("--n", type=positive_int, default=200, help="held-out prompts")
    parser.add_argument("--samples", type=positive_int, default=4, help="replies per prompt")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the prompts and the replies, in [0, 2**63)"
    )
    parser.add_argument(
        "--max-new-tokens", type=positive_int, default=64, help="reply length limit (tokens)"
    )
    parser.add_argument(
        "--corpus", default="shakespeare", help="where speakers and words come from"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _spec(value: str) -> str:
    return value if value.startswith("run:") else f"run:{value}"


def run(args: argparse.Namespace) -> None:
    """Sample replies to held-out gold prompts and score them."""
    from folio.data.material import load_material
    from folio.data.prefs import line_prompts
    from folio.eval.gold import gold_report
    from folio.train.policy import load_policy, same_tokenizer

    check_seed(args.seed)
    policy = load_policy(_spec(args.checkpoint), "--checkpoint")
    reference = None
    if args.reference is not None:
        reference = load_policy(_spec(args.reference), "--reference")
        same_tokenizer(policy, reference)
    prompts = line_prompts("test", args.n, args.seed, load_material(args.corpus))
    out = gold_report(
        policy.model, policy.tokenizer, prompts,
        reference=None if reference is None else reference.model,
        samples=args.samples, max_new_tokens=args.max_new_tokens, seed=args.seed,
    )  # fmt: skip
    out = {"checkpoint": policy.source["checkpoint"], **out}
    if args.json:
        print(json.dumps(out))
    else:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in out.items() if isinstance(v, float))
        print(f"{out['checkpoint']}: {shown} ({out['replies']} replies)")
