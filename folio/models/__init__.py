"""Models: batches of token ids -> logits (and a loss)."""

from __future__ import annotations

import torch
from torch import nn

from folio.errors import FolioError
from folio.models.bigram import BigramLanguageModel
from folio.models.config import (
    BigramConfig,
    GPTConfig,
    ModelConfig,
    RewardModelConfig,
    model_config_from_dict,
)
from folio.models.gpt import GPT
from folio.models.reward import RewardModel


def build_model(config: BigramConfig | GPTConfig) -> nn.Module:
    """The model a config describes, freshly initialised."""
    if config.vocab_size <= 0:
        raise FolioError("model config: vocab_size is not set (it comes from the dataset)")
    if isinstance(config, BigramConfig):
        return BigramLanguageModel(config)
    if isinstance(config, RewardModelConfig):
        return RewardModel(config)
    return GPT(config)


def parameter_shapes(config: BigramConfig | GPTConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape in the model a config describes, allocating nothing.

    The model is built on PyTorch's meta device, where tensors have shapes but
    no storage. A parameter shared by two modules (tied weights) is listed once,
    under its first name, as `folio.checkpoint.clean_state_dict` saves it.
    """
    with torch.device("meta"):
        model = build_model(config)
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


__all__ = [
    "GPT",
    "GPTConfig",
    "ModelConfig",
    "RewardModel",
    "RewardModelConfig",
    "BigramConfig",
    "BigramLanguageModel",
    "build_model",
    "model_config_from_dict",
    "parameter_shapes",
]
