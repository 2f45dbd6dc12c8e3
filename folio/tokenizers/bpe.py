"""Byte-level BPE tokenizer, GPT-2 style, on Hugging Face `tokenizers`.

Text is split into pieces with GPT-2's pre-tokenization regex, a piece longer
than `MAX_PIECE_CHARS` characters is cut into pieces of that many, each piece
is read as UTF-8 bytes (every byte is a token of the base alphabet, so no text is
ever unknown), and byte pairs are merged as Sennrich et al. 2016 ("Neural
Machine Translation of Rare Words with Subword Units") learn them; GPT-2
(Radford et al. 2019) runs BPE on bytes. The Rust library trains and encodes
(`encode_batch` uses every core); Folio wraps it with the interface of
`CharTokenizer`.

The cap on a piece's length is what production trainers do too (SentencePiece
bounds its pieces and sentences): GPT-2's regex makes any run of letters one
piece, so random DNA or a paragraph of Chinese, which has no spaces, reaches
the trainer as a single piece of millions of characters, and merging inside one
piece costs time quadratic in its length (1M characters of DNA took over
5 minutes to train at vocabulary 512; see BENCHMARKS.md). Capped, the time is
linear in the corpus. The cap is part of the tokenizer's pre-tokenizer, so
training, encoding and the stored tokenizer all cut the same way, and decoding
(which concatenates bytes) is unaffected. GPT-2's own tokenizer (read from its
files) is left uncapped, so its ids stay GPT-2's.

Training runs in a worker thread while the calling thread waits in short
slices: the Rust trainer releases the GIL but never returns to Python while
it merges, so Ctrl-C would otherwise wait for the whole training.

The whole tokenizer is stored as its `tokenizer.json` text inside Folio's JSON
(never pickled), in the dataset and in every checkpoint.

Special tokens (`<|endoftext|>`) are only ever inserted by Folio, between
documents: text that happens to contain "<|endoftext|>" is encoded as ordinary
bytes, so encode then decode returns any text exactly.
"""

from __future__ import annotations

import functools
import json
import re
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from folio.errors import FolioError

EOT = "<|endoftext|>"
N_BYTES = 256  # the base alphabet: one token per byte value
MAX_PIECE_CHARS = 256  # longest pre-tokenized piece of a trained tokenizer, in characters
# GPT-2's pre-tokenization regex, as the ByteLevel pre-tokenizer applies it.
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_POLL_S = 0.1  # how often a thread waiting for the trainer looks for Ctrl-C


