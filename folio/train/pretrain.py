"""Pretraining: next-token prediction on a prepared dataset, the video's whole subject.

`train()` is the stage `folio train` runs: it opens the dataset, fills the
vocabulary size into the config, takes initial weights if asked
(`--init-from hf:DIR`), and hands an `LMObjective` to the one `Trainer`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from folio.data.batches import Dataset
from folio.train.config import RunConfig
from folio.train.objectives import LMObjective
from folio.train.trainer import Trainer, TrainResult, run_dir_meta


def initial_weights(
    run: RunConfig, init_from: str | None, dataset: Dataset
) -> tuple[RunConfig, dict[str, torch.Tensor] | None]:
    """The run's config and weights to start from: fresh (None) or `hf:DIR`.

    From a Hugging Face GPT-2 the model's shape comes from DIR and, of the
    preset's model section, only dropout applies.
    """
    if init_from is None:
        return run.resolve(dataset.vocab_size), None
    from folio.hf import pretrained_for_training

    model_config, weights = pretrained_for_training(
        init_from, {"dropout": getattr(run.model, "dropout", 0.0)}, dataset.vocab_size, dataset.path
    )
    return dataclasses.replace(run, model=model_config), weights


def train(
    run: RunConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    resume: bool = False,
    restart: bool = False,
    progress: bool = True,
    log=print,
    init_from: str | None = None,
    force: bool = False,
) -> TrainResult:
    """Train the model `run` describes on the dataset in `data_dir`, writing the run to `out_dir`."""
    ds = Dataset.open(data_dir)
    run, weights = initial_weights(run, init_from, ds)
    block_size = run.model.block_size
    ds.check_block_size(block_size)
    objective = LMObjective(
        {"train": ds.tokens("train"), "val": ds.tokens("val")}, run.train.batch_size, block_size
    )
    trainer = Trainer(
        run, objective, out_dir, ds.tokenizer,
        init_weights=weights, meta=run_dir_meta(data_dir, init_from),
        resume=resume, restart=restart, force=force, progress=progress, log=log,
    )  # fmt: skip
    return trainer.fit()
