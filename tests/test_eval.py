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


@pytest.mark.parametrize(("n", "batch_size", "max_batches"), [(200, 4, None), (161, 3, None),
                                                                (17, 8, None), (400, 2, 5)])  # fmt: skip
def test_the_progress_bar_counts_every_batch(
    model: GPT, monkeypatch: pytest.MonkeyPatch, n: int, batch_size: int, max_batches
) -> None:
    """The bar's total is the number of batches the split really has (or the limit)."""
    import folio.eval.loss as loss_module

    class Counter:
        def __init__(self, name, total):
            self.name, self.total, self.n = name, total, 0

        def update(self, k: int) -> None:
            self.n += k

        def close(self) -> None:
            pass

    bars: list[Counter] = []
    monkeypatch.setattr(
        loss_module, "_progress_bar", lambda *a: bars.append(Counter(*a)) or bars[-1]
    )
    data = np.arange(n, dtype=np.uint16) % 10
    _evaluate(model, data, batch_size=batch_size, max_batches=max_batches, progress="eval val")
    assert bars[0].name == "eval val" and bars[0].total == bars[0].n > 0  # every batch counted


def test_folio_eval_reads_the_val_split_unless_asked(tmp_path, capsys, monkeypatch) -> None:
    """The train split of a real corpus takes minutes: `folio eval` asks for val by default."""
    import json

    import folio.train.trainer as trainer_module
    from folio.cli import main
    from folio.data.corpora import load_corpus
    from folio.data.prepare import prepare_dataset

    # Nothing here looks at loss.png, and drawing it (matplotlib) was most of the test's time.
    monkeypatch.setattr(trainer_module, "plot_losses", lambda out_dir, rows: None)

    (tmp_path / "t.txt").write_text("to be or not to be, that is the question.\n" * 60)
    prepare_dataset(load_corpus([str(tmp_path / "t.txt")]), tmp_path / "data")
    argv = ["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
            "--preset", "tiny", "--max-iters", "2", "--quiet", "--threads", "1"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert "val_loss" in result and "train_loss" not in result
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--splits", "train", "val",
                 "--json"]) == 0  # fmt: skip
    assert "train_loss" in json.loads(capsys.readouterr().out)
