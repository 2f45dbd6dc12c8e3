"""Models: batches of token ids -> logits (and a loss)."""

from __future__ import annotations

from torch import nn

from folio.models.bigram import BigramLanguageModel
from folio.models.config import BigramConfig, GPTConfig, model_config_from_dict
from folio.models.gpt import GPT


def build_model(config: BigramConfig | GPTConfig) -> nn.Module:
    """The model a config describes, freshly initialised."""
    if isinstance(config, BigramConfig):
        return BigramLanguageModel(config)
    return GPT(config)


__all__ = [
    "GPT",
    "GPTConfig",
    "BigramConfig",
    "BigramLanguageModel",
    "build_model",
    "model_config_from_dict",
]
