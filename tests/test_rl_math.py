"""Each RL and preference estimator against a case computed by hand (folio/rl/estimators.py)."""

from __future__ import annotations

import math

import pytest
import torch

from folio.config.rl import LOSS_MEAN_NAMES
from folio.rl.estimators import (
    LOSS_MEANS,
    bradley_terry_loss,
    clip_fraction,
    dpo_loss,
    gae,
    group_advantages,
    k3_kl,
    kl_penalized_rewards,
    masked_mean,
    policy_loss,
    reply_mean,
    sequence_logprobs,
    token_logprobs,
    value_loss,
    whiten,
)
from folio.sample.sampler import SamplingConfig, choose_tokens, sampling_logprobs

LN = math.log


def test_token_logprobs_at_a_temperature_and_top_k() -> None:
    # probabilities 1/6, 2/6, 3/6
    logits = torch.tensor([[[0.0, LN(2), LN(3)]]])  # (1, 1, 3)
    tok = torch.tensor([[1]])
    assert token_logprobs(logits, tok).item() == pytest.approx(LN(2 / 6))
    # temperature 2: logits halved, weights 1, sqrt 2, sqrt 3
    z = 1 + math.sqrt(2) + math.sqrt(3)
    assert token_logprobs(logits, tok, temperature=2.0).item() == pytest.approx(
        LN(math.sqrt(2) / z)
    )
    # top-k 2 drops token 0: 2/5, 3/5
    assert token_logprobs(logits, tok, top_k=2).item() == pytest.approx(LN(2 / 5))
    assert token_logprobs(logits, torch.tensor([[0]]), top_k=2).item() == -math.inf


def test_the_loss_scores_samples_with_the_distribution_they_were_drawn_from() -> None:
    # choose_tokens' draws at temperature 0.7, top-k 3 follow exp(sampling_logprobs)
    torch.manual_seed(0)
    logits = torch.randn(1, 6)
    cfg = SamplingConfig(temperature=0.7, top_k=3)
    g = torch.Generator().manual_seed(0)
    draws = choose_tokens(logits.expand(40_000, 6).contiguous(), cfg, g)
    freq = torch.bincount(draws, minlength=6).float() / len(draws)
    probs = sampling_logprobs(logits, 0.7, 3).exp()[0]
    assert torch.allclose(freq, probs, atol=0.01)
    assert (probs > 0).sum() == 3
    # and a different temperature is a different distribution (the pitfall)
    assert not torch.allclose(sampling_logprobs(logits, 1.0, 3).exp()[0], probs, atol=0.05)


def test_masked_mean_and_sequence_logprobs() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 1]])
    assert masked_mean(x, mask).item() == pytest.approx((1 + 2 + 6) / 3)
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0
    assert sequence_logprobs(x, mask).tolist() == [3.0, 6.0]


def test_reply_mean_weighs_every_reply_alike_by_hand() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 1], [0, 0, 0]])
    # row means 1.5 and 6; the empty third row does not count
    assert reply_mean(x, mask).item() == pytest.approx((1.5 + 6.0) / 2)
    assert masked_mean(x, mask).item() == pytest.approx((1 + 2 + 6) / 3)  # tokens alike
    assert reply_mean(x, torch.zeros_like(mask)).item() == 0.0
    # every name the config accepts has its function
    assert tuple(LOSS_MEANS) == LOSS_MEAN_NAMES


