"""GRPO: RL on verifiable rewards, with each prompt's group of replies as its own baseline.

Group Relative Policy Optimization, Shao et al. (2024), "DeepSeekMath". For
each prompt, sample G replies from the current policy, score each with the
task's checker (1 right, 0 wrong), and make the replies that beat their
group's mean more likely and the others less:

    A_i    = (r_i - mean_group(r)) / (std_group(r) + eps)       (std optional)
    rho_t  = pi_theta(y_t) / pi_old(y_t)                          per reply token
    loss   = -mean_t min(rho_t A_i, clip(rho_t, 1 - eps, 1 + eps) A_i)
             + beta * mean_t k3(pi_theta, pi_ref)_t

No value model is needed: the group is the baseline. pi_old is the policy that
sampled the rollout; each rollout is learned from for `epochs` passes of
`minibatches` steps (rl_config.py), so rho moves away from 1 after the first
step and the clip keeps each update near the sampling policy. pi_ref is a
frozen copy of the initial (SFT) model; the k3 penalty keeps the policy near
it. All log-probs are taken at the sampling temperature and top-k.

The stage is an objective of the one `Trainer`: `batch("train", generator)`
serves the minibatches of the current rollout and samples a new rollout
(with `generator`, so a resumed run samples the same) when they are used up;
the rollout being learned from is saved with each checkpoint
(`state_dict`). Training prompts come from the tasks' train split, held-out
prompts from their test split (folio/data/tasks.py keeps the two disjoint).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from folio.config.rl import RLConfig
from folio.config.run import RunConfig
from folio.data.tasks import (
    Example,
    check_reply,
    checkable_task_names,
    get_task,
    load_material,
    make_examples,
)
from folio.errors import FolioError
from folio.eval.tasks import generate_replies
from folio.rl.estimators import LOSS_MEANS, group_advantages, k3_kl, policy_loss
from folio.rl.rollout import reply_logprobs, sample_rollout
from folio.stages.onpolicy import OnPolicyObjective
from folio.tokenizers.chat import render_prompt
from folio.train.policy import (
    load_pinned_policy,
    policy_config,
)
from folio.train.rundir import Pins, check_run_dir, check_same_settings
from folio.train.trainer import Trainer, TrainResult

Reward = Callable[[Example, str, bool], float]
"""reward(example, reply text, whether the reply ended) -> a number."""

BATCH_KEYS = ("tokens", "mask", "old_logprobs", "ref_logprobs", "advantages")
"""A GRPO batch, in this order: (B, T) tokens, then (B, T-1) mask, old and reference
log-probs, then (B,) advantages."""

METRICS_SEED = 0
"""Seed of the sampled replies the metrics score: the same draws at every eval."""


def task_reward(no_end_penalty: float = 0.0) -> Reward:
    """The task's checker as a reward: 1 for a right reply, 0 otherwise, minus the penalty
    for a reply that never ended."""

    def reward(example: Example, text: str, ended: bool) -> float:
        right = float(check_reply(example.task, text, example.answer))
        return right - (0.0 if ended else no_end_penalty)

    return reward


def informative_groups(rewards: torch.Tensor, group_size: int) -> list[int]:
    """Indices of the groups (consecutive runs of group_size rewards) whose rewards differ."""
    groups = rewards.view(-1, group_size)
    return torch.nonzero(groups.amax(dim=1) > groups.amin(dim=1)).flatten().tolist()


def keep_informative(
    parts: Sequence[dict[str, torch.Tensor]], group_size: int, n_groups: int, pad_id: int
) -> dict[str, torch.Tensor]:
    """n_groups groups from the rollouts in `parts`: the informative ones first, in order,
    then (if too few were found) zero-spread ones, so the batch keeps its shape.

    Rollouts may differ in length: tokens are right-padded with pad_id, and masks and
    log-probs with 0, so the padding is never scored.
    """
    groups = [(i, g) for i, r in enumerate(parts) for g in range(len(r["rewards"]) // group_size)]
    spread = {
        (i, g) for i, r in enumerate(parts) for g in informative_groups(r["rewards"], group_size)
    }
    picked = sorted(groups, key=lambda ig: ig not in spread)[:n_groups]  # stable: in order
    out: dict[str, list[torch.Tensor]] = {k: [] for k in parts[0]}
    for i, g in picked:
        rows = slice(g * group_size, (g + 1) * group_size)
        for k, v in parts[i].items():
            v = v[rows]
            if v.dim() == 2:  # tokens or per-position tensors: pad on the right to the widest
                width = max(p[k].shape[1] for p in parts)
                v = torch.nn.functional.pad(
                    v, (0, width - v.shape[1]), value=pad_id if k == "tokens" else 0
                )
            out[k].append(v)
    return {k: torch.cat(v) for k, v in out.items()}


class GRPOObjective(OnPolicyObjective):
    """GRPO on task prompts (see the module docstring), for the one `Trainer`."""

    batch_keys = BATCH_KEYS
    stats_key = "rollout_sums"  # rewards, replies, zero-spread groups, groups

    def __init__(
        self,
        cfg: RLConfig,
        tokenizer: Any,
        reference: nn.Module,
        train_examples: Sequence[Example],
        test_examples: Sequence[Example],
        reward: Reward | None = None,
    ) -> None:
        if not train_examples or not test_examples:
            raise FolioError("GRPO needs training and held-out prompts")
        if cfg.group_size < 2:
            raise FolioError(
                f"rl config: GRPO needs group_size of at least 2 (a group's mean reward is each "
                f"reply's baseline), got {cfg.group_size}"
            )
        super().__init__(cfg, tokenizer, reference)
        self.reference = self.frozen_models[0]
        self.reward = reward or task_reward(cfg.no_end_penalty)
        self.train_examples, self.test_examples = list(train_examples), list(test_examples)
        self.train_prompts = [render_prompt(tokenizer, ex.messages[:1]) for ex in train_examples]
        self.test_prompts = [render_prompt(tokenizer, ex.messages[:1]) for ex in test_examples]

    # ------------------------------------------------------------ rollouts

    def _score(self, examples: Sequence[Example], replies: list[list[int]], ended: torch.Tensor):
        G = self.cfg.group_size
        return torch.tensor(
            [
                self.reward(examples[i // G], self.tokenizer.decode(ids), bool(e))
                for i, (ids, e) in enumerate(zip(replies, ended.tolist(), strict=True))
            ]
        )

    def sample(
        self, model: nn.Module, examples: Sequence[Example], prompts: Sequence[list[int]],
        generator: torch.Generator,
    ) -> dict[str, torch.Tensor]:  # fmt: skip
        """A rollout of G replies per prompt, scored, with GRPO's advantages and the
        reference's log-probs: BATCH_KEYS plus (B,) `rewards` and `ended`, on the CPU."""
        c = self.cfg
        ro = sample_rollout(
            model, prompts, c.group_size, self.end_id, max_new_tokens=c.max_new_tokens,
            temperature=c.temperature, top_k=c.sampling_top_k, generator=generator,
            pad_id=self.end_id,
        )  # fmt: skip
        rewards = self._score(examples, ro.replies, ro.ended)
        device = next(self.reference.parameters()).device
        with torch.no_grad():
            ref_logprobs = reply_logprobs(
                self.reference, ro.tokens.to(device), ro.mask.to(device),
                c.temperature, c.sampling_top_k,
            ).cpu()  # fmt: skip
        return {
            "tokens": ro.tokens,
            "mask": ro.mask,
            "old_logprobs": ro.logprobs,
            "ref_logprobs": ref_logprobs,
            "advantages": group_advantages(rewards, c.group_size, c.scale_by_std),
            "rewards": rewards,
            "ended": ro.ended,
        }

    def _draw(self, split: str, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """A rollout on prompts_per_rollout prompts drawn from the split's pool."""
        examples, prompts = (
            (self.train_examples, self.train_prompts)
            if split == "train"
            else (self.test_examples, self.test_prompts)
        )
        chosen = self._picks(len(examples), generator)
        return self.sample(
            self.policy, [examples[i] for i in chosen], [prompts[i] for i in chosen], generator
        )

    def _training_rollout(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        rollout = self._counted(self._draw("train", generator))
        if not self.cfg.dynamic_sampling:
            return rollout
        # DAPO's dynamic sampling: a group whose replies all scored the same has zero
        # advantages and teaches nothing, so draw more prompts to take its place.
        G, P = self.cfg.group_size, self.cfg.prompts_per_rollout
        parts = [rollout]
        for _ in range(self.cfg.dynamic_sampling):
            if sum(len(informative_groups(r["rewards"], G)) for r in parts) >= P:
                break
            parts.append(self._counted(self._draw("train", generator)))
        return keep_informative(parts, G, P, self.end_id)

    def _counted(self, rollout: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Add a training rollout to the reward and zero-spread tallies the metrics report."""
        groups = rollout["rewards"].view(-1, self.cfg.group_size)
        zero = float((groups.amax(dim=1) == groups.amin(dim=1)).sum())
        self.stats += torch.tensor(
            [float(groups.sum()), float(groups.numel()), zero, float(len(groups))]
        )
        return rollout

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The clipped surrogate plus kl_coef times the mean k3 KL to the reference."""
        tokens, mask, old_logprobs, ref_logprobs, advantages = batch
        c = self.cfg
        logprobs = reply_logprobs(model, tokens, mask, c.temperature, c.sampling_top_k)
        loss = policy_loss(
            logprobs, old_logprobs, advantages[:, None], mask, c.clip_eps, c.loss_mean
        )
        if c.kl_coef:
            loss = loss + c.kl_coef * LOSS_MEANS[c.loss_mean](k3_kl(logprobs, ref_logprobs), mask)
        return loss

    @torch.no_grad()
    def metrics(self, model: nn.Module) -> dict[str, float]:
        """Held-out figures, on the same prompts (and sampling seed) at every eval.

        pass_at_1 (and per task when there are several): the greedy reply is
        right; end_rate: it ended. On G sampled replies per prompt: reward
        (mean), kl (k3 summed over a reply, mean over replies: KL(pi || pi_ref)
        per reply, in nats), reply_tokens (mean, END not counted) and
        zero_spread (the share of prompts whose G replies all got the same
        reward, from which GRPO learns nothing). And train_reward and
        train_zero_spread: the same two over the training rollouts since the
        last eval.
        """
        c, examples = self.cfg, self.test_examples
        greedy = generate_replies(
            model, self.test_prompts, self.end_id, max_new_tokens=c.max_new_tokens,
            temperature=0.0,
        )  # fmt: skip
        right = [
            check_reply(ex.task, self.tokenizer.decode(r[0].ids), ex.answer)
            for ex, r in zip(examples, greedy, strict=True)
        ]
        out = {
            "pass_at_1": sum(right) / len(right),
            "end_rate": sum(r[0].ended for r in greedy) / len(greedy),
        }
        tasks = list(dict.fromkeys(ex.task for ex in examples))
        if len(tasks) > 1:
            for name in tasks:
                mine = [ok for ok, ex in zip(right, examples, strict=True) if ex.task == name]
                out[f"pass_at_1_{name}"] = sum(mine) / len(mine)
        rollout = self.sample(
            model, examples, self.test_prompts, torch.Generator().manual_seed(METRICS_SEED)
        )
        device = next(model.parameters()).device
        mask = rollout["mask"].to(device)
        logprobs = reply_logprobs(
            model, rollout["tokens"].to(device), mask, c.temperature, c.sampling_top_k
        )
        kl = (k3_kl(logprobs, rollout["ref_logprobs"].to(device)) * mask).sum(dim=1)  # (B,)
        groups = rollout["rewards"].view(-1, c.group_size)
        ended = rollout["ended"].float()
        out |= {
            "reward": float(rollout["rewards"].mean()),
            "kl": float(kl.mean()),
            "reply_tokens": float((rollout["mask"].sum(dim=1) - ended).mean()),
            "zero_spread": float((groups.amax(dim=1) == groups.amin(dim=1)).float().mean()),
        }
        rewards, replies, zero, n_groups = self.stats.tolist()
        if replies:
            out |= {"train_reward": rewards / replies, "train_zero_spread": zero / n_groups}
        self.stats.zero_()
        return out


# ------------------------------------------------------------------ the stage


def train_grpo(
    run: RunConfig,
    rl: RLConfig,
    init_from: str,
    tasks: str | Sequence[str],
    out_dir: str | Path,
    *,
    reference_from: str | None = None,
    corpus: str = "shakespeare",
    resume: bool = False,
    restart: bool = False,
    force: bool = False,
    progress: bool = True,
    log=print,
) -> TrainResult:
    """GRPO from the chat checkpoint `init_from` (run:DIR) on `tasks`, writing the run to out_dir.

    The model's shape comes from the checkpoint, with dropout off: the ratio
    compares the policy that sampled a reply with the one being updated, and
    under dropout every forward pass would be another random sub-network, so
    the ratio would differ from 1 before any update and the clip would fire
    on noise. The reference (default: the initial checkpoint) is frozen.
    """
    check_run_dir(out_dir, "grpo", resume=resume, restart=restart)
    names = checkable_task_names(tasks)
    pins = Pins(out_dir, resume)
    policy, ref = load_pinned_policy(pins, init_from, reference_from)
    tokenizer = policy.tokenizer
    needs_corpus = any(get_task(n).needs_corpus for n in names)
    material = load_material(corpus) if needs_corpus else None
    train_examples = make_examples(names, "train", rl.prompt_pool, rl.train_seed, material)
    test_examples = make_examples(names, "test", rl.eval_prompts, rl.test_seed, material)
    model_config = policy_config(policy)
    run = dataclasses.replace(
        run, model=model_config, train=dataclasses.replace(run.train, batch_size=rl.minibatch_rows)
    )
    meta = {
        "stage": "grpo",
        "algo": "grpo",
        "init_from": init_from,
        "reference": reference_from or init_from,
        "tasks": names,
        "corpus": corpus if needs_corpus else None,
        "rl": rl.to_dict(),
    }
    if resume:
        check_same_settings(Path(out_dir), meta)
    objective = GRPOObjective(rl, tokenizer, ref.model, train_examples, test_examples)
    trainer = Trainer(
        run, objective, out_dir, tokenizer,
        init_weights=policy.model.state_dict(), meta=meta, init=policy.source,
        resume=resume, restart=restart, force=force, progress=progress, log=log, pins=pins,
    )  # fmt: skip
    return trainer.fit()
