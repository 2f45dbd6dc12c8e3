"""Batches: random windows of block_size + 1 tokens from a memory-mapped token file.

Notation: B batch size, T block_size.

The video's `get_batch`: pick B random offsets, take T + 1 tokens at each;
x is the first T, y the last T (y is x shifted left by one: at every position
the target is the next token). Token files are opened with numpy.memmap, so
memory stays flat however large the corpus is: only the windows a batch
touches are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from folio.data.format import (
    DATASET_FORMAT,
    DATASET_VERSION,
    META_FILE,
    SPLITS,
    check_max_token_id,
    check_meta,
    split_key,
    token_file,
)
from folio.errors import FolioError
from folio.fsutil import read_json
from folio.tokenizers import tokenizer_from_dict

SCAN_CHUNK = 1 << 24  # tokens read at a time when scanning a token file for its largest id


def max_token_id(tokens: np.ndarray) -> int:
    """The largest id in a token array (0 if empty), read SCAN_CHUNK tokens at a time."""
    largest = 0
    for a in range(0, len(tokens), SCAN_CHUNK):
        largest = max(largest, int(tokens[a : a + SCAN_CHUNK].max()))
    return largest


@dataclass
class Dataset:
    """A prepared dataset directory: token files and their metadata."""

    path: Path
    meta: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path) -> Dataset:
        """Open a prepared dataset, refusing one whose metadata and token files disagree.

        The largest token id of each split must be below vocab_size. prepare
        records it in meta.json; for an older dataset without that field the
        token files are scanned here, SCAN_CHUNK tokens at a time (a pass at
        memory speed: about 0.03 s per 500 MB from the page cache, disk speed
        when cold). Preparing the dataset again records it and skips the scan.
        """
        path = Path(path)
        if not path.is_dir():
            raise FolioError(f"{path}: dataset directory not found (run `folio prepare` first)")
        meta = read_json(path / META_FILE, "dataset metadata")
        if not isinstance(meta, dict) or meta.get("format") != DATASET_FORMAT:
            raise FolioError(f"{path / META_FILE}: not a Folio dataset")
        version = meta.get("version", 0)
        if isinstance(version, int) and version > DATASET_VERSION:
            raise FolioError(
                f"{path}: dataset format version {version} is newer than this Folio "
                f"understands ({DATASET_VERSION}); upgrade Folio"
            )
        check_meta(path / META_FILE, meta)
        ds = cls(path, meta)
        for split in SPLITS:
            f = path / token_file(split)
            expected = meta[split_key(split, "tokens")] * np.dtype(meta["dtype"]).itemsize
            if not f.is_file() or f.stat().st_size != expected:
                raise FolioError(f"{f}: missing or truncated (expected {expected} bytes)")
        for split in SPLITS:
            recorded = split_key(split, "max_token_id") in meta
            if not recorded and meta[split_key(split, "tokens")]:  # an older dataset: scan it
                largest = max_token_id(ds.tokens(split))
                check_max_token_id(path / token_file(split), split, largest, ds.vocab_size)
        return ds

    @property
    def tokenizer(self):
        return tokenizer_from_dict(self.meta["tokenizer"])

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    def tokens(self, split: str) -> np.ndarray:
        """The split's token ids as a read-only memmap (nothing is loaded yet)."""
        if split not in SPLITS:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        return np.memmap(
            self.path / token_file(split), dtype=np.dtype(self.meta["dtype"]), mode="r"
        )

    def check_block_size(self, block_size: int) -> None:
        """Both splits must hold at least one window of block_size + 1 tokens."""
        for split in SPLITS:
            n = int(self.meta[split_key(split, "tokens")])
            if n < block_size + 1:
                raise FolioError(
                    f"{self.path}: the {split} split has {n} tokens, fewer than block_size + 1 = "
                    f"{block_size + 1}; use a smaller block_size or more text"
                )


class RemappedTokens:
    """A token array read through an id map (`folio.tokenizers.extend.token_id_map`).

    Slices come back in the model's ids. It is enough of an array for
    `get_batch` and `sequential_batches` (len and slicing), and the memmap
    underneath is still read a window at a time, so memory stays flat.
    """

    def __init__(self, tokens: np.ndarray, lut: np.ndarray) -> None:
        self.tokens, self.lut = tokens, lut

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, key: slice) -> np.ndarray:
        return self.lut[self.tokens[key]]


def remapped(tokens: np.ndarray, lut: np.ndarray | None) -> np.ndarray | RemappedTokens:
    """`tokens` as they are (no map) or read through `lut`."""
    return tokens if lut is None else RemappedTokens(tokens, lut)


def get_batch(
    data: np.ndarray, batch_size: int, block_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """B random windows: x (B, T) and the next-token targets y (B, T), as int64."""
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)  # (B,)
    windows = np.stack([data[i : i + block_size + 1] for i in ix.tolist()]).astype(np.int64)
    w = torch.from_numpy(windows)  # (B, T + 1)
    return w[:, :-1].contiguous(), w[:, 1:].contiguous()  # (B, T), (B, T)


def sequential_batches(data: np.ndarray, batch_size: int, block_size: int):
    """Every token of `data` predicted once: consecutive non-overlapping windows.

    Yields (x, y) with x, y (b, t); the last window may be shorter than
    block_size, so windows of equal length are grouped into batches.
    """
    n = len(data) - 1  # number of (input, target) pairs
    starts = list(range(0, n, block_size))
    full = [s for s in starts if s + block_size <= n]
    for i in range(0, len(full), batch_size):
        chunk = np.stack([data[s : s + block_size + 1] for s in full[i : i + batch_size]])
        w = torch.from_numpy(chunk.astype(np.int64))
        yield w[:, :-1], w[:, 1:]
    rest = [s for s in starts if s + block_size > n]
    for s in rest:
        w = torch.from_numpy(np.asarray(data[s : n + 1], dtype=np.int64))[None]
        yield w[:, :-1], w[:, 1:]