def byte_level_pre_tokenizer(max_piece_chars: int | None = MAX_PIECE_CHARS):
    """GPT-2's pre-tokenizer (its regex, no prefix space), each piece cut to `max_piece_chars`.

    None: GPT-2's exactly (uncapped). Capped, it is GPT-2's regex, then every
    piece longer than the cap cut into runs of `max_piece_chars` characters from
    its start, then the byte-level mapping; a piece within the cap is unchanged.
    """
    if max_piece_chars is None:
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if isinstance(max_piece_chars, bool) or not isinstance(max_piece_chars, int):
        raise FolioError(f"max_piece_chars must be an integer, got {max_piece_chars!r}")
    if max_piece_chars < 1:
        raise FolioError(f"max_piece_chars must be at least 1, got {max_piece_chars}")
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(GPT2_PATTERN), behavior="isolated"),
            # [\s\S] is any character, newlines included (a bare "." is not).
            pre_tokenizers.Split(Regex(rf"[\s\S]{{1,{max_piece_chars}}}"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _byte_level(tok: Tokenizer, max_piece_chars: int | None) -> Tokenizer:
    """The byte-level pre-tokenizer (see `byte_level_pre_tokenizer`) and decoder."""
    tok.pre_tokenizer = byte_level_pre_tokenizer(max_piece_chars)
    tok.decoder = decoders.ByteLevel()
    return tok


class _Stopped(Exception):
    """Raised into the trainer's input when the waiting thread was interrupted."""


def _train_interruptibly(
    tok: Tokenizer, texts: Iterable[str], trainer: Any, length: int | None
) -> None:
    """`tok.train_from_iterator` in a worker thread, so Ctrl-C reaches the caller at once.

    The calling thread waits in slices of `_POLL_S` seconds; on KeyboardInterrupt
    (or any exception there) the input stops at the next text the trainer asks
    for, and the exception propagates. The worker is a daemon: a trainer already
    past its input finishes its merges in the background, or ends with the
    process.
    """
    stop = threading.Event()
    outcome: dict[str, BaseException] = {}
    items = iter(texts)

    def feed() -> Iterator[str]:
        while True:
            if stop.is_set():
                raise _Stopped
            try:
                text = next(items)
            except StopIteration:
                return
            yield text

    def work() -> None:
        try:
            tok.train_from_iterator(feed(), trainer, length=length)
        except BaseException as e:  # handed to the waiting thread
            outcome["error"] = e

    worker = threading.Thread(target=work, name="folio-bpe-train", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(_POLL_S)
    except BaseException:
        stop.set()
        worker.join(_POLL_S)  # usually enough for the input to stop cleanly
        raise
    if "error" in outcome:
        raise outcome["error"]


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
        max_piece_chars: int | None = MAX_PIECE_CHARS,
    ) -> BPETokenizer:
        """Learn merges on `texts` until the vocabulary has `vocab_size` tokens.

        The vocabulary is the 256 bytes, then the special tokens, then merges;
        a corpus too small to supply enough merges gives a smaller vocabulary.
        Pre-tokenized pieces are cut to `max_piece_chars` characters, in
        training and in every later encode (None: uncapped, GPT-2's pieces,
        and training time quadratic in the longest). Ctrl-C stops it within a
        fraction of a second.
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
        tok = _byte_level(Tokenizer(models.BPE()), max_piece_chars)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=special_tokens,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=show_progress,
        )
        _train_interruptibly(tok, texts, trainer, length)
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
        tok = _byte_level(Tokenizer(model), None)  # uncapped: GPT-2's ids exactly
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
    def pre_tokenizer(self) -> Any:
        """The pre-tokenizer that splits text into the pieces BPE merges within."""
        return self.tokenizer.pre_tokenizer

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

    def min_tokens(self, text: str) -> int:
        """A lower bound on len(self.encode(text)), found without encoding the text.

        No token covers more bytes than the longest token of the vocabulary, so
        a text of B UTF-8 bytes takes at least B / longest tokens. (The reverse
        bound does not hold: one token may cover many characters.) A tokenizer
        that rewrites text before splitting it (a normalizer) or has an unknown
        token, neither of which Folio builds, gets the trivial bound 0.
        """
        longest = self._longest_token_bytes
        if longest is None:
            return 0
        return -(-len(text.encode("utf-8", "surrogatepass")) // longest)

    @functools.cached_property
    def _longest_token_bytes(self) -> int | None:
        """The most text bytes one token stands for; None when no bound is sound."""
        tok = self.tokenizer
        if tok.normalizer is not None or getattr(tok.model, "unk_token", None) is not None:
            return None
        longest = int(self.token_byte_lengths().max(initial=1))
        for added in tok.get_added_tokens_decoder().values():  # raw text, not byte-level
            if not added.special:
                longest = max(longest, len(added.content.encode("utf-8")))
        return max(longest, 1)

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


_CUT_TRIES = 8  # piece boundaries tried, from the last one back, before giving up
_LOOKAHEAD = 3  # characters the regex may read from a match's start: 're, 've, 'll


def _stable_cut(pre_tokenizer: Any, text: str) -> int:
    """A place in `text` where it can be cut and both sides encoded apart, or 0 if none is found.

    `text` must begin where a pre-tokenized piece begins. The regex is matched
    left to right and looks back never; from where a match starts it reads at
    most three characters to decide on a contraction ('re), and after a run of
    letters, digits or spaces one more. So every piece that starts three or
    more characters before the end of `text`, and ends before its last piece,
    is the same whatever text follows. A boundary b between two such pieces is
    a place to cut when
    - the text from b, matched afresh, gives the pieces the whole text gives
      from b: true at the start of a regex match, and inside a match cut by the
      length cap too, unless the rest begins with an apostrophe (a contraction
      such as 's would then match on its own);
    - the text before b, alone, gives the pieces it gives in the whole text:
      checked by pre-tokenizing it (a trailing space or newline may join
      differently at the end of the text, so those boundaries are skipped).
    """
    pieces = [offsets for _, offsets in pre_tokenizer.pre_tokenize_str(text)]
    for k in range(len(pieces) - 1, max(len(pieces) - 1 - _CUT_TRIES, 0), -1):
        b = pieces[k][0]
        if b > len(text) - _LOOKAHEAD or text[b] == "'" or text[b - 1].isspace():
            continue
        if [o for _, o in pre_tokenizer.pre_tokenize_str(text[:b])] == pieces[:k]:
            return b
    return 0


def iter_pieces(text: str, size: int, pre_tokenizer: Any = None) -> Iterator[str]:
    """`text` cut into pieces of about `size` characters that encode exactly as the whole does.

    Each cut falls at the first place, `size` or more characters on, where
    GPT-2's regex always splits (before a space or newline that follows a
    non-space character); BPE never merges across its splits, so the
    concatenated ids equal those of the whole text.

    Without such a place in the next `size` characters (DNA, Chinese, minified
    code) and given the tokenizer's `pre_tokenizer`, the cut falls instead at
    the start of the last pre-tokenized piece of the next 2 * `size` characters
    (see `_stable_cut`): with a capped pre-tokenizer no piece exceeds about
    2 * `size` characters. Otherwise the cut waits for the next safe place, and
    text with none stays one piece. `text` must begin where a piece begins (a
    document's start, or a cut made here).
    """
    start = 0
    while len(text) - start > size:
        window = start + 2 * size if pre_tokenizer is not None else len(text)
        cut = _CUT.search(text, start + size, window)
        if cut is not None:
            end = cut.start()
        else:
            end = start
            if pre_tokenizer is not None:
                end += _stable_cut(pre_tokenizer, text[start:window])
            if end == start:  # one piece fills the window: wait for the next safe place
                cut = _CUT.search(text, window)
                if cut is None:
                    break
                end = cut.start()
        yield text[start:end]
        start = end
    yield text[start:]
