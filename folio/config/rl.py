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

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from folio.config.checks import check_fields, within
from folio.errors import FolioError

LOSS_MEAN_NAMES = ("token", "reply")
"""The values of `loss_mean` (folio.rl.estimators.LOSS_MEANS has one function per name)."""


GRPO = {"algo": "grpo"}
"""Field metadata: a setting only GRPO reads."""
PPO = {"algo": "ppo"}
"""Field metadata: a setting only PPO reads."""


def algo_of(name: str) -> str | None:
    """The one algorithm that reads RLConfig's field `name`, or None when both do."""
    return next((f.metadata.get("algo") for f in fields(RLConfig) if f.name == name), None)


def check_algo_fields(keys: list[str], algo: str) -> None:
    """Refuse an `rl.FIELD` override that the other algorithm alone reads (it would do nothing)."""
    for key in keys:
        section, _, name = key.rpartition(".")
        owner = algo_of(name) if section == "rl" else None
        if owner is not None and owner != algo:
            raise FolioError(
                f"{key} is {owner.upper()}'s setting (--algo {owner}); --algo {algo} does not "
                f"read it"
            )


@dataclass
class RLConfig:
    """How the policy is sampled, scored and updated in RL."""

    prompts_per_rollout: int = field(default=16, metadata=within(1))
    """Prompts sampled per rollout (P)."""
    group_size: int = field(default=8, metadata=within(1))
    """Replies sampled per prompt (G); GRPO's baseline is the mean reward of the group (G >= 2)."""
    minibatches: int = field(default=2, metadata=within(1))
    """Minibatches (optimizer steps) per pass over a rollout; must divide P * G."""
    epochs: int = field(default=2, metadata=within(1))
    """Passes over each rollout (GRPO's mu) before sampling the next."""
    temperature: float = field(default=1.0, metadata=within(0, lo_open=True))
    """Sampling temperature of rollouts; the loss scores the replies at the same temperature."""
    top_k: int = field(default=0, metadata=within(0))
    """Sample among the k most likely tokens (0: all); the loss uses the same k."""
    max_new_tokens: int = field(default=16, metadata=within(1))
    """Reply length limit in tokens."""
    clip_eps: float = field(default=0.2, metadata=within(0, 1, lo_open=True, hi_open=True))
    """Clip the probability ratio to [1 - clip_eps, 1 + clip_eps] in the surrogate."""
    kl_coef: float = field(default=0.04, metadata=within(0))
    """Weight of the KL penalty to the frozen reference (the initial policy); 0: none. GRPO adds
    kl_coef times the k3 estimate to the loss; PPO subtracts kl_coef times log(pi / pi_ref) from
    each token's reward."""
    scale_by_std: bool = field(default=True, metadata=GRPO)
    """GRPO: divide each group's advantages by the standard deviation of its rewards."""
    loss_mean: str = field(default="token", metadata=within(choices=LOSS_MEAN_NAMES) | GRPO)
    """GRPO: how the loss averages over reply tokens. 'token': every token of the minibatch
    weighs the same (DAPO), so long replies carry more of the gradient; 'reply': each reply's
    tokens are averaged first and every reply weighs the same (the original GRPO)."""
    dynamic_sampling: int = field(default=0, metadata=within(0) | GRPO)
    """GRPO (DAPO's dynamic sampling): up to this many extra rollouts per update to replace
    groups whose replies all scored the same (their advantages are 0: no signal); 0: off."""
    no_end_penalty: float = field(default=0.0, metadata=within(0))
    """Subtracted from the reward of a reply that never produces the end-of-turn token."""
    gamma: float = field(default=1.0, metadata=within(0, 1) | PPO)
    """PPO: discount of later rewards in GAE (1: none; a reply is short)."""
    gae_lambda: float = field(default=0.95, metadata=within(0, 1) | PPO)
    """PPO: GAE's lambda, trading the value estimate's bias (0) for the returns' variance (1)."""
    vf_coef: float = field(default=0.1, metadata=within(0) | PPO)
    """PPO: weight of the value loss beside the policy loss (they share the transformer)."""
    value_clip: float = field(default=0.2, metadata=within(0) | PPO)
    """PPO: the value loss ignores moves of the value estimate beyond this from the rollout's."""
    ptx_coef: float = field(default=0.0, metadata=within(0) | PPO)
    """PPO: weight of the SFT loss on --ptx-data conversations added to every step (PPO-ptx, as in
    InstructGPT), so the policy keeps what SFT taught beside what the reward model asks; 0: off."""
    train_seed: int = field(default=1, metadata=within(0))
    """Seed of the training prompts (the tasks' train split; `folio tasks make` uses 0)."""
    prompt_pool: int = field(default=4096, metadata=within(1))
    """Training prompts made per task; each rollout draws its prompts from them."""
    test_seed: int = field(default=0, metadata=within(0))
    """Seed of the held-out prompts: the first eval_prompts of `folio tasks make --seed S`'s test."""
    eval_prompts: int = field(default=64, metadata=within(1))
    """Held-out prompts per task scored at every eval (greedy pass@1, sampled reward, KL)."""

    def __post_init__(self) -> None:
        check_fields(self, "rl config")
        rows = self.prompts_per_rollout * self.group_size
        if rows % self.minibatches:
            raise FolioError(
                f"rl config: minibatches ({self.minibatches}) must divide the {rows} replies of a "
                f"rollout (prompts_per_rollout x group_size)"
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
