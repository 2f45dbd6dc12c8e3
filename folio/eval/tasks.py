"""Task evaluation: does the model answer checkable prompts right, and does it stop?

Notation: B rows decoded together, T0 prompt length, N new tokens.

For each test conversation (JSONL as `folio tasks make` writes, or a user's
own in the same form: a "task" name, and the reference answer as the final
assistant message), the prompt is every message but that final one, rendered
with `render_prompt` so the model's next tokens are its reply. A reply ends
at END or after `max_new_tokens`; it is scored by the task's checker
(`folio.data.tasks.check_reply`: exact match after stripping whitespace).

Reported per task and over all prompts (each prompt weighing the same):
- `pass_at_1`: the greedy reply (temperature 0) is right.
- `pass_at_k`: at temperature 1, the chance that at least one of k replies is
  right. `samples` replies are drawn per prompt (default k); with c right,
  the estimate is the unbiased one of Chen et al. (2021, "Evaluating Large
  Language Models Trained on Code"), 1 - C(n-c, k) / C(n, k), which with
  n = k is simply whether any of the k was right.
- `end_rate`: the fraction of greedy replies that end with END within the limit
  (and `sampled_end_rate` for the temperature-1 replies).
- `mean_reply_tokens`: the greedy replies' mean length in tokens, END not
  counted (and `sampled_mean_reply_tokens`).

Decoding is batched across prompts: prompts of the same length in tokens are
decoded together, so every row has the same positions and no padding or
attention mask is needed; the result is the one decoding each prompt alone
would give (a test holds it for greedy decoding). Finished rows keep being
fed END until the whole batch has finished. A prompt whose reply could run
past the model's context (prompt + max_new_tokens > block_size) is decoded
alone by `folio.sample.Sampler`, which slides the window.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from folio.data.conversations import Conversation, read_conversations
from folio.data.tasks import check_reply
from folio.errors import FolioError
from folio.inputs import SEED_LIMIT, check_seed
from folio.models.gpt import GPT
from folio.sample.sampler import Sampler, SamplingConfig, choose_tokens, sampling_logprobs
from folio.tokenizers.chat import ChatTokenizer, end_of_turn_id, has_chat_template, render_prompt

UNTAGGED = "untagged"
"""The task name given to a test line without a "task" field."""


@dataclass
class TaskItem:
    """One test prompt, rendered, with its reference answer."""

    task: str
    prompt: list[int]
    """Token ids of the conversation so far, ending with the assistant token."""
    reference: str
    where: str
    """"FILE:LINE" of the conversation."""


@dataclass
class Reply:
    """One generated reply."""

    ids: list[int]
    """The reply's tokens, END excluded."""
    ended: bool
    """Whether the reply ended with END within the token limit."""
    logprobs: list[float] | None = None
    """When asked for: log-probability of each reply token, END included when the reply
    ended, under the distribution it was drawn from (`sampling_logprobs`)."""


def task_items(conversations: Sequence[Conversation], tokenizer: ChatTokenizer) -> list[TaskItem]:
    """Test prompts from conversations: every message but the final assistant one, rendered.

    Each conversation must end with the assistant's reference answer; one that
    does not, or holds text outside the vocabulary, is a FolioError naming it.
    """
    items = []
    for c in conversations:
        if c.messages[-1]["role"] != "assistant":
            raise FolioError(
                f"{c.where}: a test conversation must end with the assistant's reference answer"
            )
        try:
            prompt = render_prompt(tokenizer, c.messages[:-1])
        except FolioError as e:
            raise FolioError(f"{c.where}: {e}") from None
        items.append(TaskItem(c.task or UNTAGGED, prompt, c.messages[-1]["content"], c.where))
    return items


