"""What GRPO and PPO share: an objective that samples its own batches from the policy.

An on-policy stage draws a rollout (sampled replies, scored) from the model
the `Trainer` is training, learns from it for `epochs` passes of `minibatches`
minibatches (`folio.rl.rollout.RolloutBuffer`), then draws the next. Its eval
batches are fresh rollouts that leave the training one alone. Between evals
it gathers a few training statistics (`stats`, four numbers a stage names),
and both the rollout being learned from and those statistics are
checkpointed with the run, so a resumed run continues exactly.

A subclass names its rollout's `batch_keys` and `stats_key`, and writes
`_draw(split, generator)`: one rollout on prompts drawn from the split's pool.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from folio.config.rl import RLConfig
from folio.rl.rollout import RolloutBuffer
from folio.tokenizers.chat import end_of_turn_id
from folio.train.objectives import Objective
from folio.train.policy import frozen


class OnPolicyObjective(Objective):
    """The rollout buffer, the bound policy, the frozen models and the checkpointed statistics."""

    splits = ("train", "val")
    batch_keys: tuple[str, ...]
    """The rollout's tensors a training minibatch holds, in the order `loss` unpacks them."""
    stats_key: str
    """The name the statistics are checkpointed under."""

    def __init__(self, cfg: RLConfig, tokenizer: Any, *frozen_models: nn.Module) -> None:
        self.cfg, self.tokenizer = cfg, tokenizer
        self.frozen_models = [frozen(m) for m in frozen_models]  # never stepped, no dropout
        self.end_id = end_of_turn_id(tokenizer)
        self.tokens_per_batch = cfg.minibatch_rows * frozen_models[0].context_size
        self.policy: nn.Module | None = None
        self.buffer = RolloutBuffer(self.batch_keys, cfg.epochs, cfg.minibatches)
        self.stats = torch.zeros(4)

    def bind(self, model: nn.Module) -> None:
        """Take the policy the trainer trains (rollouts sample from it)."""
        self.policy = model
        device = next(model.parameters()).device
        for m in self.frozen_models:
            m.to(device)

    def _picks(self, pool_size: int, generator: torch.Generator) -> list[int]:
        """prompts_per_rollout indices into a prompt pool, drawn with `generator`."""
        if self.policy is None:
            raise RuntimeError(f"{type(self).__name__}.bind(model) must come before any batch")
        return torch.randint(
            pool_size, (self.cfg.prompts_per_rollout,), generator=generator
        ).tolist()

    def _draw(self, split: str, generator: torch.Generator) -> dict[str, Any]:
        raise NotImplementedError

    def _training_rollout(self, generator: torch.Generator) -> dict[str, Any]:
        """The next rollout to learn from (a subclass may draw more, or count it)."""
        return self._draw("train", generator)

    def batch(self, split: str, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """Training: the next minibatch of the current rollout, sampling a new one when it is
        used up (epochs passes, each over its own shuffle of the rows)."""
        if split != "train":
            return self.eval_batch(split, generator)
        return self.buffer.next(lambda: self._training_rollout(generator), generator)

    def eval_batch(self, split: str, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """A fresh rollout on the split's prompts, all rows at once; the training rollout is
        left alone."""
        rollout = self._draw(split, generator)
        return tuple(rollout[k] for k in self.batch_keys)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The rollout being learned from, the next minibatch's index and the statistics since
        the last eval (empty before the first rollout)."""
        state = self.buffer.state_dict()
        return state | {self.stats_key: self.stats.clone()} if state else {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.stats = state.pop(self.stats_key, torch.zeros(4)).clone()
        self.buffer.load_state_dict(state)
