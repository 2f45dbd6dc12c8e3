"""Tests for folio/data/batches.py: random training windows and sequential eval windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from folio.data.batches import Dataset, get_batch, sequential_batches
from folio.data.corpora import Corpus
from folio.data.prepare import prepare_dataset

B, T = 4, 8


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    """Distinct, recognisable token ids (uint16, like a real token file) so windows can be located."""
    return (np.arange(500, dtype=np.int64) * 7 % 500).astype(np.uint16)


def test_get_batch_shapes_and_dtype(data: np.ndarray) -> None:
    x, y = get_batch(data, B, T, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (B, T)
    assert x.dtype == y.dtype == torch.int64
    assert x.is_contiguous() and y.is_contiguous()


def test_targets_are_inputs_shifted_by_one(data: np.ndarray) -> None:
    x, y = get_batch(data, 16, T, torch.Generator().manual_seed(1))
    assert torch.equal(y[:, :-1], x[:, 1:])
    position = {int(v): i for i, v in enumerate(data)}  # every id occurs once
    for row_x, row_y in zip(x.tolist(), y.tolist(), strict=True):
        start = position[row_x[0]]
        assert start + T + 1 <= len(data)
        assert row_x == data[start : start + T].tolist()
        assert row_y == data[start + 1 : start + T + 1].tolist()


def test_windows_reach_both_ends() -> None:
    """Offsets range over 0 .. len - T - 1: the first and the last window are both possible."""
    data = np.arange(T + 3, dtype=np.uint16)  # three possible windows
    x, y = get_batch(data, 200, T, torch.Generator().manual_seed(0))
    assert set(x[:, 0].tolist()) == {0, 1, 2}
    assert int(y.max()) == T + 2


def test_same_seed_same_batches(data: np.ndarray) -> None:
    g1, g2 = torch.Generator().manual_seed(42), torch.Generator().manual_seed(42)
    for _ in range(3):
        x1, y1 = get_batch(data, B, T, g1)
        x2, y2 = get_batch(data, B, T, g2)
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_different_seed_different_batches(data: np.ndarray) -> None:
    x1, _ = get_batch(data, B, T, torch.Generator().manual_seed(1))
    x2, _ = get_batch(data, B, T, torch.Generator().manual_seed(2))
    assert not torch.equal(x1, x2)


def test_generator_advances(data: np.ndarray) -> None:
    g = torch.Generator().manual_seed(3)
    x1, _ = get_batch(data, B, T, g)
    x2, _ = get_batch(data, B, T, g)
    assert not torch.equal(x1, x2)


@pytest.mark.parametrize(
    ("n", "batch_size", "block_size"),
    [(500, 4, 8), (T + 1, 4, T), (101, 3, 10), (100, 3, 10), (57, 64, 8), (40, 2, 1)],
)
def test_sequential_batches_cover_every_token_once(
    n: int, batch_size: int, block_size: int
) -> None:
    data = (np.arange(n) * 7 % 1000).astype(np.uint16)
    xs, ys = [], []
    for x, y in sequential_batches(data, batch_size, block_size):
        assert x.shape == y.shape
        assert x.dtype == y.dtype == torch.int64
        assert x.shape[0] <= batch_size and 1 <= x.shape[1] <= block_size
        assert torch.equal(y[:, :-1], x[:, 1:])
        xs.append(x.reshape(-1))
        ys.append(y.reshape(-1))
    inputs, targets = torch.cat(xs), torch.cat(ys)
    assert len(targets) == n - 1
    assert targets.tolist() == data[1:].tolist()
    assert inputs.tolist() == data[:-1].tolist()


def test_dataset_tokens_are_memmaps(tmp_path: Path) -> None:
    text = "".join(f"to be or not to be, {i}\n" for i in range(20))
    prepare_dataset(Corpus("t", [text], ["t.txt"]), tmp_path / "data")
    ds = Dataset.open(tmp_path / "data")
    for split in ("train", "val"):
        tokens = ds.tokens(split)
        assert isinstance(tokens, np.memmap)
        assert not tokens.flags.writeable
        assert len(tokens) == ds.meta[f"{split}_tokens"]
    with pytest.raises(ValueError, match="split"):
        ds.tokens("test")
    x, y = get_batch(ds.tokens("train"), B, T, torch.Generator().manual_seed(0))
    assert x.shape == (B, T) and int(x.max()) < ds.vocab_size
