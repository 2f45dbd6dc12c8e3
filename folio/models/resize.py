"""Growing a trained model's vocabulary, for fine-tuning on text with new tokens.

Notation: V old vocabulary size, V' new vocabulary size, C channels (n_embd).

Fine-tuning a Shakespeare character model on task conversations needs
characters it never saw ("+", "=") and the chat template's turn tokens. The
tokenizer is extended by appending them (old ids unchanged), and the model's
token embedding `wte` and head `lm_head` get V' - V new rows. Everything else
is copied, so on a sequence of old tokens the model computes exactly what it
did, and its logits for old tokens are the old logits.

How the new rows start (following Hewitt, 2021, "Initializing New Word
Embeddings for Pretrained Language Models"): each new row of `wte` and of
`lm_head` is the mean of the old rows of that matrix, plus a little Gaussian
noise, `noise` times the old rows' standard deviation, so that new tokens are
not all identical. With the head's new rows at the mean, a new token's logit
is close to the average old logit, below the likely tokens', so the extended
model's next-token distribution over old tokens barely moves (each new token
takes about as much probability as an average old token would). When the model
ties `lm_head` to `wte`, the new rows are shared and the tie is kept.

The bigram model's (V, V) table grows in both directions the same way: new
rows (new tokens as input) are the mean row, new columns (logits of new
tokens) the mean column.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from folio.models.bigram import BigramLanguageModel
from folio.models.config import BigramConfig, GPTConfig
from folio.models.gpt import GPT


def _mean_rows(
    old: torch.Tensor, n_new: int, noise: float, generator: torch.Generator | None
) -> torch.Tensor:
    """n_new rows: the mean of `old`'s rows plus noise * their std. (V, C) -> (n_new, C)."""
    mean = old.mean(dim=0, keepdim=True)  # (1, C)
    std = old.std().item() if old.numel() > 1 else 0.0
    jitter = torch.randn(n_new, old.shape[1], generator=generator, dtype=old.dtype)
    return mean + noise * std * jitter.to(old.device)  # (n_new, C)


def _grown(old: torch.Tensor, new_rows: torch.Tensor) -> torch.Tensor:
    return torch.cat([old, new_rows.to(old.dtype)], dim=0)  # (V, C) + (n_new, C) -> (V', C)


@torch.no_grad()
def resize_vocab(
    model: nn.Module,
    new_vocab_size: int,
    noise: float = 0.01,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """A copy of `model` whose vocabulary has `new_vocab_size` tokens, the first V unchanged.

    New rows start at the mean of the old rows plus `noise` times their
    standard deviation of Gaussian noise (drawn from `generator`); see the
    module docstring. The input model is left as it was; the copy is on the
    same device, in the same dtype and train/eval mode.
    """
    config = model.config
    old_size = config.vocab_size
    if isinstance(new_vocab_size, bool) or not isinstance(new_vocab_size, int):
        raise ValueError(f"new_vocab_size must be an integer, got {new_vocab_size!r}")
    if new_vocab_size < old_size:
        raise ValueError(f"cannot shrink a vocabulary of {old_size} to {new_vocab_size}")
    n_new = new_vocab_size - old_size
    if isinstance(model, BigramLanguageModel):
        new_model = BigramLanguageModel(BigramConfig(new_vocab_size, config.block_size))
        old = model.token_embedding_table.weight  # (V, V)
        cols = _grown(old.T, _mean_rows(old.T, n_new, noise, generator)).T  # (V, V')
        table = _grown(cols, _mean_rows(cols, n_new, noise, generator))  # (V', V')
        new_model.token_embedding_table.weight.copy_(table)
    elif isinstance(model, GPT):
        new_config = GPTConfig(**{**config.to_dict(), "vocab_size": new_vocab_size})
        new_model = GPT(new_config)
        state = copy.copy(model.state_dict())
        wte = state["transformer.wte.weight"]  # (V, C)
        state["transformer.wte.weight"] = _grown(wte, _mean_rows(wte, n_new, noise, generator))
        if config.tie_weights:
            state["lm_head.weight"] = state["transformer.wte.weight"]
        else:
            head = state["lm_head.weight"]  # (V, C)
            state["lm_head.weight"] = _grown(head, _mean_rows(head, n_new, noise, generator))
        new_model.load_state_dict(state)
    else:
        raise ValueError(f"cannot resize the vocabulary of a {type(model).__name__}")
    p = next(model.parameters())
    new_model.to(device=p.device, dtype=p.dtype)
    new_model.train(model.training)
    return new_model
