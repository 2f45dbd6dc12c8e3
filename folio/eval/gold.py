"""A chat model's held-out gold score, and how far it moved from a reference (`folio eval gold`).

The preference stages (folio/data/prefs.py) rank replies to prompts of the
form "Write a line for {SPEAKER} about {word}" by a hidden gold rule. This
module measures any chat model against that rule on held-out prompts, the
same prompts and sampling seed for every model, so an SFT model, its PPO run
and its DPO run are compared on equal terms:

- gold_score: the rule's mean score of `samples` replies per prompt, drawn at
  temperature 1 (the policy's own distribution);
- gold_word, gold_length, gold_end: the share of replies passing each of the
  rule's three tests (gold_score is their mean);
- end_rate and reply_chars of those replies;
- kl: with a reference model, the KL of the policy from it, estimated on the
  same replies: k3 per token, (rho - 1) - log rho with rho = pi_ref / pi
  (Schulman's unbiased, never negative estimator), summed over a reply and
  averaged over replies, in nats. The RL runs log the same quantity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from folio.data.prefs import GOLD_TESTS, gold_tests
from folio.inputs import check_seed
from folio.rl.estimators import k3_kl
from folio.rl.rollout import reply_logprobs, sample_rollout
from folio.tokenizers.chat import cut_at_turn_token, end_of_turn_id, render_prompt


@torch.no_grad()
def gold_report(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    reference: nn.Module | None = None,
    samples: int = 4,
    max_new_tokens: int = 64,
    seed: int = 0,
    batch_prompts: int = 32,
) -> dict[str, float]:
    """Gold score, end rate, reply length and (with `reference`) KL of `samples` replies per prompt.

    Prompts are processed `batch_prompts` at a time; the draws come from one
    generator seeded with `seed`, so two calls with the same arguments agree.
    """
    end_id = end_of_turn_id(tokenizer)
    generator = torch.Generator().manual_seed(check_seed(seed))
    gold: list[tuple[bool, bool, bool]] = []
    ended: list[bool] = []
    chars: list[int] = []
    kls: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    if reference is not None:
        reference.eval()
    try:
        for start in range(0, len(prompts), batch_prompts):
            texts = list(prompts[start : start + batch_prompts])
            ids = [render_prompt(tokenizer, [{"role": "user", "content": p}]) for p in texts]
            ro = sample_rollout(
                model, ids, samples, end_id, max_new_tokens=max_new_tokens, temperature=1.0,
                top_k=None, generator=generator,
            )  # fmt: skip
            for i, (reply, done) in enumerate(zip(ro.replies, ro.ended.tolist(), strict=True)):
                ids, cut = cut_at_turn_token(tokenizer, reply)  # another turn token: not ended
                text, done = tokenizer.decode(ids), bool(done) and not cut
                gold.append(gold_tests(texts[i // samples], text, done))
                ended.append(done)
                chars.append(len(text.strip()))
            if reference is not None:
                device = next(reference.parameters()).device
                tokens, mask = ro.tokens.to(device), ro.mask.to(device)
                ref_logprobs = reply_logprobs(reference, tokens, mask, 1.0, None)
                per_token = k3_kl(ro.logprobs.to(device), ref_logprobs) * mask
                kls.append(per_token.sum(dim=1).float().cpu())
    finally:
        model.train(was_training)
    n = len(gold)
    out = {
        "prompts": len(prompts),
        "replies": n,
        "gold_score": sum(sum(t) for t in gold) / (len(GOLD_TESTS) * n),
        **{f"gold_{name}": sum(t[j] for t in gold) / n for j, name in enumerate(GOLD_TESTS)},
        "end_rate": sum(ended) / n,
        "reply_chars": sum(chars) / n,
    }
    if kls:
        out["kl"] = float(torch.cat(kls).mean())
    return out
