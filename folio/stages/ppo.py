"""PPO against a learned reward model with a KL leash: RLHF as in the video's closing section.

Ouyang et al. (2022), "Training language models to follow instructions with
human feedback", after Stiennon et al. (2020) and Ziegler et al. (2019). The
policy samples replies to prompts; the reward model (`folio reward`) scores
each whole reply at its end-of-turn token; every token pays a KL penalty to
the frozen SFT model, so the policy gains reward without drifting into text
the reward model never learned to judge:

    r_t       = -beta * (log pi(y_t) - log pi_ref(y_t)) + [t is the reply's last] * RM(reply)
    delta_t   = r_t + gamma * V(t + 1) - V(t)
    A_t       = sum_l (gamma * lambda)^l * delta_{t+l}            (GAE, then whitened)
    loss      = -mean_t min(rho_t A_t, clip(rho_t) A_t) + vf_coef * value_loss(V, R)

The value V is a scalar head on the policy's own transformer (a
`PolicyValueModel`), trained with the clipped value loss towards the returns
R = A + V_old. As in GRPO (folio/stages/grpo.py), each rollout is learned from
for epochs x minibatches steps, dropout is off, and the objective plugs into
the one `Trainer`, the rollout being learned from saved with each checkpoint.

PPO-ptx (InstructGPT; folio/stages/ptx.py): with `ptx_coef` above 0, every
step adds `ptx_coef` times the SFT loss on rows of conversations (the task
conversations SFT learned from, say), so that a policy trained on one kind of
prompt keeps the others. Each rollout row is paired with one packed row of
those conversations, drawn when the rollout is, so the pairing is
checkpointed with the rollout.

The prompts are those of the hidden gold rule (folio/data/prefs.py); the
reward model never saw the rule, only labelled pairs. Each eval reports, on
held-out prompts, the reward model's score and the gold score of the same
sampled replies: when the first rises while the second falls, the policy has
found the reward model's blind spots (over-optimisation).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from folio.config.rl import RLConfig
from folio.config.run import RunConfig
from folio.data.material import load_material
from folio.data.prefs import GOLD_TESTS, gold_tests, line_prompts
from folio.data.tasks import LINE_PROMPT, prompt_split
from folio.models.config import PolicyValueConfig
from folio.rl.estimators import (
    clip_fraction,
    gae,
    k3_kl,
    kl_penalized_rewards,
    masked_mean,
    policy_loss,
    token_logprobs,
    value_loss,
    whiten,
)
from folio.rl.rollout import reply_logprobs, sample_rollout
from folio.stages.onpolicy import OnPolicyObjective
from folio.stages.ptx import PtxRows, draw_ptx, ptx_loss
from folio.stages.ptx import ptx_rows as ptx_rows_of
from folio.tokenizers.chat import cut_at_turn_token, render_prompt
from folio.train.policy import (
    load_pinned_policy,
    load_reward_model,
    policy_config,
    same_tokenizer,
    where,
    with_scalar_head,
)
from folio.train.rundir import Pins, check_run_dir, check_same_settings
from folio.train.trainer import Trainer, TrainResult

BATCH_KEYS = ("tokens", "mask", "old_logprobs", "advantages", "returns", "old_values")
"""A PPO batch, in this order: (B, T) tokens, then (B, T-1) each."""
PTX_KEYS = ("ptx_x", "ptx_y", "ptx_mask")
"""With PPO-ptx, a batch goes on with rows of SFT conversations: inputs, targets and the loss
mask, (B, block_size) each."""

METRICS_SEED = 0
"""Seed of the sampled replies the metrics score: the same draws at every eval."""

RATIO_STATS = ("ratio_mean", "ratio_max", "clip_fraction")
"""Statistics of the probability ratio over the training minibatches since the last eval."""


def end_positions(mask: torch.Tensor) -> torch.Tensor:
    """Where each row's reply ends in `tokens` (its END, or its last token): (B,).

    mask (B, T - 1) marks targets, so target t is token t + 1."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, -1).amax(dim=1) + 1


