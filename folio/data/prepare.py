"""`folio prepare`: text -> tokens on disk, the way the video does it.

A dataset directory (its format is `folio.data.format`) holds
- `train.bin`, `val.bin`: token ids as raw little-endian uint16 (uint32 when the
  vocabulary has more than 65,536 tokens), read back with numpy.memmap;
- `meta.json`: the tokenizer, vocabulary size, token and byte counts, each
  split's largest token id, the source's checksum and the split.
The first (1 - val_fraction) of the tokens train, the last val_fraction
validate, as in the video. `{split}_bytes` counts the UTF-8 bytes of the text
behind each split's tokens, so `folio eval` can report bits per byte, which
compare across tokenizers.

Tokenizers: `char` (the video's), `bpe` (byte-level BPE trained on the corpus)
and `gpt2` (GPT-2's own, from local vocab.json + merges.txt). A BPE dataset is
the documents' tokens, each document followed by `<|endoftext|>`.

Everything streams, so memory does not grow with the corpus: the corpus is
read a block at a time (`Corpus.blocks`, `FileCorpus.blocks`) in two passes.
The first builds the tokenizer (the character set, or BPE trained from an
iterator) and measures the corpus (length, SHA-256); the second encodes and
appends to the token files. For BPE, blocks are recut into pieces that encode
exactly as whole documents do (`iter_pieces`) and encoded a batch at a time on
every core. The directory is built under a temporary name and renamed when
complete, so an interrupted prepare leaves no dataset that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from folio.data.corpora import Corpus, FileCorpus
from folio.data.format import (
    DATASET_FILES,
    DATASET_FORMAT,
    DATASET_VERSION,
    META_FILE,
    token_file,
)
from folio.errors import FolioError
from folio.fsutil import (
    atomic_write_json,
    check_replaceable_dir,
    fsync_file,
    replace_dir,
    scratch_dir,
)
from folio.tokenizers import BPETokenizer, CharTokenizer
from folio.tokenizers.bpe import iter_pieces

TOKENIZER_KINDS = ("char", "bpe", "gpt2")
BLOCK_CHARS = 1 << 22  # the corpus is read this many characters (bytes, from files) at a time
PIECE_CHARS = 1 << 16  # BPE encodes pieces of about this many characters
BATCH_CHARS = 1 << 20  # and this many characters of pieces at a time (bounds memory)
SPLIT_CHUNK = 1 << 22  # tokens copied or counted at a time when splitting
LONGEST_RUN = 1 << 24  # characters with no safe cut after which BPE cuts a document anyway
EXCERPT_CHARS = 300

AnyCorpus = Corpus | FileCorpus


@dataclass
class PrepareSummary:
    """What `prepare` did, for the exploration printout."""

    out_dir: Path
    characters: int
    vocab: str
    """The characters of a char vocabulary; the first merges of a BPE one."""
    vocab_size: int
    train_tokens: int
    val_tokens: int
    dtype: str
    excerpt: str
    tokenizer: str = "char"


@dataclass
class CorpusStats:
    """What a pass over the corpus measures on the way, so that no pass is spent on it alone."""

    characters: int = 0
    """Length of the corpus text (the documents joined by "\\n")."""
    documents: int = 0
    excerpt: str = ""
    """The first characters of the text."""
    hasher: Any = field(default_factory=hashlib.sha256)
    """SHA-256 of the text as UTF-8, so far."""
    complete: bool = False
    """Whether the pass reached the end of the corpus."""

    def add(self, text: str) -> None:
        self.characters += len(text)
        self.hasher.update(text.encode("utf-8"))
        if len(self.excerpt) < EXCERPT_CHARS:
            self.excerpt += text[: EXCERPT_CHARS - len(self.excerpt)]


@dataclass
class _Tokens:
    """What a tokenizing pass wrote into the temporary directory."""

    train_tokens: int
    val_tokens: int
    train_bytes: int
    val_bytes: int
    train_max_token_id: int
    val_max_token_id: int


def _split_point(corpus: AnyCorpus, n: int, val_fraction: float) -> int:
    n_train = int(n * (1.0 - val_fraction))
    if n_train < 2 or n - n_train < 2:
        raise FolioError(
            f"corpus {corpus.name!r} has only {n} tokens: too short to split into train and val"
        )
    return n_train


def _changed(corpus: AnyCorpus) -> FolioError:
    return FolioError(f"corpus {corpus.name!r} changed while it was being prepared; run it again")


def _measured(corpus: AnyCorpus, stats: CorpusStats) -> Iterator[tuple[str, bool]]:
    """`corpus.blocks`, measured into `stats` as they pass."""
    starting = False  # whether the next block starts a document after the first
    for block, last in corpus.blocks(BLOCK_CHARS):
        if starting:
            stats.add("\n")
        stats.add(block)
        stats.documents += last
        starting = last
        yield block, last
    stats.complete = True


def _text_blocks(blocks: Iterable[tuple[str, bool]]) -> Iterator[str]:
    """The corpus text (documents joined by "\\n") in blocks, for the char tokenizer."""
    starting = False
    for block, last in blocks:
        if starting:
            yield "\n"
        if block:
            yield block
        starting = last


def _char_vocabulary(corpus: AnyCorpus, stats: CorpusStats) -> CharTokenizer:
    """Pass 1 for char: every character of the text (a set per block is fast in C)."""
    chars: set[str] = set()
    for text in _text_blocks(_measured(corpus, stats)):
        chars.update(text)
    if not chars:
        raise FolioError(f"corpus {corpus.name!r} is empty")
    return CharTokenizer(sorted(chars))


def _write_char_tokens(
    corpus: AnyCorpus, tok: CharTokenizer, tmp: Path, n: int, val_fraction: float
) -> _Tokens:
    """Pass 2 for char: each block to ids through a table indexed by code point."""
    n_train = _split_point(corpus, n, val_fraction)
    unknown = np.iinfo(np.uint32).max
    table = np.full(0x110000, unknown, dtype=np.uint32)  # every code point -> its id
    table[[ord(c) for c in tok.stoi]] = np.fromiter(tok.stoi.values(), dtype=np.uint32)
    written = train_bytes = val_bytes = train_max = val_max = 0
    with open(tmp / token_file("train"), "wb") as train, open(tmp / token_file("val"), "wb") as val:
        for text in _text_blocks(corpus.blocks(BLOCK_CHARS)):
            ids = table[np.frombuffer(text.encode("utf-32-le"), dtype="<u4")]
            if int(ids.max()) == unknown:
                raise _changed(corpus)
            ids = ids.astype(tok.token_dtype)
            cut = min(max(n_train - written, 0), len(ids))
            if cut:
                ids[:cut].tofile(train)
                train_bytes += len(text[:cut].encode("utf-8"))
                train_max = max(train_max, int(ids[:cut].max()))
            if cut < len(ids):
                ids[cut:].tofile(val)
                val_bytes += len(text[cut:].encode("utf-8"))
                val_max = max(val_max, int(ids[cut:].max()))
            written += len(ids)
    if written != n:
        raise _changed(corpus)
    fsync_file(tmp / token_file("train"))
    fsync_file(tmp / token_file("val"))
    return _Tokens(n_train, n - n_train, train_bytes, val_bytes, train_max, val_max)


def _pieces(blocks: Iterable[tuple[str, bool]]) -> Iterator[tuple[str, bool]]:
    """Documents' blocks recut into pieces that encode exactly as whole documents do.

    Each piece comes with whether it ends its document. What follows the last
    safe cut of a block waits for the next block; a run of LONGEST_RUN
    characters with no safe cut (no space or newline after a non-space) is cut
    anyway, to bound memory: the one case where tokens may differ from those of
    the whole document.
    """
    carry = ""
    for block, last in blocks:
        pieces = iter_pieces(carry + block, PIECE_CHARS)
        piece = next(pieces)
        for following in pieces:
            yield piece, False
            piece = following
        if last or len(piece) > LONGEST_RUN:
            yield piece, last
            piece = ""
        carry = piece


def _corpus_pieces(corpus: AnyCorpus) -> Iterator[tuple[str, bool]]:
    """Every document in pieces, each with whether it ends its document."""
    return _pieces(corpus.blocks(BLOCK_CHARS))


def _write_bpe_tokens(
    corpus: AnyCorpus,
    tok: BPETokenizer,
    tmp: Path,
    val_fraction: float,
    progress: bool,
    stats: CorpusStats,
) -> _Tokens:
    """Encode the corpus a batch of pieces at a time into one file, then split it in two."""
    dtype, eot = tok.token_dtype, tok.eot_id
    tokens = tmp / token_file("train")  # all tokens at first; cut to the train split at the end
    n = 0
    bar = tqdm(
        total=stats.characters - max(stats.documents - 1, 0),
        unit="char",
        unit_scale=True,
        desc="encoding",
        disable=None if progress else True,
    )
    with open(tokens, "wb") as f, bar:
        batch: list[tuple[str, bool]] = []

        def flush() -> None:
            nonlocal n
            encoded = tok.encode_batch([piece for piece, _ in batch])
            for (_, last), ids in zip(batch, encoded, strict=True):
                if last and eot is not None:
                    ids.append(eot)
                np.asarray(ids, dtype=dtype).tofile(f)
                n += len(ids)
            bar.update(sum(len(p) for p, _ in batch))
            batch.clear()

        size = 0
        for piece, last in _corpus_pieces(corpus):
            batch.append((piece, last))
            size += len(piece)
            if size >= BATCH_CHARS:
                flush()
                size = 0
        flush()
    n_train = _split_point(corpus, n, val_fraction)
    lengths = tok.token_byte_lengths()
    all_ids = np.memmap(tokens, dtype=dtype, mode="r", shape=(n,))
    train_bytes = val_bytes = train_max = val_max = 0
    with open(tmp / token_file("val"), "wb") as f:
        for a in range(0, n, SPLIT_CHUNK):
            chunk = np.asarray(all_ids[a : a + SPLIT_CHUNK])
            cut = min(max(n_train - a, 0), len(chunk))
            train_bytes += int(lengths[chunk[:cut]].sum())
            val_bytes += int(lengths[chunk[cut:]].sum())
            if cut:
                train_max = max(train_max, int(chunk[:cut].max()))
            if cut < len(chunk):
                val_max = max(val_max, int(chunk[cut:].max()))
            chunk[cut:].tofile(f)
    del all_ids  # unmap before truncating the file under it
    os.truncate(tokens, n_train * dtype.itemsize)
    fsync_file(tokens)
    fsync_file(tmp / token_file("val"))
    return _Tokens(n_train, n - n_train, train_bytes, val_bytes, train_max, val_max)


def _first_merges(tok: BPETokenizer, k: int = 24) -> str:
    """The first learned tokens (the most frequent pairs), shown as text."""
    first = len(tok.special_ids) + 256
    ids = range(first, min(first + k, tok.vocab_size))
    return " ".join(repr(tok.decode([i])) for i in ids)


def _is_dataset(path: Path) -> bool:
    """Whether `path` holds a Folio dataset and nothing else (so replacing it loses nothing)."""
    try:
        names = {p.name for p in path.iterdir()}
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return (
        names <= DATASET_FILES and isinstance(meta, dict) and meta.get("format") == DATASET_FORMAT
    )


def check_dataset_target(out_dir: str | Path) -> Path:
    """The absolute path `prepare` may write to: new, empty, or a Folio dataset (replaced)."""
    return check_replaceable_dir(out_dir, _is_dataset, "a Folio dataset")


def make_tokenizer(
    corpus: AnyCorpus,
    kind: str = "char",
    vocab_size: int = 4096,
    tokenizer_dir: str | Path | None = None,
    stats: CorpusStats | None = None,
    progress: bool = False,
) -> CharTokenizer | BPETokenizer:
    """The tokenizer `prepare` uses: built from the corpus (char), trained on it (bpe) or read (gpt2).

    char and bpe read the corpus once, a block at a time, measuring it into
    `stats` if given; progress shows a bar while BPE trains.
    """
    stats = CorpusStats() if stats is None else stats
    if kind == "char":
        return _char_vocabulary(corpus, stats)
    if kind == "bpe":
        pieces = (piece for piece, _ in _pieces(_measured(corpus, stats)))
        bar = tqdm(pieces, unit="piece", desc="training", disable=None if progress else True)
        with bar:
            return BPETokenizer.train(bar, vocab_size)
    if kind == "gpt2":
        if tokenizer_dir is None:
            raise FolioError(
                "--tokenizer gpt2 needs --tokenizer-dir DIR holding GPT-2's vocab.json and merges.txt"
            )
        return BPETokenizer.from_gpt2_files(tokenizer_dir)
    raise FolioError(f"unknown tokenizer {kind!r}: use one of {', '.join(TOKENIZER_KINDS)}")


def _meta(
    corpus: AnyCorpus,
    tok: CharTokenizer | BPETokenizer,
    counts: _Tokens,
    stats: CorpusStats,
    val_fraction: float,
) -> dict[str, Any]:
    """meta.json: the tokenizer, the splits' sizes and largest ids, and the source's checksum."""
    return {
        "format": DATASET_FORMAT,
        "version": DATASET_VERSION,
        "tokenizer": tok.to_dict(),
        "vocab_size": tok.vocab_size,
        "dtype": tok.token_dtype.name,
        "train_tokens": counts.train_tokens,
        "val_tokens": counts.val_tokens,
        "train_max_token_id": counts.train_max_token_id,
        "val_max_token_id": counts.val_max_token_id,
        "train_bytes": counts.train_bytes,
        "val_bytes": counts.val_bytes,
        "val_fraction": val_fraction,
        "source": {
            "name": corpus.name,
            "files": [str(f) for f in corpus.files],
            "characters": stats.characters,
            "sha256": stats.hasher.hexdigest(),
        },
    }


def prepare_dataset(
    corpus: AnyCorpus,
    out_dir: Path,
    val_fraction: float = 0.1,
    tokenizer: str = "char",
    vocab_size: int = 4096,
    tokenizer_dir: str | Path | None = None,
    progress: bool = False,
) -> PrepareSummary:
    """Tokenise `corpus` and write the dataset to `out_dir`, in memory that does not grow with it.

    tokenizer is "char", "bpe" (trained on the corpus to `vocab_size` tokens)
    or "gpt2" (read from `tokenizer_dir`); progress shows bars while training
    and encoding.
    """
    if not 0.0 < val_fraction < 1.0:
        raise FolioError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    out_dir = check_dataset_target(out_dir)
    stats = CorpusStats()
    tok = make_tokenizer(corpus, tokenizer, vocab_size, tokenizer_dir, stats, progress)
    if not stats.complete:  # gpt2: nothing was read yet
        for _ in _measured(corpus, stats):
            pass
    if stats.characters <= max(stats.documents - 1, 0):
        raise FolioError(f"corpus {corpus.name!r} is empty")
    if tokenizer == "char":
        _split_point(corpus, stats.characters, val_fraction)  # before creating anything
    tmp = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    with scratch_dir(tmp, f"cannot write dataset to {out_dir}: {{why}}"):
        if isinstance(tok, CharTokenizer):
            counts = _write_char_tokens(corpus, tok, tmp, stats.characters, val_fraction)
        else:
            counts = _write_bpe_tokens(corpus, tok, tmp, val_fraction, progress, stats)
        meta = _meta(corpus, tok, counts, stats, val_fraction)
        atomic_write_json(tmp / META_FILE, meta)  # written last: its presence marks completion
        replace_dir(tmp, out_dir)
    return PrepareSummary(
        out_dir=out_dir,
        characters=stats.characters,
        vocab="".join(tok.chars) if isinstance(tok, CharTokenizer) else _first_merges(tok),
        vocab_size=tok.vocab_size,
        train_tokens=counts.train_tokens,
        val_tokens=counts.val_tokens,
        dtype=tok.token_dtype.name,
        excerpt=stats.excerpt,
        tokenizer=tokenizer,
    )
