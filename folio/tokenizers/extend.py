"""Extending a tokenizer for fine-tuning: new tokens appended, old ids kept.

A model trained with a tokenizer can only be fine-tuned with another one that
gives every old token the same id; the new tokens then get new rows in the
model (`folio.models.resize.resize_vocab`). A character tokenizer extended
for new text appends the characters it lacks, in sorted order; a byte-level
BPE tokenizer can already encode any text and is returned unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from folio.errors import FolioError
from folio.tokenizers.bpe import BPETokenizer
from folio.tokenizers.char import CharTokenizer

AnyTokenizer = CharTokenizer | BPETokenizer


def vocabulary(tokenizer: AnyTokenizer) -> dict[str, int]:
    """Every token's string and its id, special tokens included."""
    if isinstance(tokenizer, CharTokenizer):
        return {c: i for i, c in enumerate(tokenizer.chars)}  # characters and specials
    return dict(tokenizer.tokenizer.get_vocab(with_added_tokens=True))


def added_tokens(old: AnyTokenizer, new: AnyTokenizer) -> list[str]:
    """The tokens `new` appends to `old`, in id order; a FolioError if `new` does not extend `old`.

    `new` extends `old` when both are the same kind and every token of `old`
    has the same id in `new`; the new tokens then hold the ids from
    old.vocab_size on.
    """
    if old.kind != new.kind:
        raise FolioError(
            f"a {new.kind} tokenizer cannot extend a {old.kind} tokenizer (the ids would change)"
        )
    old_vocab, new_vocab = vocabulary(old), vocabulary(new)
    moved = [t for t, i in old_vocab.items() if new_vocab.get(t) != i]
    if moved:
        raise FolioError(
            f"the new tokenizer does not extend the old one: {len(moved)} old token(s) "
            f"changed id or are missing, e.g. {moved[0]!r}"
        )
    extra = sorted((i, t) for t, i in new_vocab.items() if t not in old_vocab)
    if [i for i, _ in extra] != list(range(old.vocab_size, new.vocab_size)):
        raise FolioError("the new tokenizer's extra tokens do not follow the old ids")
    return [t for _, t in extra]


def extend_for_text(tokenizer: AnyTokenizer, texts: Iterable[str]) -> AnyTokenizer:
    """A tokenizer that encodes every text of `texts`: `tokenizer` with the characters it lacks.

    A character tokenizer gets the missing characters appended in sorted
    order (old ids and special tokens unchanged); it is returned as is when
    nothing is missing. Add the chat tokens with
    `folio.tokenizers.chat.with_chat_tokens`.
    A byte-level BPE tokenizer encodes any text and is returned as is.
    """
    if isinstance(tokenizer, BPETokenizer):
        return tokenizer
    missing: set[str] = set()
    for text in texts:
        missing.update(c for c in set(text) if c not in tokenizer.stoi)
    if not missing:
        return tokenizer
    return tokenizer.with_tokens(chars=sorted(missing))


def token_id_map(source: AnyTokenizer, target: AnyTokenizer) -> np.ndarray | None:
    """lut[i] = the target's id for the source's token i; None when every id is the same.

    Reads a dataset tokenized with `source` in the ids of a model trained with
    `target`. Character tokenizers are matched character by character (and
    special token by special token), so a vocabulary sorted differently maps
    too; a BPE target must extend the source, since other merges would cut the
    same text into other tokens. A FolioError when the target cannot read a
    source token.
    """
    if source.kind != target.kind:
        raise FolioError(f"a {target.kind} tokenizer cannot read {source.kind} token ids")
    if isinstance(source, BPETokenizer):
        added_tokens(source, target)  # refuses anything but an extension
        return None
    theirs, ours = vocabulary(source), vocabulary(target)
    lost = [t for t in theirs if t not in ours]
    if lost:
        raise FolioError(f"the tokenizer lacks {len(lost)} of the data's tokens, e.g. {lost[0]!r}")
    lut = np.empty(source.vocab_size, dtype=np.int64)
    for token, i in theirs.items():
        lut[i] = ours[token]
    return None if np.array_equal(lut, np.arange(source.vocab_size)) else lut
