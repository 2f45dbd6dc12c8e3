"""Tokenizers: text -> integer ids -> text."""

from folio.tokenizers.char import CharTokenizer, tokenizer_from_dict

__all__ = ["CharTokenizer", "tokenizer_from_dict"]
