"""The bigram language model: the video's baseline.

Notation: B batch, T time, V vocabulary size.

Each token reads the logits for the next token straight out of a (V, V)
table; no token looks at any other. It is the floor every later model must
beat: about 2.49 val loss on tinyshakespeare.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from folio.models.config import BigramConfig


class BigramLanguageModel(nn.Module):
    """Row i of the embedding table holds the next-token logits after token i."""

    def __init__(self, config: BigramConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding_table = nn.Embedding(config.vocab_size, config.vocab_size)

    context_size = 1
    """Tokens the next prediction depends on: the last one only."""
    supports_kv_cache = False
    """Nothing to cache: no token attends to another."""

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        cache: None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, V) and, given targets, the mean cross-entropy: GPT's signature.

        `cache` is accepted for that signature and unused; `last_only` keeps the
        last position's logits (B, 1, V).
        """
        if last_only:
            idx = idx[:, -1:]  # (B, 1)
        logits = self.token_embedding_table(idx)  # (B, T) -> (B, T, V)
        if targets is None:
            return logits, None
        B, T, V = logits.shape
        loss = F.cross_entropy(logits.view(B * T, V), targets.reshape(B * T))
        return logits, loss

    @torch.no_grad()
    def generate(
        self, idx: torch.Tensor, max_new_tokens: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The video's sampling loop: append one multinomial draw at a time."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -1:])  # only the last token matters: (B, 1, V)
            probs = F.softmax(logits[:, -1, :], dim=-1)  # (B, V)
            idx_next = torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)
            idx = torch.cat((idx, idx_next), dim=1)  # (B, T + 1)
        return idx
