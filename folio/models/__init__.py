"""Models: batches of token ids -> logits (and a loss).

The configs import eagerly (they need no torch); the model classes import on
first use, so `from folio.models import GPTConfig` (what the CLI's flags are
made from) stays cheap while `from folio.models import GPT` works as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from folio.errors import FolioError
from folio.lazy import lazy_exports
from folio.models.config import (
    BigramConfig,
    GPTConfig,
    ModelConfig,
    PolicyValueConfig,
    RewardModelConfig,
    model_config_from_dict,
)

if TYPE_CHECKING:
    from torch import nn

    from folio.models.bigram import BigramLanguageModel
    from folio.models.gpt import GPT
    from folio.models.reward import PolicyValueModel, RewardModel

_LAZY = {
    "GPT": "folio.models.gpt",
    "BigramLanguageModel": "folio.models.bigram",
    "PolicyValueModel": "folio.models.reward",
    "RewardModel": "folio.models.reward",
}
"""The model classes, by the module that defines them (imported on first use: they need torch)."""


__getattr__ = lazy_exports(__name__, globals(), _LAZY)


def build_model(config: BigramConfig | GPTConfig) -> nn.Module:
    """The model a config describes, freshly initialised."""
    from folio.models.bigram import BigramLanguageModel
    from folio.models.gpt import GPT
    from folio.models.reward import PolicyValueModel, RewardModel

    if config.vocab_size <= 0:
        raise FolioError("model config: vocab_size is not set (it comes from the dataset)")
    if isinstance(config, BigramConfig):
        return BigramLanguageModel(config)
    if isinstance(config, PolicyValueConfig):
        return PolicyValueModel(config)
    if isinstance(config, RewardModelConfig):
        return RewardModel(config)
    return GPT(config)


def parameter_shapes(config: BigramConfig | GPTConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape in the model a config describes, allocating nothing.

    The model is built on PyTorch's meta device, where tensors have shapes but
    no storage. A parameter shared by two modules (tied weights) is listed once,
    under its first name, as `folio.checkpoint.clean_state_dict` saves it.
    """
    from folio.models.meta import meta_model

    model = meta_model(build_model, config)
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


__all__ = [
    "GPT",
    "GPTConfig",
    "ModelConfig",
    "PolicyValueModel",
    "PolicyValueConfig",
    "RewardModel",
    "RewardModelConfig",
    "BigramConfig",
    "BigramLanguageModel",
    "build_model",
    "model_config_from_dict",
    "parameter_shapes",
]