class PPOObjective(OnPolicyObjective):
    """PPO with a reward model and a per-token KL penalty (see the module docstring)."""

    batch_keys = BATCH_KEYS
    stats_key = "ratio_sums"  # sum of ratio means, max ratio, sum of clip fractions, n

    def __init__(
        self,
        cfg: RLConfig,
        tokenizer: Any,
        reference: nn.Module,
        reward_model: nn.Module,
        train_prompts: Sequence[str],
        test_prompts: Sequence[str],
        ptx_rows: PtxRows | None = None,
    ) -> None:
        if ptx_rows is not None:  # before the buffer is made with batch_keys
            self.batch_keys = BATCH_KEYS + PTX_KEYS
        super().__init__(cfg, tokenizer, reference, reward_model)
        self.ptx_rows = ptx_rows
        self.reference, self.reward_model = self.frozen_models
        self.train_texts, self.test_texts = list(train_prompts), list(test_prompts)
        self.train_prompts = [self._render(p) for p in self.train_texts]
        self.test_prompts = [self._render(p) for p in self.test_texts]

    def _render(self, prompt: str) -> list[int]:
        return render_prompt(self.tokenizer, [{"role": "user", "content": prompt}])

    @torch.no_grad()
    def sample(
        self, model: nn.Module, prompts: Sequence[list[int]], generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """A rollout with everything PPO learns from: BATCH_KEYS, plus the per-reply `score`
        (reward model), `kl` (k3 summed over the reply) and `ended`, on the CPU."""
        c = self.cfg
        ro = sample_rollout(
            model, prompts, c.group_size, self.end_id, max_new_tokens=c.max_new_tokens,
            temperature=c.temperature, top_k=c.sampling_top_k, generator=generator,
            pad_id=self.end_id,
        )  # fmt: skip
        device = next(model.parameters()).device
        tokens, mask = ro.tokens.to(device), ro.mask.to(device)
        old_logprobs = ro.logprobs.to(device)
        ref_logprobs = reply_logprobs(self.reference, tokens, mask, c.temperature, c.sampling_top_k)
        values = model.values(tokens[:, :-1]) * mask  # V at the state before each target
        score = self.reward_model.score_at(tokens, end_positions(mask))
        score = score - c.no_end_penalty * (~ro.ended).to(device, score.dtype)
        rewards = kl_penalized_rewards(score, old_logprobs, ref_logprobs, mask, c.kl_coef)
        advantages, returns = gae(rewards, values, mask, c.gamma, c.gae_lambda)
        out = {
            "tokens": tokens,
            "mask": mask,
            "old_logprobs": old_logprobs,
            "advantages": whiten(advantages, mask),
            "returns": returns,
            "old_values": values,
            "score": score,
            "kl": (k3_kl(old_logprobs, ref_logprobs) * mask).sum(dim=1),
        }
        return {
            k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in out.items()
        } | {
            "ended": ro.ended,
            "replies": ro.replies,
        }

    def _draw(self, split: str, generator: torch.Generator) -> dict[str, Any]:
        """A rollout on prompts_per_rollout prompts drawn from the split's pool (with PPO-ptx, and
        one row of SFT conversations per reply)."""
        prompts = self.train_prompts if split == "train" else self.test_prompts
        rollout = self.sample(
            self.policy, [prompts[i] for i in self._picks(len(prompts), generator)], generator
        )
        if self.ptx_rows is not None:
            drawn = draw_ptx(self.ptx_rows, len(rollout["tokens"]), generator)
            rollout |= dict(zip(PTX_KEYS, drawn, strict=True))
        return rollout

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The clipped policy loss plus vf_coef times the clipped value loss (plus, with PPO-ptx,
        ptx_coef times the SFT loss on the batch's conversation rows)."""
        tokens, mask, old_logprobs, advantages, returns, old_values = batch[: len(BATCH_KEYS)]
        c = self.cfg
        hidden = model.hidden_states(tokens[:, :-1])  # (B, T-1, C), shared by both heads
        logits = model.lm_head(hidden)  # (B, T-1, V)
        logprobs = token_logprobs(logits, tokens[:, 1:], c.temperature, c.sampling_top_k)
        logprobs = logprobs.masked_fill(mask == 0, 0.0)
        values = model.score_head(hidden).squeeze(-1)  # (B, T-1)
        pg = policy_loss(logprobs, old_logprobs, advantages, mask, c.clip_eps)
        vf = value_loss(values, old_values, returns, mask, c.value_clip)
        if torch.is_grad_enabled():  # a training step (evals run under no_grad)
            self._gather_ratio_stats(logprobs.detach(), old_logprobs, mask)
        loss = pg + c.vf_coef * vf
        if self.ptx_rows is not None:
            x, y, ptx_mask = batch[len(BATCH_KEYS) :]
            loss = loss + c.ptx_coef * ptx_loss(model, x, y, ptx_mask)
        return loss

    def _gather_ratio_stats(
        self, logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor
    ) -> None:
        ratio = torch.exp(logprobs - old_logprobs)
        top = float(ratio[mask == 1].max()) if bool((mask == 1).any()) else 1.0
        total, biggest, clipped, n = self.stats.tolist()
        self.stats = torch.tensor([
            total + float(masked_mean(ratio, mask)), max(biggest, top),
            clipped + float(clip_fraction(logprobs, old_logprobs, mask, self.cfg.clip_eps)),
            n + 1,
        ])  # fmt: skip

    @torch.no_grad()
    def metrics(self, model: nn.Module) -> dict[str, float]:
        """Held-out figures, on the same prompts (and sampling seed) at every eval.

        rm_score: the reward model's mean score of G sampled replies per
        held-out prompt; gold_score: the hidden rule's mean score of the same
        replies, and gold_word, gold_length, gold_end: the share of them
        passing each of its three tests; kl: k3 summed over a reply, mean
        over replies (nats);
        reply_tokens and end_rate of those replies; and the ratio statistics
        of the training minibatches since the last eval.
        """
        r = self.sample(model, self.test_prompts, torch.Generator().manual_seed(METRICS_SEED))
        G = self.cfg.group_size
        cuts = [cut_at_turn_token(self.tokenizer, ids) for ids in r["replies"]]
        gold = [  # a reply that writes another turn token has not ended properly
            gold_tests(self.test_texts[i // G], self.tokenizer.decode(ids), bool(e) and not cut)
            for i, ((ids, cut), e) in enumerate(zip(cuts, r["ended"].tolist(), strict=True))
        ]
        n = len(gold)
        out = {
            "rm_score": float(r["score"].mean()),
            "gold_score": sum(sum(t) for t in gold) / (len(GOLD_TESTS) * n),
            **{f"gold_{name}": sum(t[j] for t in gold) / n for j, name in enumerate(GOLD_TESTS)},
            "kl": float(r["kl"].mean()),
            "reply_tokens": sum(len(ids) for ids in r["replies"]) / len(r["replies"]),
            "end_rate": float(r["ended"].float().mean()),
        }
        total, top, clipped, n = self.stats.tolist()
        if n:
            out |= {"ratio_mean": total / n, "ratio_max": top, "clip_fraction": clipped / n}
        self.stats.zero_()
        return out


def train_ppo(
    run: RunConfig,
    rl: RLConfig,
    init_from: str,
    reward_model_from: str,
    out_dir: str | Path,
    *,
    reference_from: str | None = None,
    corpus: str = "shakespeare",
    ptx_data: str | Path | None = None,
    resume: bool = False,
    restart: bool = False,
    force: bool = False,
    progress: bool = True,
    log=print,
) -> TrainResult:
    """PPO from the chat model `init_from` against the reward model `reward_model_from`.

    The policy gets a value head (zeros at the start) on its transformer and
    dropout off; the reference (default: the initial model) and the reward
    model are frozen and never stepped.
    """
    check_run_dir(out_dir, "ppo", resume=resume, restart=restart)
    pins = Pins(out_dir, resume)
    policy, ref = load_pinned_policy(pins, init_from, reference_from)
    reward = load_reward_model(pins.spec("reward_model", reward_model_from))
    pins.pin("reward_model", reward_model_from, where(reward))
    same_tokenizer(policy, reward)
    if isinstance(policy.config, PolicyValueConfig):
        config, weights = policy_config(policy), policy.model.state_dict()
    else:
        config, weights = with_scalar_head(policy, PolicyValueConfig, dropout=0.0)
    ptx_rows = None
    if ptx_data is not None:
        ptx_rows, kept, left = ptx_rows_of(ptx_data, policy.tokenizer, config.block_size)
        log(
            f"ppo-ptx: {kept} conversations of {ptx_data} in {len(ptx_rows[0])} rows"
            + (f" ({left} demonstrations left out)" if left else "")
        )
    material = load_material(corpus)
    # the gold rule has speakers x topics prompts, about 80% of them in train: a pool asked
    # for beyond that takes them all
    available = sum(
        prompt_split(LINE_PROMPT.format(speaker=sp, word=w)) == "train"
        for sp in material.speakers
        for w in material.topics
    )
    pool = min(rl.prompt_pool, available)
    if pool < rl.prompt_pool:
        log(f"ppo: the gold rule has {available} training prompts; the pool takes them all")
    train_prompts = line_prompts("train", pool, rl.train_seed, material)
    test_prompts = line_prompts("test", rl.eval_prompts, rl.test_seed, material)
    run = dataclasses.replace(
        run, model=config, train=dataclasses.replace(run.train, batch_size=rl.minibatch_rows)
    )
    meta = {
        "stage": "ppo",
        "algo": "ppo",
        "init_from": init_from,
        "reference": reference_from or init_from,
        "reward_model": reward_model_from,
        "tasks": None,
        "corpus": corpus,
        "ptx_data": str(Path(ptx_data).resolve()) if ptx_data is not None else None,
        "rl": rl.to_dict(),
    }
    if resume:
        check_same_settings(Path(out_dir), meta)
    objective = PPOObjective(
        rl, policy.tokenizer, ref.model, reward.model, train_prompts, test_prompts, ptx_rows
    )
    trainer = Trainer(
        run, objective, out_dir, policy.tokenizer, init_weights=weights, meta=meta, init=policy.source,
        resume=resume, restart=restart, force=force, progress=progress, log=log, pins=pins,
    )  # fmt: skip
    return trainer.fit()
