"""Folio: a GPT language model built from scratch, following "Let's build GPT".

The Python API mirrors the CLI:

    from folio import GPT, GPTConfig
    model = GPT(GPTConfig(vocab_size=65))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from folio.errors import FolioError
from folio.lazy import lazy_exports

if TYPE_CHECKING:
    from folio.models import GPT, BigramConfig, BigramLanguageModel, GPTConfig, build_model
    from folio.tokenizers import CharTokenizer

__version__ = "0.1.0"

_LAZY = {
    "GPT": "folio.models",
    "GPTConfig": "folio.models",
    "BigramConfig": "folio.models",
    "BigramLanguageModel": "folio.models",
    "build_model": "folio.models",
    "CharTokenizer": "folio.tokenizers",
}
"""The public API, imported on first use: `import folio.cli` must not pay for torch."""


__getattr__ = lazy_exports(__name__, globals(), _LAZY)


__all__ = [
    "GPT",
    "GPTConfig",
    "BigramConfig",
    "BigramLanguageModel",
    "CharTokenizer",
    "FolioError",
    "build_model",
]
