"""`folio prepare`: text -> tokens on disk, the way the video does it.

A dataset directory holds
- `train.bin`, `val.bin`: token ids as raw little-endian uint16 (uint32 when the
  vocabulary has more than 65,536 tokens), read back with numpy.memmap;
- `meta.json`: the tokenizer, vocabulary size, token and byte counts, the
  source's checksum and the split.
The first (1 - val_fraction) of the tokens train, the last val_fraction
validate, as in the video. `{split}_bytes` counts the UTF-8 bytes of the text
behind each split's tokens, so `folio eval` can report bits per byte, which
compare across tokenizers.

Tokenizers: `char` (the video's), `bpe` (byte-level BPE trained on the corpus)
and `gpt2` (GPT-2's own, from local vocab.json + merges.txt). A BPE dataset is
the documents' tokens, each document followed by `<|endoftext|>`. BPE encoding
streams: documents are cut into pieces that encode exactly as the whole
(`iter_pieces`), encoded a batch at a time on every core and appended to the
token file, so the memory of the encoding pass does not grow with the corpus.
The corpus itself is still read into memory by `load_corpus` (one string per
file): that, not encoding, bounds the corpus size today. The directory is built under a temporary name and
renamed when complete, so an interrupted prepare leaves no dataset that looks
finished.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from folio.data.corpora import Corpus
from folio.errors import FolioError
from folio.fsutil import atomic_write_json, fsync_file, replace_dir, scratch_dir
from folio.tokenizers import BPETokenizer, CharTokenizer
from folio.tokenizers.bpe import iter_pieces

DATASET_FORMAT = "folio-dataset"
DATASET_VERSION = 1
TOKENIZER_KINDS = ("char", "bpe", "gpt2")
PIECE_CHARS = 1 << 16  # documents are encoded in pieces of about this many characters
BATCH_CHARS = 1 << 20  # and this many characters of pieces at a time (bounds memory)
SPLIT_CHUNK = 1 << 22  # tokens copied or counted at a time when splitting


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
class _Tokens:
    """What a tokenizing pass wrote into the temporary directory."""

    train_tokens: int
    val_tokens: int
    train_bytes: int
    val_bytes: int


def _split_point(corpus: Corpus, n: int, val_fraction: float) -> int:
    n_train = int(n * (1.0 - val_fraction))
    if n_train < 2 or n - n_train < 2:
        raise FolioError(
            f"corpus {corpus.name!r} has only {n} tokens: too short to split into train and val"
        )
    return n_train


def _write_char_tokens(
    corpus: Corpus, tok: CharTokenizer, tmp: Path, val_fraction: float
) -> _Tokens:
    text = corpus.text
    ids = np.array(tok.encode(text), dtype=tok.token_dtype)
    n_train = _split_point(corpus, len(ids), val_fraction)
    for name, part in (("train.bin", ids[:n_train]), ("val.bin", ids[n_train:])):
        part.tofile(tmp / name)
        fsync_file(tmp / name)
    return _Tokens(
        n_train,
        len(ids) - n_train,
        len(text[:n_train].encode("utf-8")),
        len(text[n_train:].encode("utf-8")),
    )


def _corpus_pieces(corpus: Corpus) -> Iterator[tuple[str, bool]]:
    """Every document in pieces, each with whether it ends its document."""
    for doc in corpus.documents:
        pieces = iter_pieces(doc, PIECE_CHARS)
        piece = next(pieces)
        for following in pieces:
            yield piece, False
            piece = following
        yield piece, True


def _write_bpe_tokens(
    corpus: Corpus, tok: BPETokenizer, tmp: Path, val_fraction: float, progress: bool
) -> _Tokens:
    """Encode the corpus a batch of pieces at a time into one file, then split it in two."""
    dtype, eot = tok.token_dtype, tok.eot_id
    tokens = tmp / "train.bin"  # all tokens at first; cut to the train split at the end
    n = 0
    bar = tqdm(
        total=sum(len(d) for d in corpus.documents),
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
    train_bytes = val_bytes = 0
    with open(tmp / "val.bin", "wb") as f:
        for a in range(0, n, SPLIT_CHUNK):
            chunk = np.asarray(all_ids[a : a + SPLIT_CHUNK])
            cut = min(max(n_train - a, 0), len(chunk))
            train_bytes += int(lengths[chunk[:cut]].sum())
            val_bytes += int(lengths[chunk[cut:]].sum())
            chunk[cut:].tofile(f)
    del all_ids  # unmap before truncating the file under it
    os.truncate(tokens, n_train * dtype.itemsize)
    fsync_file(tokens)
    fsync_file(tmp / "val.bin")
    return _Tokens(n_train, n - n_train, train_bytes, val_bytes)


def _first_merges(tok: BPETokenizer, k: int = 24) -> str:
    """The first learned tokens (the most frequent pairs), shown as text."""
    first = len(tok.special_ids) + 256
    ids = range(first, min(first + k, tok.vocab_size))
    return " ".join(repr(tok.decode([i])) for i in ids)


def make_tokenizer(
    corpus: Corpus,
    kind: str = "char",
    vocab_size: int = 4096,
    tokenizer_dir: str | Path | None = None,
) -> CharTokenizer | BPETokenizer:
    """The tokenizer `prepare` uses: built from the corpus (char), trained on it (bpe) or read (gpt2)."""
    if kind == "char":
        return CharTokenizer.from_text(corpus.text)
    if kind == "bpe":
        texts = (piece for piece, _ in _corpus_pieces(corpus))
        return BPETokenizer.train(texts, vocab_size)
    if kind == "gpt2":
        if tokenizer_dir is None:
            raise FolioError(
                "--tokenizer gpt2 needs --tokenizer-dir DIR holding GPT-2's vocab.json and merges.txt"
            )
        return BPETokenizer.from_gpt2_files(tokenizer_dir)
    raise FolioError(f"unknown tokenizer {kind!r}: use one of {', '.join(TOKENIZER_KINDS)}")


def prepare_dataset(
    corpus: Corpus,
    out_dir: Path,
    val_fraction: float = 0.1,
    tokenizer: str = "char",
    vocab_size: int = 4096,
    tokenizer_dir: str | Path | None = None,
    progress: bool = False,
) -> PrepareSummary:
    """Tokenise `corpus` and write the dataset to `out_dir`.

    tokenizer is "char", "bpe" (trained on the corpus to `vocab_size` tokens)
    or "gpt2" (read from `tokenizer_dir`); progress shows a bar while encoding.
    """
    if not 0.0 < val_fraction < 1.0:
        raise FolioError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if not any(corpus.documents):
        raise FolioError(f"corpus {corpus.name!r} is empty")
    tok = make_tokenizer(corpus, tokenizer, vocab_size, tokenizer_dir)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FolioError(f"{out_dir}: exists and is not a directory")
    if tokenizer == "char":
        _split_point(corpus, len(corpus.text), val_fraction)  # before creating anything
    tmp = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    characters = sum(len(d) for d in corpus.documents) + max(len(corpus.documents) - 1, 0)
    with scratch_dir(tmp, f"cannot write dataset to {out_dir}: {{why}}"):
        if isinstance(tok, CharTokenizer):
            counts = _write_char_tokens(corpus, tok, tmp, val_fraction)
        else:
            counts = _write_bpe_tokens(corpus, tok, tmp, val_fraction, progress)
        meta: dict[str, Any] = {
            "format": DATASET_FORMAT,
            "version": DATASET_VERSION,
            "tokenizer": tok.to_dict(),
            "vocab_size": tok.vocab_size,
            "dtype": tok.token_dtype.name,
            "train_tokens": counts.train_tokens,
            "val_tokens": counts.val_tokens,
            "train_bytes": counts.train_bytes,
            "val_bytes": counts.val_bytes,
            "val_fraction": val_fraction,
            "source": {
                "name": corpus.name,
                "files": [str(f) for f in corpus.files],
                "characters": characters,
                "sha256": corpus.sha256,
            },
        }
        atomic_write_json(tmp / "meta.json", meta)  # written last: its presence marks completion
        replace_dir(tmp, out_dir)
    return PrepareSummary(
        out_dir=out_dir,
        characters=characters,
        vocab="".join(tok.chars) if isinstance(tok, CharTokenizer) else _first_merges(tok),
        vocab_size=tok.vocab_size,
        train_tokens=counts.train_tokens,
        val_tokens=counts.val_tokens,
        dtype=tok.token_dtype.name,
        excerpt="\n".join(d[:300] for d in corpus.documents[:300])[:300],
        tokenizer=tokenizer,
    )
