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

from folio.data.prepare import DATASET_FORMAT, DATASET_VERSION
from folio.errors import FolioError
from folio.fsutil import read_json
from folio.tokenizers import tokenizer_from_dict


def _check_meta(where: Path, meta: dict[str, Any]) -> None:
    """Every field the loaders read must be present and of the right type."""

    def count(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    problem = None
    if not count(meta.get("version", 0)):
        problem = "version must be an integer"
    elif meta.get("dtype") not in ("uint16", "uint32"):
        problem = f"dtype must be 'uint16' or 'uint32', got {meta.get('dtype')!r}"
    elif not all(count(meta.get(k)) for k in ("vocab_size", "train_tokens", "val_tokens")):
        problem = "vocab_size, train_tokens and val_tokens must be integers"
    else:
        try:
            tokenizer_from_dict(meta.get("tokenizer"))
        except FolioError as e:
            problem = str(e)
    if problem:
        raise FolioError(f"{where}: dataset metadata is malformed ({problem})")


@dataclass
class Dataset:
    """A prepared dataset directory: token files and their metadata."""

    path: Path
    meta: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path) -> Dataset:
        path = Path(path)
        if not path.is_dir():
            raise FolioError(f"{path}: dataset directory not found (run `folio prepare` first)")
        meta = read_json(path / "meta.json", "dataset metadata")
        if not isinstance(meta, dict) or meta.get("format") != DATASET_FORMAT:
            raise FolioError(f"{path / 'meta.json'}: not a Folio dataset")
        version = meta.get("version", 0)
        if isinstance(version, int) and version > DATASET_VERSION:
            raise FolioError(
                f"{path}: dataset format version {version} is newer than this Folio "
                f"understands ({DATASET_VERSION}); upgrade Folio"
            )
        _check_meta(path / "meta.json", meta)
        ds = cls(path, meta)
        for split in ("train", "val"):
            f = path / f"{split}.bin"
            expected = meta[f"{split}_tokens"] * np.dtype(meta["dtype"]).itemsize
            if not f.is_file() or f.stat().st_size != expected:
                raise FolioError(f"{f}: missing or truncated (expected {expected} bytes)")
        return ds

    @property
    def tokenizer(self):
        return tokenizer_from_dict(self.meta["tokenizer"])

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    def tokens(self, split: str) -> np.ndarray:
        """The split's token ids as a read-only memmap (nothing is loaded yet)."""
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        return np.memmap(self.path / f"{split}.bin", dtype=np.dtype(self.meta["dtype"]), mode="r")

    def check_block_size(self, block_size: int) -> None:
        """Both splits must hold at least one window of block_size + 1 tokens."""
        for split in ("train", "val"):
            n = int(self.meta[f"{split}_tokens"])
            if n < block_size + 1:
                raise FolioError(
                    f"{self.path}: the {split} split has {n} tokens, fewer than block_size + 1 = "
                    f"{block_size + 1}; use a smaller block_size or more text"
                )


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
