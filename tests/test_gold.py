"""The gold evaluator (folio/eval/gold.py, `folio eval gold`): the same draws for every call,
the rule's score of exactly those replies, and a KL to the reference that is 0 for the model
itself and the k3 sum by hand otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from factories import cli

from folio.checkpoint import clean_state_dict, save_checkpoint
from folio.data.prefs import gold_score
from folio.eval.gold import gold_report
from folio.models import GPT, GPTConfig, build_model
from folio.models.reward import RewardModelConfig
from folio.rl.rollout import reply_logprobs, sample_rollout
from folio.tokenizers import CharTokenizer
from folio.tokenizers.chat import (
    cut_at_turn_token,
    end_of_turn_id,
    render_prompt,
    with_chat_tokens,
)

PROMPTS = ["Write a line for HAMLET about love", "Write a line for JULIET about night"]


def chat_tokenizer() -> CharTokenizer:
    return with_chat_tokens(
        CharTokenizer.from_text("".join(PROMPTS) + "abcdefghijklmnopqrstuvwxyz")
    )


def model(tok: CharTokenizer, seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16))


def test_the_report_scores_the_same_replies_and_kl_is_zero_against_itself() -> None:
    tok = chat_tokenizer()
    m = model(tok, 0)
    a = gold_report(m, tok, PROMPTS, reference=m, samples=3, max_new_tokens=8, seed=5)
    b = gold_report(m, tok, PROMPTS, reference=m, samples=3, max_new_tokens=8, seed=5)
    assert a == b and a["replies"] == 6 and a["kl"] == 0.0
    # the same replies, drawn by hand: the rule's mean score over them
    ids = [render_prompt(tok, [{"role": "user", "content": p}]) for p in PROMPTS]
    ro = sample_rollout(m, ids, 3, end_of_turn_id(tok), max_new_tokens=8, temperature=1.0,
                        top_k=None, generator=torch.Generator().manual_seed(5))  # fmt: skip
    scores, ends = [], []
    for i, (r, e) in enumerate(zip(ro.replies, ro.ended.tolist(), strict=True)):
        ids, cut = cut_at_turn_token(tok, r)  # a reply writing <|user|> has not ended
        scores.append(gold_score(PROMPTS[i // 3], tok.decode(ids), e and not cut))
        ends.append(e and not cut)
    assert a["gold_score"] == sum(scores) / 6
    assert a["end_rate"] == sum(ends) / 6 == a["gold_end"]
    parts = (a["gold_word"], a["gold_length"], a["gold_end"])
    assert a["gold_score"] == pytest.approx(sum(parts) / 3)


def test_kl_to_another_reference_is_the_k3_sum_over_each_reply() -> None:
    tok = chat_tokenizer()
    policy, ref = model(tok, 0), model(tok, 1)
    got = gold_report(policy, tok, PROMPTS[:1], reference=ref, samples=2, max_new_tokens=6, seed=3)
    ids = [render_prompt(tok, [{"role": "user", "content": PROMPTS[0]}])]
    ro = sample_rollout(policy, ids, 2, end_of_turn_id(tok), max_new_tokens=6, temperature=1.0,
                        top_k=None, generator=torch.Generator().manual_seed(3))  # fmt: skip
    ref_lp = reply_logprobs(ref, ro.tokens, ro.mask, 1.0, None)
    by_hand = []
    for b in range(2):  # k3 = (rho - 1) - log rho, rho = pi_ref / pi, summed over reply tokens
        total = 0.0
        for t in range(ro.mask.shape[1]):
            if ro.mask[b, t]:
                log_rho = float(ref_lp[b, t] - ro.logprobs[b, t])
                total += (torch.tensor(log_rho).exp().item() - 1.0) - log_rho
        by_hand.append(total)
    assert got["kl"] > 0
    assert abs(got["kl"] - sum(by_hand) / 2) < 1e-5


def test_folio_eval_gold_and_its_bad_input(tmp_path: Path) -> None:
    from folio.data.material import load_material

    m = load_material()
    tok = with_chat_tokens(CharTokenizer.from_text(
        "".join(m.speakers) + "".join(m.words) + "Write a line for about "))  # fmt: skip
    torch.manual_seed(0)
    cfg = GPTConfig(tok.vocab_size, block_size=80, n_layer=1, n_head=2, n_embd=16)
    save_checkpoint(tmp_path / "sft", clean_state_dict(build_model(cfg)), cfg, tok, {"step": 1})
    code, out, err = cli("eval", "gold", "--checkpoint", tmp_path / "sft", "--reference",
                         f"run:{tmp_path / 'sft'}", "--n", 3, "--samples", 2,
                         "--max-new-tokens", 8, "--json")  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    assert report["prompts"] == 3 and report["replies"] == 6 and report["kl"] == 0.0
    assert 0.0 <= report["gold_score"] <= 1.0
    rm_cfg = RewardModelConfig(**cfg.to_dict())
    save_checkpoint(tmp_path / "rm", clean_state_dict(build_model(rm_cfg)), rm_cfg, tok,
                    {"step": 1})  # fmt: skip
    code, _, err = cli("eval", "gold", "--checkpoint", tmp_path / "rm", "--n", 2)
    assert code == 2 and err.count("\n") == 1 and "reward model" in err
    code, _, err = cli("eval", "gold", "--checkpoint", tmp_path / "nothing", "--n", 2)
    assert code == 2 and err.count("\n") == 1
