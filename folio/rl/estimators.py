"""The estimators and losses of RL and preference tuning, each a small pure function.

Notation: B rows (replies), T positions, V vocabulary size, G replies per
prompt (a group). A `mask` is 1 on the positions that count (the reply's
tokens, its end-of-turn token included) and 0 on the prompt and padding.
Log-probabilities are per token: `logprobs[b, t] = log pi(y[b, t] | y[b, <t])`.

The names follow the papers:
- GRPO, Shao et al. (2024), "DeepSeekMath": `group_advantages`, with the
  clipped ratio of PPO and a k3 KL penalty to a reference model;
- PPO, Schulman et al. (2017), "Proximal Policy Optimization Algorithms":
  `policy_loss`, `value_loss`; GAE, Schulman et al. (2016), "High-Dimensional
  Continuous Control Using Generalized Advantage Estimation": `gae`;
- the k3 estimator of KL, Schulman (2020), "Approximating KL Divergence";
- the Bradley-Terry reward-model loss of Ouyang et al. (2022), "Training
  language models to follow instructions with human feedback", with the
  centring term of Eisenstein et al. (2023), "Helping or Herding?";
- DPO, Rafailov et al. (2023), "Direct Preference Optimization".

Every function has a hand-computed test in tests/test_rl_math.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from folio.sample.sampler import sampling_logprobs

MAX_LOG_RATIO = 10.0
"""k3 clamps log(pi_ref / pi) to [-10, 10]: a token one model rules out (top-k) gives a
large finite penalty, never inf or NaN."""


def token_logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0, top_k: int | None = None
) -> torch.Tensor:
    """log pi_{tau,k}(tokens[b, t]) under logits (B, T, V) -> (B, T).

    pi_{tau,k} = softmax(top_k(logits / tau)): the distribution the sampler
    draws from at temperature tau and top-k (`folio.sample.sampling_logprobs`).
    The loss must score samples with the same tau and k they were drawn with:
    log-probs of another distribution make the ratio differ from 1 before any
    update and bias the KL estimate (it can even come out negative).
    """
    logp = sampling_logprobs(logits, temperature, top_k)  # (B, T, V)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (B, T)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum(x * mask) / sum(mask), over every position at once; 0 when the mask is empty.

    Every reply token of the batch weighs the same (token-level averaging, as
    in DAPO, Yu et al. 2025), so a long reply is not diluted to the weight of
    a short one. x's masked-out entries must be finite.
    """
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def reply_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each row's masked mean, then the mean over rows that have a masked-in entry; 0 if none.

    Every reply weighs the same whatever its length (GRPO's original averaging,
    Shao et al. 2024): a task with 2-token answers counts as much per reply as one
    with 10-token answers, where `masked_mean` would give it a fifth of the weight.
    """
    mask = mask.to(x.dtype)
    counts = mask.sum(dim=-1)  # (B,)
    rows = (x * mask).sum(dim=-1) / counts.clamp(min=1.0)  # (B,)
    present = (counts > 0).to(x.dtype)
    return (rows * present).sum() / present.sum().clamp(min=1.0)


LOSS_MEANS = {"token": masked_mean, "reply": reply_mean}
"""How a loss averages over reply tokens: every token alike, or every reply alike."""


def sequence_logprobs(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log pi(reply) = sum_t mask[t] * logprobs[t]: (B, T) -> (B,)."""
    return (logprobs * mask.to(logprobs.dtype)).sum(dim=-1)


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """GRPO's advantage of each reply: A_i = (r_i - mean_group(r)) [/ (std_group(r) + eps)].

    rewards (B,), with the G = group_size replies of each prompt in consecutive
    rows; std is the group's population standard deviation (divide by G).
    Within each group the advantages sum to 0; a group whose replies all got
    the same reward has advantages of 0 and teaches nothing.
    """
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards {tuple(rewards.shape)} do not split into groups of {group_size}")
    r = rewards.float().view(-1, group_size)  # (B/G, G)
    a = r - r.mean(dim=1, keepdim=True)
    if scale_by_std:
        a = a / (r.std(dim=1, unbiased=False, keepdim=True) + eps)
    return a.view(-1)


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """The k3 estimate of KL(pi || pi_ref) per token: (rho - 1) - log rho, rho = pi_ref / pi.

    Unbiased for tokens sampled from pi, and never negative (e^x >= 1 + x),
    unlike the plain log pi - log pi_ref. log rho is clamped to
    [-MAX_LOG_RATIO, MAX_LOG_RATIO].
    """
    log_rho = (ref_logprobs - logprobs).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    return torch.exp(log_rho) - 1.0 - log_rho


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
    mean: str = "token",
) -> torch.Tensor:
    """PPO's clipped surrogate, negated to minimise, as a mean over reply tokens.

    ratio_t = exp(logprobs_t - old_logprobs_t),
    loss = -mean_t min(ratio_t * A_t, clip(ratio_t, 1 - eps, 1 + eps) * A_t).
    advantages broadcast against logprobs: (B, 1) for GRPO (one per reply), (B, T) for PPO.
    `mean` is a key of LOSS_MEANS: 'token' (every token alike) or 'reply' (every reply alike).
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * advantages
    return -LOSS_MEANS[mean](torch.minimum(unclipped, clipped), mask)


def clip_fraction(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor, clip_eps: float
) -> torch.Tensor:
    """The share of reply tokens whose ratio lies outside [1 - eps, 1 + eps]."""
    ratio = torch.exp(logprobs - old_logprobs)
    return masked_mean(((ratio - 1.0).abs() > clip_eps).float(), mask)


def whiten(
    x: torch.Tensor, mask: torch.Tensor | None = None, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) over the masked entries (all when mask is None).

    With shift_mean=False the mean is added back: only the scale changes (for
    rewards, whose sign carries meaning). Masked-out entries are returned as 0.
    """
    m = torch.ones_like(x) if mask is None else mask.to(x.dtype)
    mean = masked_mean(x, m)
    var = masked_mean((x - mean) ** 2, m)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * m


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each row's masked span: (advantages, returns).

    delta_t = r_t + gamma * V_{t+1} - V_t,   A_t = delta_t + gamma * lam * A_{t+1},
    returns_t = A_t + V_t. The episode ends at the row's last masked position
    (the end-of-turn token, or the token limit): there V_{t+1} = 0 and
    A_{t+1} = 0, so nothing leaks in from padding or from the next row.
    Positions outside the mask get advantage and return 0. All (B, T).
    """
    m = mask.to(values.dtype)
    B, T = values.shape
    advantages = torch.zeros_like(values)
    next_value = torch.zeros(B, dtype=values.dtype, device=values.device)
    next_adv = torch.zeros_like(next_value)
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = (delta + gamma * lam * next_adv) * m[:, t]
        advantages[:, t] = adv
        # Outside the span the carried value and advantage reset to 0, so the
        # position before a span's first token sees nothing, and the last
        # position of the span sees the terminal 0.
        next_value = values[:, t] * m[:, t]
        next_adv = adv
    return advantages, (advantages + values) * m


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float,
) -> torch.Tensor:
    """PPO's clipped value loss: 0.5 * mean_t max((V - R)^2, (V_old + clip(V - V_old, +-c) - R)^2)."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


