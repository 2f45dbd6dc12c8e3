"""Character-level tokenizer, as in the video: every distinct character is a token.

The vocabulary is the sorted set of characters in the training text. It is
stored as JSON (a list of characters), never pickled, in the dataset and in
every checkpoint, so a run directory can always decode its own samples.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from folio.errors import FolioError


def _show(ch: str) -> str:
    """A character as a user can read it in an error message."""
    return repr(ch) if ch.isprintable() and ch != " " else f"U+{ord(ch):04X} {ch!r}"


class CharTokenizer:
    """Maps each character of a fixed vocabulary to its index and back."""

    kind = "char"

    def __init__(self, chars: Iterable[str]) -> None:
        chars = list(chars)
        if not chars:
            raise FolioError("a character tokenizer needs at least one character")
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise FolioError("a character vocabulary must list distinct single characters")
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """Build the vocabulary from every character that occurs in `text`."""
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    @property
    def token_dtype(self) -> np.dtype:
        """The smallest unsigned dtype that holds every id (uint16, else uint32)."""
        return np.dtype(np.uint16) if self.vocab_size <= 2**16 else np.dtype(np.uint32)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            unknown = sorted({c for c in text if c not in self.stoi})
            shown = ", ".join(_show(c) for c in unknown[:10])
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            raise FolioError(
                f"text contains {len(unknown)} character(s) outside the vocabulary: {shown}{more}"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        bad = next((i for i in ids if not 0 <= i < len(self.chars)), None)
        if bad is not None:  # checked, since a negative index would silently wrap around
            raise FolioError(f"token id {bad} out of range for a vocabulary of {self.vocab_size}")
        return "".join(self.chars[i] for i in ids)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "chars": self.chars}


def tokenizer_from_dict(d: dict[str, Any]) -> CharTokenizer:
    """Rebuild a tokenizer from its JSON form (as written by `to_dict`)."""
    kind = d.get("kind") if isinstance(d, dict) else None
    if kind == "char":
        chars = d.get("chars")
        if not isinstance(chars, list) or not all(isinstance(c, str) for c in chars):
            raise FolioError("tokenizer JSON is malformed: 'chars' must be a list of strings")
        return CharTokenizer(chars)
    raise FolioError(f"unknown tokenizer kind {kind!r} (this Folio knows: 'char')")
