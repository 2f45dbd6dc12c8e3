"""`folio reward`: a reward model trained on ranked pairs (Bradley-Terry).

It loads the chat model it starts from (`run:DIR`, as `folio rl` does), puts
a scalar head on its transformer, reads a preference directory (train.jsonl
and test.jsonl) and hands `RewardObjective` (folio/stages/preference.py) to
the one `Trainer`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from folio.config.prefs import PrefConfig
from folio.config.run import RunConfig
from folio.models.config import RewardModelConfig
from folio.stages.preference import RewardObjective, preference_rows, run_flags
from folio.train.policy import load_policy, with_scalar_head
from folio.train.rundir import check_run_dir
from folio.train.trainer import Trainer, TrainResult


def train_reward(
    run: RunConfig, cfg: PrefConfig, init_from: str, data: str | Path, out_dir: str | Path,
    **trainer_args: Any,
) -> TrainResult:  # fmt: skip
    """A reward model started from the chat model `init_from`, trained on the pairs in `data`.

    The transformer's weights come from the chat model; the scalar head
    starts at zero, so every reply first scores 0 (the loss starts at ln 2).
    """
    check_run_dir(out_dir, "reward", **run_flags(trainer_args))
    policy = load_policy(init_from)
    config, weights = with_scalar_head(policy, RewardModelConfig)
    rows, _ = preference_rows(data, policy.tokenizer, config.block_size)
    run = dataclasses.replace(run, model=config)
    objective = RewardObjective(rows, run.train.batch_size, cfg.center_coef)
    meta = {"stage": "reward", "init_from": init_from, "data": str(Path(data).resolve()),
            "prefs": cfg.to_dict()}  # fmt: skip
    trainer = Trainer(
        run, objective, out_dir, policy.tokenizer, init_weights=weights, meta=meta, init=policy.source,
        **trainer_args,
    )  # fmt: skip
    return trainer.fit()
