"""`folio eval tasks`: greedy pass@1, pass@k, end rate and reply length of a chat checkpoint."""

from __future__ import annotations

import argparse
import json

from folio.commands.common import DefaultsOnceFormatter
from folio.errors import FolioError
from folio.inputs import check_seed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `folio eval tasks`."""
    parser.formatter_class = DefaultsOnceFormatter
    parser.add_argument("--checkpoint", required=True, help="run directory or checkpoint directory")
    parser.add_argument(
        "--which", choices=["latest", "best"], default="latest", help="which checkpoint of a run"
    )
    parser.add_argument(
        "--data",
        required=True,
        help="test JSONL (or a directory of them): {'task', 'messages'} lines whose final "
        "assistant message is the reference answer, as `folio tasks make` writes",
    )
    parser.add_argument(
        "--k", type=int, default=8, help="pass@k at temperature 1 (0: greedy pass@1 only)"
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=None,
        help="replies drawn per prompt for pass@k (default: k; more: the unbiased estimator)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=32, help="reply length limit")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N prompts only")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the temperature-1 samples, in [0, 2**63)"
    )
    parser.add_argument("--batch-size", type=int, default=256, help="rows decoded together")
    parser.add_argument(
        "--extend-vocab",
        action="store_true",
        help="evaluate a checkpoint without a chat template (a base model) by appending the "
        "chat tokens and missing characters, their rows at the mean of the old ones",
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="precision",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _table(report: dict) -> str:
    k = report["k"]
    head = f"{'task':<12}{'n':>6}{'pass@1':>9}" + (f"{f'pass@{k}':>9}" if k else "")
    head += f"{'ended':>8}{'tokens':>8}"
    lines = [head]
    for name, row in [*report["tasks"].items(), ("overall", report["overall"])]:
        line = f"{name:<12}{row['n']:>6}{row['pass_at_1']:>9.3f}"
        line += f"{row['pass_at_k']:>9.3f}" if k else ""
        line += f"{row['end_rate']:>8.3f}{row['mean_reply_tokens']:>8.1f}"
        lines.append(line)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    """Evaluate a checkpoint on a test set and print the table (or JSON)."""
    check_seed(args.seed)
    import torch  # only once the flags are known to be good

    from folio.checkpoint import load_checkpoint, require_language_model
    from folio.eval.tasks import evaluate_tasks, read_test_set, task_items
    from folio.models.resize import resize_vocab
    from folio.runtime import pick_device, resolve_dtype
    from folio.tokenizers.chat import has_chat_template, with_chat_tokens
    from folio.tokenizers.extend import extend_for_text

    device = pick_device(args.device)
    ck = load_checkpoint(args.checkpoint, args.which, device)
    require_language_model(ck, "folio eval tasks wants a chat language model (a `folio sft` run)")
    conversations = read_test_set(args.data, args.limit)
    model, tokenizer = ck.model, ck.tokenizer
    if args.extend_vocab:
        texts = [m["content"] for c in conversations for m in c.messages]
        tokenizer = with_chat_tokens(extend_for_text(tokenizer, texts))
        if tokenizer.vocab_size != ck.tokenizer.vocab_size:
            model = resize_vocab(
                model, tokenizer.vocab_size, generator=torch.Generator().manual_seed(args.seed)
            )
    elif not has_chat_template(tokenizer):
        raise FolioError(
            f"{ck.path}: the checkpoint's tokenizer has no chat template (no <|user|>, "
            f"<|assistant|>, <|end|> tokens); fine-tune it with `folio sft`, or pass "
            f"--extend-vocab to measure it as a base model"
        )
    items = task_items(conversations, tokenizer)
    report = evaluate_tasks(
        model,
        tokenizer,
        items,
        k=args.k,
        samples=args.samples,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        batch_size=args.batch_size,
        dtype=resolve_dtype(args.dtype, device),
    )
    report = {"checkpoint": str(ck.path), "step": ck.state.get("step"), "data": args.data, **report}
    if args.json:
        print(json.dumps(report))
    else:
        print(_table(report))
