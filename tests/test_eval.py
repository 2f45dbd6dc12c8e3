"""Tests for folio/eval/loss.py's own checks: a batch size or batch limit below 1 is refused."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from folio.errors import FolioError
from folio.eval.loss import evaluate_split
from folio.models import GPT, GPTConfig


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=10, block_size=16, n_layer=2, n_head=2, n_embd=32))


def _evaluate(model: GPT, data: np.ndarray, **kw) -> dict:
    return evaluate_split(model, data, 16, torch.device("cpu"), contextlib.nullcontext, **kw)


@pytest.mark.parametrize(
    ("kw", "fragment"),
    [
        ({"max_batches": 0}, "--max-batches must be a positive integer"),
        ({"max_batches": -2}, "--max-batches must be a positive integer"),
        ({"batch_size": 0}, "--batch-size must be a positive integer, got 0"),
        ({"batch_size": -1}, "--batch-size must be a positive integer, got -1"),
        ({"batch_size": 2.5}, "--batch-size must be a positive integer, got 2.5"),
        ({"max_batches": True}, "--max-batches must be a positive integer"),
    ],
)
def test_nonsense_limits_are_refused_not_reported(model: GPT, kw: dict, fragment: str) -> None:
    """Before: max_batches 0 reported loss 0.0 and perplexity 1.0; batch_size -1 read 3 tokens."""
    data = np.arange(200, dtype=np.uint16) % 10
    with pytest.raises(FolioError, match=fragment):
        _evaluate(model, data, **kw)


def test_a_split_with_nothing_to_predict_is_refused(model: GPT) -> None:
    with pytest.raises(FolioError, match="nothing to evaluate"):
        _evaluate(model, np.zeros(1, dtype=np.uint16))


def test_one_batch_is_a_real_loss(model: GPT) -> None:
    out = _evaluate(model, np.arange(200, dtype=np.uint16) % 10, batch_size=2, max_batches=1)
    assert out["tokens"] == 32 and out["loss"] > 0 and out["perplexity"] > 1
    assert not out["complete"]