def read_test_set(path: str | Path, limit: int | None = None) -> list[Conversation]:
    """The conversations of a test JSONL file (or directory); `limit` keeps the first ones."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise FolioError(f"--limit must be a positive integer, got {limit!r}")
    return read_conversations(path)[:limit]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are right: 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i), which avoids huge binomials.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def _last_logits(model: nn.Module, idx: torch.Tensor, cache: Any) -> torch.Tensor:
    """(B, V) float32 logits after the last position of idx."""
    logits, _ = model(idx, cache=cache, last_only=True)
    return logits[:, -1, :].float()


def _decode_batch(
    model: nn.Module,
    prompts: torch.Tensor,
    end_id: int,
    cfg: SamplingConfig,
    generator: torch.Generator,
    with_logprobs: bool = False,
) -> list[Reply]:
    """Decode rows of equal-length prompts (B, T0) together, each until END or the limit.

    with_logprobs: also record each chosen token's log-probability under the
    distribution it was drawn from (temperature and top-k applied).
    """
    B, T0 = prompts.shape
    N = cfg.max_new_tokens
    cache = model.new_kv_cache(B, max_len=T0 + N) if model.supports_kv_cache else None
    tokens = torch.empty(B, T0 + N, dtype=torch.long, device=prompts.device)
    tokens[:, :T0] = prompts
    done = torch.zeros(B, dtype=torch.bool, device=prompts.device)
    length = torch.full((B,), N, dtype=torch.long, device=prompts.device)  # tokens before END
    logprobs = torch.zeros(B, N, device=prompts.device) if with_logprobs else None  # (B, N)
    n = T0
    logits = _last_logits(model, tokens[:, :n], cache)  # prefill
    for step in range(N):
        next_ids = choose_tokens(logits, cfg, generator)  # (B,)
        if logprobs is not None:
            dist = sampling_logprobs(logits, cfg.temperature, cfg.top_k, cfg.top_p)  # (B, V)
            logprobs[:, step] = dist.gather(-1, next_ids[:, None]).squeeze(-1)
        next_ids = next_ids.masked_fill(done, end_id)  # finished rows idle on END
        finishing = (next_ids == end_id) & ~done
        length[finishing] = step
        done |= finishing
        tokens[:, n] = next_ids
        n += 1
        if bool(done.all()) or step == N - 1:
            break
        logits = _last_logits(
            model, tokens[:, n - 1 : n] if cache is not None else tokens[:, :n], cache
        )
    rows = tokens[:, T0:].tolist()
    lps = logprobs.tolist() if logprobs is not None else [None] * B
    return [
        Reply(row[:ln], ended, lp[: ln + ended] if lp is not None else None)
        for row, ln, ended, lp in zip(rows, length.tolist(), done.tolist(), lps, strict=True)
    ]


def _decode_alone(
    model: nn.Module, prompt: list[int], end_id: int, cfg: SamplingConfig
) -> list[Reply]:
    """Decode one prompt's samples with the Sampler, which slides past block_size."""
    replies: list[list[int]] = [[] for _ in range(cfg.num_samples)]
    ended = [False] * cfg.num_samples
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the prompt fits: no truncation warning applies
        steps = Sampler(model).generate_ids(prompt, cfg)
        for ids in steps:
            for r, i in enumerate(ids.tolist()):
                if not ended[r]:
                    if i == end_id:
                        ended[r] = True
                    else:
                        replies[r].append(i)
            if all(ended):
                break
    return [Reply(ids, e) for ids, e in zip(replies, ended, strict=True)]


