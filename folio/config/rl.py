"""The settings of RL on a chat model: how rollouts are sampled, scored and learned from.

The [rl] table of a preset (folio/config/presets/rl.toml) and the `--rl.FIELD`
flags of `folio rl` fill an `RLConfig`; the model comes from the initial
checkpoint and the optimizer and schedule from the [train] table, as for
every stage.

One rollout samples `group_size` replies to each of `prompts_per_rollout`
prompts, B = P * G replies in all. The trainer then takes `epochs` passes
over it in `minibatches` minibatches of B / minibatches replies, one
optimizer step each (with `train.grad_accum` 1), before the next rollout:
PPO's and GRPO's inner loop, where the clipped ratio matters from the second
minibatch on.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from folio.errors import FolioError

LOSS_MEAN_NAMES = ("token", "reply")
"""The values of `loss_mean` (folio.rl.estimators.LOSS_MEANS has one function per name)."""


@dataclass
class RLConfig:
    """How the policy is sampled, scored and updated in RL."""

    prompts_per_rollout: int = 16
    """Prompts sampled per rollout (P)."""
    group_size: int = 8
    """Replies sampled per prompt (G); GRPO's baseline is the mean reward of the group (G >= 2)."""
    minibatches: int = 2
    """Minibatches (optimizer steps) per pass over a rollout; must divide P * G."""
    epochs: int = 2
    """Passes over each rollout (GRPO's mu) before sampling the next."""
    temperature: float = 1.0
    """Sampling temperature of rollouts; the loss scores the replies at the same temperature."""
    top_k: int = 0
    """Sample among the k most likely tokens (0: all); the loss uses the same k."""
    max_new_tokens: int = 16
    """Reply length limit in tokens."""
    clip_eps: float = 0.2
    """Clip the probability ratio to [1 - clip_eps, 1 + clip_eps] in the surrogate."""
    kl_coef: float = 0.04
    """Weight of the KL penalty to the frozen reference (the initial policy); 0: none. GRPO adds
    kl_coef times the k3 estimate to the loss; PPO subtracts kl_coef times log(pi / pi_ref) from
    each token's reward."""
    scale_by_std: bool = True
    """GRPO: divide each group's advantages by the standard deviation of its rewards."""
    loss_mean: str = "token"
    """GRPO: how the loss averages over reply tokens. 'token': every token of the minibatch
    weighs the same (DAPO), so long replies carry more of the gradient; 'reply': each reply's
    tokens are averaged first and every reply weighs the same (the original GRPO)."""
    dynamic_sampling: int = 0
    """GRPO (DAPO's dynamic sampling): up to this many extra rollouts per update to replace
    groups whose replies all scored the same (their advantages are 0: no signal); 0: off."""
    no_end_penalty: float = 0.0
    """Subtracted from the reward of a reply that never produces the end-of-turn token."""
    gamma: float = 1.0
    """PPO: discount of later rewards in GAE (1: none; a reply is short)."""
    gae_lambda: float = 0.95
    """PPO: GAE's lambda, trading the value estimate's bias (0) for the returns' variance (1)."""
    vf_coef: float = 0.1
    """PPO: weight of the value loss beside the policy loss (they share the transformer)."""
    value_clip: float = 0.2
    """PPO: the value loss ignores moves of the value estimate beyond this from the rollout's."""
    ptx_coef: float = 0.0
    """PPO: weight of the SFT loss on --ptx-data conversations added to every step (PPO-ptx, as in
    InstructGPT), so the policy keeps what SFT taught beside what the reward model asks; 0: off."""
    train_seed: int = 1
    """Seed of the training prompts (the tasks' train split; `folio tasks make` uses 0)."""
    prompt_pool: int = 4096
    """Training prompts made per task; each rollout draws its prompts from them."""
    test_seed: int = 0
    """Seed of the held-out prompts: the first eval_prompts of `folio tasks make --seed S`'s test."""
    eval_prompts: int = 64
    """Held-out prompts per task scored at every eval (greedy pass@1, sampled reward, KL)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type == "int" and (isinstance(v, bool) or not isinstance(v, int)):
                raise FolioError(f"rl config: {f.name} must be an integer, got {v!r}")
            if f.type == "float":
                if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                    raise FolioError(f"rl config: {f.name} must be a finite number, got {v!r}")
                setattr(self, f.name, float(v))
            if f.type == "bool" and not isinstance(v, bool):
                raise FolioError(f"rl config: {f.name} must be true or false, got {v!r}")
        for name in ("prompts_per_rollout", "minibatches", "epochs", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise FolioError(f"rl config: {name} must be positive, got {getattr(self, name)}")
        if self.loss_mean not in LOSS_MEAN_NAMES:
            raise FolioError(
                f"rl config: loss_mean must be one of {LOSS_MEAN_NAMES}, got {self.loss_mean!r}"
            )
        if self.dynamic_sampling < 0:
            raise FolioError(
                f"rl config: dynamic_sampling must not be negative, got {self.dynamic_sampling}"
            )
        for name in ("prompt_pool", "eval_prompts"):
            if getattr(self, name) < 1:
                raise FolioError(f"rl config: {name} must be positive, got {getattr(self, name)}")
        if self.group_size < 1:
            raise FolioError(f"rl config: group_size must be positive, got {self.group_size}")
        rows = self.prompts_per_rollout * self.group_size
        if rows % self.minibatches:
            raise FolioError(
                f"rl config: minibatches ({self.minibatches}) must divide the {rows} replies of a "
                f"rollout (prompts_per_rollout x group_size)"
            )
        if self.temperature <= 0:
            raise FolioError(f"rl config: temperature must be positive, got {self.temperature}")
        if self.top_k < 0:
            raise FolioError(f"rl config: top_k must be 0 (off) or positive, got {self.top_k}")
        if not 0 < self.clip_eps < 1:
            raise FolioError(f"rl config: clip_eps must be in (0, 1), got {self.clip_eps}")
        for name in ("kl_coef", "no_end_penalty", "vf_coef", "value_clip", "ptx_coef"):
            if getattr(self, name) < 0:
                raise FolioError(
                    f"rl config: {name} must not be negative, got {getattr(self, name)}"
                )
        for name in ("gamma", "gae_lambda"):
            if not 0 <= getattr(self, name) <= 1:
                raise FolioError(f"rl config: {name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("train_seed", "test_seed"):
            if getattr(self, name) < 0:
                raise FolioError(
                    f"rl config: {name} must not be negative, got {getattr(self, name)}"
                )

    @property
    def rollout_rows(self) -> int:
        """B = P * G replies per rollout."""
        return self.prompts_per_rollout * self.group_size

    @property
    def minibatch_rows(self) -> int:
        """Replies per minibatch."""
        return self.rollout_rows // self.minibatches

    @property
    def steps_per_rollout(self) -> int:
        """Minibatches drawn from one rollout: epochs x minibatches."""
        return self.epochs * self.minibatches

    @property
    def sampling_top_k(self) -> int | None:
        """top_k as the sampler takes it (None: no filter)."""
        return self.top_k or None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_ptx(data: object, coef: float, table: str) -> None:
    """The mixed-in SFT loss (PPO-ptx) takes both its conversations and a weight above 0."""
    if (data is not None) != (coef > 0):
        raise FolioError(
            f"the mixed-in SFT loss (ptx) takes both --ptx-data (the conversations) and "
            f"--{table}.ptx_coef above 0 (their weight); give both or neither"
        )
