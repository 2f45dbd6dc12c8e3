"""Character-level tokenizer, as in the video: every distinct character is a token.

The vocabulary is the sorted set of characters in the training text. It is
stored as JSON (a list of characters), never pickled, in the dataset and in
every checkpoint, so a run directory can always decode its own samples.

A vocabulary may also hold special tokens (the chat turn markers, see
`folio/tokenizers/chat.py`): entries such as "<|end|>" that text never
encodes to. Only Folio inserts them, so a user's text that happens to
contain "<|end|>" is encoded character by character. New characters and
specials are appended after the existing entries, so the ids a trained
model knows never change.
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

    def __init__(self, chars: Iterable[str], specials: Iterable[str] = ()) -> None:
        chars, specials = list(chars), set(specials)
        if not chars:
            raise FolioError("a character tokenizer needs at least one character")
        if len(set(chars)) != len(chars) or any((len(c) != 1) != (c in specials) for c in chars):
            raise FolioError(
                "a character vocabulary must list distinct single characters "
                "(and its special tokens, each named in 'specials')"
            )
        if not specials <= set(chars):
            raise FolioError("a character vocabulary's special tokens must be among its entries")
        self.chars = chars
        """Every entry in id order: single characters, and the special tokens where added."""
        self.specials = [c for c in chars if c in specials]
        self.stoi = {c: i for i, c in enumerate(chars) if len(c) == 1}

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

    def special_token_id(self, name: str) -> int | None:
        """The id of special token `name`, or None if this vocabulary lacks it."""
        return self.chars.index(name) if name in self.specials else None

    def with_tokens(self, chars: Iterable[str] = (), specials: Iterable[str] = ()) -> CharTokenizer:
        """This vocabulary with the missing `chars` and `specials` appended (old ids unchanged)."""
        entries = list(self.chars)
        for c in [*chars, *specials]:
            if c not in entries:
                entries.append(c)
        return CharTokenizer(entries, [*self.specials, *specials])

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

    def min_tokens(self, text: str) -> int:
        """A lower bound on len(self.encode(text)), found without encoding: here exact, as
        every character is one token (text never encodes to a special token)."""
        return len(text)

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        bad = next((i for i in ids if not 0 <= i < len(self.chars)), None)
        if bad is not None:  # checked, since a negative index would silently wrap around
            raise FolioError(f"token id {bad} out of range for a vocabulary of {self.vocab_size}")
        return "".join(self.chars[i] for i in ids)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "chars": self.chars}
        if self.specials:  # absent when empty, so older vocabularies compare equal
            d["specials"] = self.specials
        return d


def tokenizer_from_dict(d: dict[str, Any]) -> CharTokenizer:
    """Rebuild a tokenizer from its JSON form (as written by `to_dict`)."""
    kind = d.get("kind") if isinstance(d, dict) else None
    if kind == "char":
        chars = d.get("chars")
        specials = d.get("specials", [])
        for key, value in (("chars", chars), ("specials", specials)):
            if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
                raise FolioError(f"tokenizer JSON is malformed: {key!r} must be a list of strings")
        return CharTokenizer(chars, specials)
    raise FolioError(f"unknown tokenizer kind {kind!r} (this Folio knows: 'char')")
