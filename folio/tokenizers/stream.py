"""Token ids -> text, one token at a time, as a chat or a server streams it.

Two things make this harder than calling `decode` on each new token:

- A byte-level BPE token can hold part of a multi-byte character (the first
  two bytes of an emoji, say). Decoding it alone gives U+FFFD, and printing
  that could not be taken back. `TextStream` therefore works on bytes: each
  token's raw bytes go through an incremental UTF-8 decoder, which holds back
  an unfinished character until its last byte arrives. Bytes that can never
  become UTF-8 still come out as U+FFFD, as `decode` would give them.
- A stop string may arrive across several tokens. Text that could still be
  the beginning of a stop string is held back until the next tokens settle
  it, so a stop string is never shown, not even in part.

`token_bytes` gives the raw bytes of one token: for byte-level BPE, its
characters mapped back through GPT-2's byte-to-character table; for special
tokens and other tokenizers, the UTF-8 of its decoded text.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable
from typing import Any


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level table, inverted: the character standing for each byte -> the byte.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes (controls,
    space, soft hyphen...) are shifted to characters from U+0100 on, in order,
    so that every byte has a visible character.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table, shifted = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + shifted)] = b
            shifted += 1
    return table


_BYTE_OF = _byte_level_alphabet()


class TokenBytes:
    """The raw bytes of every token of a tokenizer, computed once."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._table: list[bytes] | None = None
        if getattr(tokenizer, "kind", None) == "bpe":
            vocab = tokenizer.tokenizer.get_vocab(with_added_tokens=True)
            special = set(tokenizer.special_ids)
            table = [b""] * tokenizer.vocab_size
            for piece, i in vocab.items():
                if i in special or any(c not in _BYTE_OF for c in piece):
                    table[i] = piece.encode("utf-8")  # special tokens stand for their own text
                else:
                    table[i] = bytes(_BYTE_OF[c] for c in piece)
            self._table = table

    def __call__(self, token_id: int) -> bytes:
        """The bytes of one token (a partial character for some byte-level tokens)."""
        if self._table is not None:
            return self._table[token_id]
        return self.tokenizer.decode([token_id]).encode("utf-8")


def token_bytes(tokenizer: Any, token_id: int) -> bytes:
    """The raw bytes of one token; see `TokenBytes` to look up many."""
    return TokenBytes(tokenizer)(token_id)


class TextStream:
    """Text released token by token: never half a character, never any part of a stop string.

    `feed` takes one token id and returns the text that is now settled
    (possibly ''). `finish` releases what was held back once generation has
    ended without a stop string. After a stop string is found, `done` is true,
    `text` ends just before it and later tokens are ignored.
    """

    def __init__(self, token_bytes: TokenBytes, stop: Iterable[str] = ()) -> None:
        self.token_bytes = token_bytes
        self.stop = [s for s in stop if s]
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text, self.released, self.done = "", 0, False

    def feed(self, token_id: int) -> str:
        """Add one token; return the newly settled text."""
        if self.done:
            return ""
        self.text += self._utf8.decode(self.token_bytes(token_id))
        return self._release(final=False)

    def finish(self) -> str:
        """Release everything held back (generation ended without a stop string)."""
        if self.done:
            return ""
        self.text += self._utf8.decode(b"", final=True)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        # A stop string can only begin at or after `released`: the text before
        # it was already checked and shown.
        hits = [i for s in self.stop if (i := self.text.find(s, self.released)) >= 0]
        if hits:
            end, self.done = min(hits), True
            self.text = self.text[:end]
        else:
            end = len(self.text) - (0 if final else self._undecided())
        piece, self.released = self.text[self.released : end], end
        return piece

    def _undecided(self) -> int:
        """Length of the longest unreleased suffix that begins some stop string."""
        tail = self.text[self.released :]
        for n in range(min(len(tail), max((len(s) for s in self.stop), default=0)), 0, -1):
            if any(s.startswith(tail[-n:]) for s in self.stop):
                return n
        return 0