def kl_penalized_rewards(
    score: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> torch.Tensor:
    """RLHF's per-token reward: r_t = -beta * (logprobs_t - ref_logprobs_t), plus the score at the end.

    score (B,) is the reward model's score of the whole reply; it is added at
    each row's last masked position (the end-of-turn token), never at padding.
    (B, T).
    """
    m = mask.to(logprobs.dtype)
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)  # (B, T)
    last = torch.where(mask.bool(), positions, -1).amax(dim=1, keepdim=True)  # (B, 1); -1: empty
    at_end = (positions == last).to(logprobs.dtype)  # (B, T), one 1 per non-empty row
    return -kl_coef * (logprobs - ref_logprobs) * m + score.to(logprobs.dtype)[:, None] * at_end


def bradley_terry_loss(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, center_coef: float = 0.0
) -> torch.Tensor:
    """-mean log sigma(r_chosen - r_rejected) + center_coef * mean((r_chosen + r_rejected)^2).

    The Bradley-Terry model says P(chosen preferred) = sigma(r_c - r_r). The
    loss sees only differences, so the rewards may drift; the optional
    centring term pulls each pair's sum towards 0.
    """
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    if center_coef:
        loss = loss + center_coef * ((chosen_rewards + rejected_rewards) ** 2).mean()
    return loss


def dpo_loss(
    chosen_logprobs: torch.Tensor,
    rejected_logprobs: torch.Tensor,
    ref_chosen_logprobs: torch.Tensor,
    ref_rejected_logprobs: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, reward margin, accuracy) of DPO, each a mean over pairs.

    Arguments are log pi(reply) summed over reply tokens, (B,) each. The
    implicit reward of a reply is beta * (log pi - log pi_ref);
    loss = -log sigma(reward_chosen - reward_rejected); the margin is that
    difference and the accuracy the share of pairs where it is positive.
    When the policy equals the reference the loss is log 2.
    """
    chosen_rewards = beta * (chosen_logprobs - ref_chosen_logprobs)
    rejected_rewards = beta * (rejected_logprobs - ref_rejected_logprobs)
    margin = chosen_rewards - rejected_rewards
    loss = -F.logsigmoid(margin).mean()
    return loss, margin.mean().detach(), (margin > 0).float().mean()