def _chunks(seq: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for a in range(0, len(seq), size):
        yield seq[a : a + size]


@torch.no_grad()
def generate_replies(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    end_id: int,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    num_samples: int = 1,
    seed: int = 0,
    batch_size: int = 256,
    dtype: torch.dtype | None = None,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    logprobs: bool = False,
) -> list[list[Reply]]:
    """num_samples replies to each prompt, decoded in batches of up to batch_size rows.

    Rows are grouped by prompt length (see the module docstring); the random
    draws come from `generator` (on the model's device) if given, else from
    one seeded with `seed`, so a call is reproducible. `dtype` (bfloat16,
    float16) runs the forward under autocast. The model is put in eval mode
    for the call and restored after. `logprobs` records each reply token's
    log-probability under the sampling distribution (RL rollouts); it needs
    temperature > 0 and prompts that fit the context with their replies.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise FolioError(f"--batch-size must be a positive integer, got {batch_size!r}")
    if logprobs and temperature <= 0:
        raise ValueError("log-probabilities of greedy replies are not defined (temperature 0)")
    check_seed(seed)
    cfg = SamplingConfig(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        num_samples=num_samples,
        seed=seed,
    )
    device = next(model.parameters()).device
    block = 1 if not isinstance(model, GPT) else model.config.block_size
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(seed)
    out: list[list[Reply]] = [[] for _ in prompts]
    by_length: dict[int, list[int]] = defaultdict(list)
    alone = []
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompt {i} is empty")
        if isinstance(model, GPT) and len(p) + max_new_tokens > block:
            alone.append(i)
        else:
            by_length[len(p)].append(i)
    was_training = model.training
    model.eval()
    amp = (
        torch.autocast(device.type, dtype=dtype)
        if dtype not in (None, torch.float32)
        else contextlib.nullcontext()
    )
    try:
        with amp:
            if max_new_tokens == 0:
                return [[Reply([], False) for _ in range(num_samples)] for _ in prompts]
            for length in sorted(by_length):
                rows = [i for i in by_length[length] for _ in range(num_samples)]
                for chunk in _chunks(rows, batch_size):
                    batch = torch.tensor([list(prompts[i]) for i in chunk], device=device)
                    replies = _decode_batch(model, batch, end_id, cfg, generator, logprobs)
                    for i, reply in zip(chunk, replies, strict=True):
                        out[i].append(reply)
            if alone and logprobs:
                raise ValueError(f"prompt {alone[0]} and its reply do not fit the context")
            for n, i in enumerate(alone):
                # wrapped: the seeds of a run near the top of the range stay in it
                one = SamplingConfig(**{**cfg.__dict__, "seed": (seed + 1 + n) % SEED_LIMIT})
                out[i] = _decode_alone(model, list(prompts[i]), end_id, one)
    finally:
        model.train(was_training)
    return out


def _summary(
    greedy: list[tuple[bool, Reply]], sampled: list[list[tuple[bool, Reply]]], k: int
) -> dict[str, Any]:
    n = len(greedy)
    row: dict[str, Any] = {
        "n": n,
        "pass_at_1": sum(ok for ok, _ in greedy) / n,
        "end_rate": sum(r.ended for _, r in greedy) / n,
        "mean_reply_tokens": sum(len(r.ids) for _, r in greedy) / n,
    }
    if k > 0:
        flat = [r for group in sampled for _, r in group]
        row["pass_at_k"] = (
            sum(pass_at_k(len(group), sum(ok for ok, _ in group), k) for group in sampled) / n
        )
        row["sampled_end_rate"] = sum(r.ended for r in flat) / len(flat)
        row["sampled_mean_reply_tokens"] = sum(len(r.ids) for r in flat) / len(flat)
    return row


def evaluate_tasks(
    model: nn.Module,
    tokenizer: Any,
    items: Sequence[TaskItem],
    k: int = 8,
    samples: int | None = None,
    max_new_tokens: int = 32,
    seed: int = 0,
    batch_size: int = 256,
    dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Greedy pass@1, pass@k at temperature 1, end rate and reply length, per task and overall.

    k = 0 skips sampling (greedy only). samples: replies drawn per prompt for
    pass@k (default k; more gives the unbiased estimate lower variance).
    Returns {"k", "samples", "max_new_tokens", "tasks": {name: metrics},
    "overall": metrics, "seconds"}; see the module docstring for the metrics.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise FolioError(f"--k must be a non-negative integer, got {k!r}")
    samples = k if samples is None else samples
    if k > 0 and (isinstance(samples, bool) or not isinstance(samples, int) or samples < k):
        raise FolioError(f"--samples must be an integer >= k ({k}), got {samples!r}")
    if not items:
        raise FolioError("no test prompts to evaluate")
    if not has_chat_template(tokenizer):
        raise FolioError("the tokenizer has no chat template")
    block = model.config.block_size if isinstance(model, GPT) else None
    for item in items:
        if block is not None and len(item.prompt) > block:
            raise FolioError(
                f"{item.where}: the prompt is {len(item.prompt)} tokens, longer than the "
                f"model's context of {block}"
            )
    end_id = end_of_turn_id(tokenizer)
    prompts = [item.prompt for item in items]
    start = time.perf_counter()
    args = dict(max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size, dtype=dtype)
    greedy = [r[0] for r in generate_replies(model, prompts, end_id, temperature=0.0, **args)]
    sampled: list[list[Reply]] = [[] for _ in items]
    if k > 0:
        sampled = generate_replies(
            model, prompts, end_id, temperature=1.0, num_samples=samples, **args
        )

    def scored(item: TaskItem, reply: Reply) -> tuple[bool, Reply]:
        return check_reply(item.task, tokenizer.decode(reply.ids), item.reference), reply

    greedy_scored = [scored(it, r) for it, r in zip(items, greedy, strict=True)]
    sampled_scored = [[scored(it, r) for r in rs] for it, rs in zip(items, sampled, strict=True)]
    tasks: dict[str, Any] = {}
    for name in dict.fromkeys(item.task for item in items):
        idx = [i for i, item in enumerate(items) if item.task == name]
        tasks[name] = _summary([greedy_scored[i] for i in idx], [sampled_scored[i] for i in idx], k)
    return {
        "k": k,
        "samples": samples if k > 0 else 0,
        "max_new_tokens": max_new_tokens,
        "tasks": tasks,
        "overall": _summary(greedy_scored, sampled_scored, k),
        "seconds": round(time.perf_counter() - start, 2),
    }
