"""`folio dpo`: Direct Preference Optimization on ranked pairs, against a frozen reference.

It loads the chat model it starts from (`run:DIR`) and its reference, reads a
preference directory and hands `DPOObjective` (folio/stages/preference.py)
to the one `Trainer`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from folio.config.prefs import PrefConfig
from folio.config.run import RunConfig
from folio.data.prefs import is_gold_prompt
from folio.stages.preference import DPOObjective, preference_rows, run_flags
from folio.stages.ptx import ptx_rows
from folio.train.policy import load_pinned_policy, policy_config
from folio.train.rundir import Pins, check_run_dir
from folio.train.trainer import Trainer, TrainResult


def train_dpo(
    run: RunConfig, cfg: PrefConfig, init_from: str, data: str | Path, out_dir: str | Path,
    reference_from: str | None = None, ptx_data: str | Path | None = None, **trainer_args: Any,
) -> TrainResult:  # fmt: skip
    """DPO from the chat model `init_from` on the pairs in `data`, against a frozen reference
    (default: the same model). Dropout is off, so the log-ratio to the reference is 0 at step 0."""
    flags = run_flags(trainer_args)
    check_run_dir(out_dir, "dpo", **flags)
    pins = Pins(out_dir, flags["resume"])
    policy, ref = load_pinned_policy(pins, init_from, reference_from)
    config = policy_config(policy)
    rows, test = preference_rows(data, policy.tokenizer, config.block_size)
    prompts = list(dict.fromkeys(p.prompt[-1]["content"] for p in test))
    gold = [p for p in prompts if is_gold_prompt(p)][: cfg.gold_prompts]
    run = dataclasses.replace(run, model=config)
    ptx = None
    if ptx_data is not None:
        ptx, kept, left = ptx_rows(ptx_data, policy.tokenizer, config.block_size)
        log = trainer_args.get("log", print)
        log(f"dpo-ptx: {kept} conversations of {ptx_data} in {len(ptx[0])} rows"
            + (f" ({left} demonstrations left out)" if left else ""))  # fmt: skip
    objective = DPOObjective(
        rows, ref.model, run.train.batch_size, cfg, policy.tokenizer, gold, ptx
    )
    meta = {"stage": "dpo", "init_from": init_from, "reference": reference_from or init_from,
            "data": str(Path(data).resolve()), "prefs": cfg.to_dict(),
            "ptx_data": str(Path(ptx_data).resolve()) if ptx_data is not None else None,
            }  # fmt: skip
    trainer = Trainer(
        run, objective, out_dir, policy.tokenizer, init_weights=policy.model.state_dict(),
        meta=meta, init=policy.source, pins=pins, **trainer_args,
    )  # fmt: skip
    return trainer.fit()
