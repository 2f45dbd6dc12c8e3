"""Folio: a GPT language model built from scratch, following "Let's build GPT".

The Python API mirrors the CLI:

    from folio import GPT, GPTConfig
    model = GPT(GPTConfig(vocab_size=65))
"""

from folio.errors import FolioError
from folio.models import GPT, BigramConfig, BigramLanguageModel, GPTConfig, build_model
from folio.tokenizers import CharTokenizer

__version__ = "0.1.0"

__all__ = [
    "GPT",
    "GPTConfig",
    "BigramConfig",
    "BigramLanguageModel",
    "CharTokenizer",
    "FolioError",
    "build_model",
]
