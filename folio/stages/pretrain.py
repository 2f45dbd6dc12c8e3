"""Pretraining: next-token prediction on a prepared dataset, the video's whole subject.

`train()` is the stage `folio train` runs: it opens the dataset, fills the
vocabulary size into the config, takes initial weights if asked
(`--init-from hf:DIR` or `run:DIR`, folio/train/init.py), and hands an
`LMObjective` to the one `Trainer`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from folio.config.run import RunConfig
from folio.data.batches import Dataset, remapped
from folio.tokenizers.extend import token_id_map
from folio.train.init import (
    HF_PREFIX,
    Start,
    covering_tokenizer,
    load_language_model,
    parse_init_from,
    start_from_base,
)
from folio.train.objectives import LMObjective
from folio.train.rundir import check_run_dir
from folio.train.trainer import Trainer, TrainResult, run_dir_meta


def initial_weights(
    run: RunConfig, init_from: str | None, dataset: Dataset
) -> tuple[Start, np.ndarray | None]:
    """Where the run starts (fresh, `hf:DIR` or `run:DIR`), and the dataset's id map if any.

    From a Hugging Face GPT-2 or a Folio run the model's shape comes from the
    source and, of the preset's model section, only dropout applies. A
    Hugging Face model needs the dataset's own vocabulary. A Folio run's
    tokenizer is extended with what the dataset's has and it lacks, and the
    dataset's ids are mapped to the run's (the map is None when they agree).
    """
    if init_from is None:
        return Start(run.resolve(dataset.vocab_size), None, dataset.tokenizer, None), None
    if parse_init_from(init_from)[0] == HF_PREFIX:
        from folio.hf import pretrained_for_training

        model_config, weights = pretrained_for_training(
            init_from,
            {"dropout": getattr(run.model, "dropout", 0.0)},
            dataset.vocab_size,
            dataset.path,
        )
        run = dataclasses.replace(run, model=model_config)
        return Start(run, weights, dataset.tokenizer, {"from": init_from}), None
    base = load_language_model(init_from)
    tokenizer = covering_tokenizer(base.tokenizer, tokenizers=[dataset.tokenizer])
    start = start_from_base(run, base, tokenizer, run.train.seed)
    return start, token_id_map(dataset.tokenizer, tokenizer)


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
    check_run_dir(out_dir, "pretrain", resume=resume, restart=restart)
    ds = Dataset.open(data_dir)
    start, lut = initial_weights(run, init_from, ds)
    run = start.run
    block_size = run.model.block_size
    ds.check_block_size(block_size)
    objective = LMObjective(
        {split: remapped(ds.tokens(split), lut) for split in ("train", "val")},
        run.train.batch_size,
        block_size,
    )
    meta = run_dir_meta(data_dir, init_from)
    if start.record:
        meta["init"] = start.record
    trainer = Trainer(
        run, objective, out_dir, start.tokenizer,
        init_weights=start.weights, meta=meta, init=start.record,
        resume=resume, restart=restart, force=force, progress=progress, log=log,
    )  # fmt: skip
    return trainer.fit()
