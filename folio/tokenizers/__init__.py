"""Tokenizers: text -> integer ids -> text."""

from typing import Any

from folio.errors import FolioError
from folio.tokenizers.bpe import BPETokenizer
from folio.tokenizers.char import CharTokenizer
from folio.tokenizers.char import tokenizer_from_dict as _char_from_dict

Tokenizer = CharTokenizer | BPETokenizer


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from its JSON form (as written by its `to_dict`)."""
    kind = d.get("kind") if isinstance(d, dict) else None
    if kind == "char":
        return _char_from_dict(d)
    if kind == "bpe":
        return BPETokenizer.from_dict(d)
    raise FolioError(f"unknown tokenizer kind {kind!r} (this Folio knows: 'char', 'bpe')")


def check_same_tokenizer(a: Tokenizer, b: Tokenizer, message: str) -> None:
    """Refuse (FolioError `message`) two tokenizers that would map text to different ids."""
    if a.to_dict() != b.to_dict():
        raise FolioError(message)


__all__ = [
    "BPETokenizer",
    "check_same_tokenizer",
    "CharTokenizer",
    "Tokenizer",
    "tokenizer_from_dict",
]