def test_policy_loss_averaged_per_reply_by_hand() -> None:
    # Reply 0 has 3 tokens, reply 1 one token; ratio 1 everywhere, so each token's term is A.
    logp = torch.zeros(2, 3, requires_grad=True)
    adv = torch.tensor([[1.0], [-3.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    by_token = policy_loss(logp, torch.zeros(2, 3), adv, mask, 0.2)
    assert by_token.item() == pytest.approx(-(1 + 1 + 1 - 3) / 4)
    by_reply = policy_loss(logp, torch.zeros(2, 3), adv, mask, 0.2, mean="reply")
    assert by_reply.item() == pytest.approx(-(1.0 + -3.0) / 2)
    by_reply.backward()
    # d/d logp_t of -A * ratio_t / (n_tokens of the reply * n_replies), at ratio 1
    assert logp.grad.flatten().tolist() == pytest.approx([-1 / 6, -1 / 6, -1 / 6, 3 / 2, 0.0, 0.0])


def test_group_advantages_by_hand_and_they_sum_to_zero_in_each_group() -> None:
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    # group 1: mean 0.5, population std 0.5; group 2 has no spread
    assert group_advantages(r, 4).tolist() == pytest.approx([1, -1, -1, 1, 0, 0, 0, 0], abs=1e-5)
    assert group_advantages(r, 4, scale_by_std=False).tolist() == pytest.approx(
        [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]
    )
    g = torch.Generator().manual_seed(0)
    for scale in (True, False):
        a = group_advantages(torch.rand(6 * 5, generator=g), 5, scale_by_std=scale)
        assert a.view(6, 5).sum(dim=1).abs().max() < 1e-5
    with pytest.raises(ValueError):
        group_advantages(torch.ones(7), 4)


def test_k3_by_hand_never_negative_and_unbiased() -> None:
    # pi = 0.5, pi_ref = 0.25: rho = 0.5, k3 = 0.5 - 1 - ln 0.5
    k = k3_kl(torch.tensor([LN(0.5)]), torch.tensor([LN(0.25)]))
    assert k.item() == pytest.approx(-0.5 + LN(2))
    assert k3_kl(torch.tensor([-1.3]), torch.tensor([-1.3])).item() == 0.0
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(1000, generator=g) * 3, torch.randn(1000, generator=g) * 3
    assert (k3_kl(a, b) >= 0).all()
    # sum_x p(x) k3(x) = KL(p || q) exactly
    p = torch.tensor([0.1, 0.2, 0.7])
    q = torch.tensor([0.3, 0.3, 0.4])
    expected = (p * (p / q).log()).sum()
    assert (p * k3_kl(p.log(), q.log())).sum().item() == pytest.approx(expected.item())
    # a token the reference rules out gives a finite penalty
    assert torch.isfinite(k3_kl(torch.tensor([-1.0]), torch.tensor([-math.inf]))).all()


def test_clipped_policy_loss_by_hand() -> None:
    old = torch.zeros(1, 4)
    logp = torch.tensor([[LN(1.5), LN(0.5), 0.0, LN(1.5)]], requires_grad=True)
    adv = torch.tensor([[1.0, 1.0, -2.0, -1.0]])
    mask = torch.ones(1, 4)
    # min(r A, clip(r) A) per token: 1.2, 0.5, -2, -1.5 (eps 0.2)
    loss = policy_loss(logp, old, adv, mask, 0.2)
    assert loss.item() == pytest.approx(-(1.2 + 0.5 - 2 - 1.5) / 4)
    loss.backward()
    # a clipped token gets no gradient; the others -A * ratio / n
    assert logp.grad.tolist()[0] == pytest.approx([0.0, -0.5 / 4, 2 / 4, 1.5 / 4])
    masked = policy_loss(logp, old, adv, torch.tensor([[1, 1, 1, 0]]), 0.2)
    assert masked.item() == pytest.approx(-(1.2 + 0.5 - 2) / 3)
    assert clip_fraction(logp, old, mask, 0.2).item() == pytest.approx(3 / 4)
    # one advantage per reply broadcasts over its tokens
    per_reply = policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([[1.0], [-3.0]]),
                            torch.ones(2, 3), 0.2)  # fmt: skip
    assert per_reply.item() == pytest.approx(1.0)


def test_whiten_by_hand() -> None:
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    expected = [(v - 2.5) / math.sqrt(1.25) for v in (1, 2, 3, 4)]
    assert whiten(x).tolist() == pytest.approx(expected, abs=1e-6)
    assert whiten(x, shift_mean=False).tolist() == pytest.approx(
        [e + 2.5 for e in expected], abs=1e-6
    )
    masked = whiten(torch.tensor([1.0, 3.0, 100.0]), torch.tensor([1, 1, 0]))
    assert masked.tolist() == pytest.approx([-1.0, 1.0, 0.0], abs=1e-6)


def test_gae_by_hand_with_the_episode_ending_at_the_span() -> None:
    rewards = torch.tensor([[0.0, 0.0, 1.0], [9.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [9.0, 0.5, 0.7]])
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.9)
    # row 0: deltas 0.1, 0.1, 0.3; A2 = 0.3, A1 = 0.1 + 0.9 * 0.3, A0 = 0.1 + 0.9 * A1
    a1 = 0.1 + 0.9 * 0.3
    assert adv[0].tolist() == pytest.approx([0.1 + 0.9 * a1, a1, 0.3])
    assert ret[0].tolist() == pytest.approx([0.5 + 0.1 + 0.9 * a1, 0.6 + a1, 1.0])
    # row 1: the prompt position gets nothing; A2 = 1 - 0.7, A1 = 0.7 - 0.5 + 0.9 * 0.3
    assert adv[1].tolist() == pytest.approx([0.0, 0.2 + 0.9 * 0.3, 0.3])
    # discounting: gamma 0.5, lambda 1, and padding after the span is ignored
    adv, _ = gae(torch.tensor([[0.0, 2.0, 5.0]]), torch.tensor([[1.0, 1.0, 7.0]]),
                 torch.tensor([[1, 1, 0]]), gamma=0.5, lam=1.0)  # fmt: skip
    # A1 = 2 - 1 = 1 (terminal after it), A0 = (0 + 0.5 * 1 - 1) + 0.5 * 1 = 0
    assert adv.tolist()[0] == pytest.approx([0.0, 1.0, 0.0])


def test_clipped_value_loss_by_hand() -> None:
    values = torch.tensor([[1.0, 2.0]])
    old = torch.tensor([[0.5, 2.0]])
    returns = torch.tensor([[2.0, 1.0]])
    # token 0: max((1 - 2)^2, (0.5 + 0.2 - 2)^2) = 1.69; token 1: 1
    loss = value_loss(values, old, returns, torch.ones(1, 2), clip=0.2)
    assert loss.item() == pytest.approx(0.5 * (1.69 + 1.0) / 2)


def test_reward_is_added_at_the_end_token_not_at_padding() -> None:
    logp = torch.tensor([[-1.0, -2.0, -3.0, 0.0], [-1.0, -1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 0, 0]])
    r = kl_penalized_rewards(torch.tensor([2.0, 5.0]), logp, ref, mask, kl_coef=0.1)
    assert torch.allclose(r, torch.tensor([[0.0, 0.0, 0.1 + 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))


def test_bradley_terry_by_hand() -> None:
    rc, rr = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0])
    plain = (LN(1 + math.exp(-2)) + LN(2)) / 2
    assert bradley_terry_loss(rc, rr).item() == pytest.approx(plain)
    assert bradley_terry_loss(rc, rr, center_coef=0.01).item() == pytest.approx(
        plain + 0.01 * (4 + 0) / 2
    )


def test_dpo_by_hand_and_ln2_when_policy_is_reference() -> None:
    lp = torch.tensor([-10.0, -3.0])
    loss, margin, acc = dpo_loss(lp, lp - 1, lp, lp - 1, beta=0.1)
    assert loss.item() == pytest.approx(LN(2))
    assert margin.item() == 0.0 and acc.item() == 0.0
    # rewards 0.1 * 2 = 0.2 and 0.1 * -1 = -0.1: margin 0.3
    loss, margin, acc = dpo_loss(torch.tensor([-10.0]), torch.tensor([-8.0]),
                                 torch.tensor([-12.0]), torch.tensor([-7.0]), beta=0.1)  # fmt: skip
    assert loss.item() == pytest.approx(LN(1 + math.exp(-0.3)))
    assert margin.item() == pytest.approx(0.3)
    assert acc.item() == 1.0
