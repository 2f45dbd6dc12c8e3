"""A reward model: the GPT with a scalar head, read at the reply's end-of-turn token.

Notation: B batch, T time, C channels (n_embd).

As in Ouyang et al. (2022), "Training language models to follow instructions
with human feedback", the reward model is the language model itself (started
from the SFT weights) with one more linear layer, `score_head`, mapping each
position's final hidden state to a number. The score of a reply is that
number at its end-of-turn token: by then the model has read the prompt and
the whole reply. The language-model head is kept (unused by the score) so
the weights load from any chat checkpoint of the same shape.
"""

from __future__ import annotations

import torch
from torch import nn

from folio.models.config import RewardModelConfig
from folio.models.gpt import GPT


class RewardModel(GPT):
    """GPT -> final hidden states (B, T, C) -> score_head -> (B, T) scores."""

    def __init__(self, config: RewardModelConfig) -> None:
        super().__init__(config)
        self.score_head = nn.Linear(config.n_embd, 1)
        nn.init.zeros_(self.score_head.weight)  # every reply starts at score 0
        nn.init.zeros_(self.score_head.bias)

    def scores(self, idx: torch.Tensor) -> torch.Tensor:
        """The scalar at every position: (B, T) ids -> (B, T)."""
        return self.score_head(self.hidden_states(idx)).squeeze(-1)  # (B, T, 1) -> (B, T)

    def score_at(self, idx: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
        """Each row's score at position end[b] (its end-of-turn token): (B,)."""
        return self.scores(idx).gather(1, end[:, None]).squeeze(1)
