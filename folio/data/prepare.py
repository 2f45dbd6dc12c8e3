"""`folio prepare`: text -> tokens on disk, the way the video does it.

A dataset directory holds
- `train.bin`, `val.bin`: token ids as raw little-endian uint16 (uint32 when the
  vocabulary has more than 65,536 tokens), read back with numpy.memmap;
- `meta.json`: the tokenizer, vocabulary size, token and byte counts, the
  source's checksum and the split.
The first (1 - val_fraction) of the tokens train, the last val_fraction
validate, as in the video. The directory is built under a temporary name and
renamed when complete, so an interrupted prepare leaves no dataset that looks
finished.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from folio.data.corpora import Corpus
from folio.errors import FolioError
from folio.fsutil import atomic_write_json, fsync_file, replace_dir
from folio.tokenizers import CharTokenizer

DATASET_FORMAT = "folio-dataset"
DATASET_VERSION = 1


@dataclass
class PrepareSummary:
    """What `prepare` did, for the exploration printout."""

    out_dir: Path
    characters: int
    vocab: str
    vocab_size: int
    train_tokens: int
    val_tokens: int
    dtype: str
    excerpt: str


def prepare_dataset(corpus: Corpus, out_dir: Path, val_fraction: float = 0.1) -> PrepareSummary:
    """Tokenise `corpus` with a character tokenizer and write the dataset to `out_dir`."""
    if not 0.0 < val_fraction < 1.0:
        raise FolioError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    text = corpus.text
    if not text:
        raise FolioError(f"corpus {corpus.name!r} is empty")
    tok = CharTokenizer.from_text(text)
    ids = np.array(tok.encode(text), dtype=tok.token_dtype)
    n_train = int(len(ids) * (1.0 - val_fraction))
    if n_train < 2 or len(ids) - n_train < 2:
        raise FolioError(
            f"corpus {corpus.name!r} has only {len(ids)} tokens: too short to split into train and val"
        )
    train_text, val_text = text[:n_train], text[n_train:]
    meta: dict[str, Any] = {
        "format": DATASET_FORMAT,
        "version": DATASET_VERSION,
        "tokenizer": tok.to_dict(),
        "vocab_size": tok.vocab_size,
        "dtype": tok.token_dtype.name,
        "train_tokens": n_train,
        "val_tokens": len(ids) - n_train,
        "train_bytes": len(train_text.encode("utf-8")),
        "val_bytes": len(val_text.encode("utf-8")),
        "val_fraction": val_fraction,
        "source": {
            "name": corpus.name,
            "files": [str(f) for f in corpus.files],
            "characters": len(text),
            "sha256": corpus.sha256,
        },
    }
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FolioError(f"{out_dir}: exists and is not a directory")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as e:
        raise FolioError(f"cannot create dataset directory {out_dir}: {e.strerror or e}") from None
    try:
        for name, part in (("train.bin", ids[:n_train]), ("val.bin", ids[n_train:])):
            part.tofile(tmp / name)
            fsync_file(tmp / name)
        atomic_write_json(tmp / "meta.json", meta)  # written last: its presence marks completion
        replace_dir(tmp, out_dir)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise FolioError(f"cannot write dataset to {out_dir}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PrepareSummary(
        out_dir=out_dir,
        characters=len(text),
        vocab="".join(tok.chars),
        vocab_size=tok.vocab_size,
        train_tokens=n_train,
        val_tokens=len(ids) - n_train,
        dtype=tok.token_dtype.name,
        excerpt=text[:300],
    )
