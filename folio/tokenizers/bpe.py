"""Byte-level BPE tokenizer, GPT-2 style, on Hugging Face `tokenizers`.

Text is split into pieces with GPT-2's pre-tokenization regex, each piece is
read as UTF-8 bytes (every byte is a token of the base alphabet, so no text is
ever unknown), and byte pairs are merged as Sennrich et al. 2016 ("Neural
Machine Translation of Rare Words with Subword Units") learn them; GPT-2
(Radford et al. 2019) runs BPE on bytes. The Rust library trains and encodes
(`encode_batch` uses every core); Folio wraps it with the interface of
`CharTokenizer`.

The whole tokenizer is stored as its `tokenizer.json` text inside Folio's JSON
(never pickled), in the dataset and in every checkpoint.

Special tokens (`<|endoftext|>`) are only ever inserted by Folio, between
documents: text that happens to contain "<|endoftext|>" is encoded as ordinary
bytes, so encode then decode returns any text exactly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from folio.errors import FolioError

EOT = "<|endoftext|>"
N_BYTES = 256  # the base alphabet: one token per byte value


def _byte_level(tok: Tokenizer) -> Tokenizer:
    """GPT-2's byte-level pre-tokenizer (its regex, no prefix space) and decoder."""
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


class BPETokenizer:
    """Byte-level BPE: text -> UTF-8 bytes -> merged byte pairs, and back."""

    kind = "bpe"

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        # Special tokens are matched in text only when Folio adds them itself.
        self.tokenizer.encode_special_tokens = True
        self.special_ids = sorted(
            i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special
        )

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        special_tokens: Iterable[str] = (EOT,),
        length: int | None = None,
        show_progress: bool = False,
    ) -> BPETokenizer:
        """Learn merges on `texts` until the vocabulary has `vocab_size` tokens.

        The vocabulary is the 256 bytes, then the special tokens, then merges;
        a corpus too small to supply enough merges gives a smaller vocabulary.
        """
        special_tokens = list(special_tokens)
        smallest = N_BYTES + len(special_tokens)
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
            raise FolioError(f"--vocab-size must be an integer, got {vocab_size!r}")
        if vocab_size < smallest:
            raise FolioError(
                f"--vocab-size {vocab_size} is too small for byte-level BPE: it needs at least "
                f"{smallest} (256 bytes + {len(special_tokens)} special token(s))"
            )
        tok = _byte_level(Tokenizer(models.BPE()))
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=special_tokens,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=show_progress,
        )
        tok.train_from_iterator(texts, trainer, length=length)
        return cls(tok)

    @classmethod
    def from_gpt2_files(cls, directory: str | Path) -> BPETokenizer:
        """GPT-2's own tokenizer from a local `vocab.json` and `merges.txt` (no download)."""
        directory = Path(directory)
        vocab, merges = directory / "vocab.json", directory / "merges.txt"
        for f in (vocab, merges):
            if not f.is_file():
                raise FolioError(
                    f"{f}: not found (--tokenizer gpt2 needs vocab.json and merges.txt)"
                )
        try:
            model = models.BPE.from_file(str(vocab), str(merges))
        except Exception as e:  # the Rust side raises plain Exceptions for bad files
            raise FolioError(
                f"{directory}: cannot read GPT-2 vocab.json/merges.txt ({e})"
            ) from None
        tok = _byte_level(Tokenizer(model))
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        missing = [c for c in alphabet if tok.token_to_id(c) is None]
        if missing:
            raise FolioError(
                f"{vocab}: not a byte-level vocabulary ({len(missing)} of the 256 byte tokens missing)"
            )
        if tok.token_to_id(EOT) is not None:
            tok.add_special_tokens([EOT])  # already in vocab.json: keeps its id (50256)
        return cls(tok)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BPETokenizer:
        spec = d.get("tokenizer")
        try:
            return cls(Tokenizer.from_str(json.dumps(spec)))
        except Exception as e:
            raise FolioError(f"tokenizer JSON is malformed: not a BPE tokenizer ({e})") from None

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def token_dtype(self) -> np.dtype:
        """The smallest unsigned dtype that holds every id (uint16, else uint32)."""
        return np.dtype(np.uint16) if self.vocab_size <= 2**16 else np.dtype(np.uint32)

    @property
    def eot_id(self) -> int | None:
        """The id of `<|endoftext|>`, the document separator, if the vocabulary has it."""
        return self.tokenizer.token_to_id(EOT)

    def special_token_id(self, name: str) -> int | None:
        """The id of special token `name`, or None if this vocabulary lacks it."""
        i = self.tokenizer.token_to_id(name)
        return i if i in self.special_ids else None

    def with_tokens(self, specials: Iterable[str] = ()) -> BPETokenizer:
        """This tokenizer with the missing `specials` appended as special tokens (old ids unchanged).

        Every byte is already a token, so no text needs new entries.
        """
        tok = Tokenizer.from_str(self.tokenizer.to_str())
        missing = [s for s in specials if self.special_token_id(s) is None]
        taken = [s for s in missing if tok.token_to_id(s) is not None]
        if taken:
            raise FolioError(f"{taken[0]!r} is already an ordinary token of this BPE vocabulary")
        tok.add_special_tokens(missing)
        return BPETokenizer(tok)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode many texts at once, in parallel (Rust threads), without character offsets."""
        encoded = self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        return [e.ids for e in encoded]

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        bad = next((i for i in ids if not 0 <= i < self.vocab_size), None)
        if bad is not None:
            raise FolioError(f"token id {bad} out of range for a vocabulary of {self.vocab_size}")
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def token_byte_lengths(self) -> np.ndarray:
        """UTF-8 bytes behind each token id; 0 for special tokens, which stand for no text.

        In a byte-level vocabulary each character of a token's string is one byte.
        """
        lengths = np.zeros(self.vocab_size, dtype=np.int64)
        for token, i in self.tokenizer.get_vocab(with_added_tokens=True).items():
            lengths[i] = len(token)
        lengths[self.special_ids] = 0
        return lengths

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "tokenizer": json.loads(self.tokenizer.to_str())}


# A place where GPT-2's regex always splits: before a space or newline that
# follows a non-space character. No alternative of the regex matches a
# non-space followed by a space, and the only look-ahead, `\s+(?!\S)`, looks
# at whitespace, which cannot reach across such a place. Python's `\S` leaves
# out every character str.isspace accepts, more than the regex's `\s` does, so
# the rule errs on the safe side.
_CUT = re.compile(r"(?<=\S)[\n ]")


def iter_pieces(text: str, size: int) -> Iterator[str]:
    """`text` cut into pieces of about `size` characters that encode exactly as the whole does.

    Each cut falls at the first place, `size` or more characters on, where
    GPT-2's regex always splits (before a space or newline that follows a
    non-space character); BPE never merges across its splits, so the
    concatenated ids equal those of the whole text. Text with no such place
    stays one piece.
    """
    start = 0
    while len(text) - start > size:
        cut = _CUT.search(text, start + size)
        if cut is None:
            break
        yield text[start : cut.start()]
        start = cut.start()
    yield text[start:]
