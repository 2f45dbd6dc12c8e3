"""The preference stages: `folio prefs make`, `folio reward` (a reward model) and `folio dpo`.

Each loads the chat model it starts from (`run:DIR`, as `folio rl` does),
reads a preference directory (train.jsonl and test.jsonl) and hands an
objective of folio/train/preference.py to the one `Trainer`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from folio.data.prefs import (
    FLIP,
    LINE_PROMPT,
    check_prefs_target,
    is_gold_prompt,
    line_prompts,
    make_pairs,
    read_pref_dir,
    write_pref_dir,
)
from folio.data.tasks import load_material
from folio.errors import FolioError
from folio.eval_tasks import Reply, generate_replies
from folio.models.config import RewardModelConfig
from folio.tokenizers.chat import cut_at_turn_token, end_of_turn_id, render_prompt
from folio.train.config import RunConfig
from folio.train.policy import (
    load_policy,
    policy_config,
    same_tokenizer,
    where,
    with_scalar_head,
)
from folio.train.preference import DPOObjective, PrefConfig, RewardObjective, pair_rows
from folio.train.rundir import check_run_dir
from folio.train.trainer import Trainer, TrainResult


def _check_out(out_dir: str | Path, stage: str, trainer_args: dict[str, Any]) -> None:
    resume, restart = trainer_args.get("resume", False), trainer_args.get("restart", False)
    check_run_dir(out_dir, stage, resume=resume, restart=restart)


def _rows(path: str | Path, tokenizer: Any, block_size: int):
    train, test = read_pref_dir(path)
    rows = {
        "train": pair_rows(train, tokenizer, block_size),
        "val": pair_rows(test, tokenizer, block_size),
    }
    return rows, test


def train_reward(
    run: RunConfig, cfg: PrefConfig, init_from: str, data: str | Path, out_dir: str | Path,
    **trainer_args: Any,
) -> TrainResult:  # fmt: skip
    """A reward model started from the chat model `init_from`, trained on the pairs in `data`.

    The transformer's weights come from the chat model; the scalar head
    starts at zero, so every reply first scores 0 (the loss starts at ln 2).
    """
    _check_out(out_dir, "reward", trainer_args)
    policy = load_policy(init_from)
    config, weights = with_scalar_head(policy, RewardModelConfig)
    rows, _ = _rows(data, policy.tokenizer, config.block_size)
    run = dataclasses.replace(run, model=config)
    objective = RewardObjective(rows, run.train.batch_size, cfg.center_coef)
    meta = {"stage": "reward", "init_from": init_from, "data": str(Path(data).resolve()),
            "prefs": cfg.to_dict()}  # fmt: skip
    trainer = Trainer(
        run, objective, out_dir, policy.tokenizer, init_weights=weights, meta=meta, init=policy.source,
        **trainer_args,
    )  # fmt: skip
    return trainer.fit()


def train_dpo(
    run: RunConfig, cfg: PrefConfig, init_from: str, data: str | Path, out_dir: str | Path,
    reference_from: str | None = None, **trainer_args: Any,
) -> TrainResult:  # fmt: skip
    """DPO from the chat model `init_from` on the pairs in `data`, against a frozen reference
    (default: the same model). Dropout is off, so the log-ratio to the reference is 0 at step 0."""
    _check_out(out_dir, "dpo", trainer_args)
    policy = load_policy(init_from)
    ref = policy if reference_from is None else load_policy(reference_from, "--reference")
    same_tokenizer(policy, ref)
    config = policy_config(policy)
    rows, test = _rows(data, policy.tokenizer, config.block_size)
    prompts = list(dict.fromkeys(p.prompt[-1]["content"] for p in test))
    gold = [p for p in prompts if is_gold_prompt(p)][: cfg.gold_prompts]
    run = dataclasses.replace(run, model=config)
    objective = DPOObjective(rows, ref.model, run.train.batch_size, cfg, policy.tokenizer, gold)
    meta = {"stage": "dpo", "init_from": init_from, "reference": reference_from or init_from,
            "data": str(Path(data).resolve()), "prefs": cfg.to_dict()}  # fmt: skip
    trainer = Trainer(
        run, objective, out_dir, policy.tokenizer, init_weights=policy.model.state_dict(),
        meta=meta, init=policy.source, **trainer_args,
    )  # fmt: skip
    return trainer.fit()


def make_preferences(
    checkpoint: str,
    out_dir: str | Path,
    n: int,
    n_test: int,
    replies: int = 4,
    flip: float = FLIP,
    seed: int = 0,
    corpus: str = "shakespeare",
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    force: bool = False,
) -> dict[str, Any]:
    """Sample `replies` replies to each of n train and n_test test prompts from the chat model
    `checkpoint` (run:DIR), rank them by the gold rule, flip a share `flip` of the labels, and
    write a preference directory. Prompts whose replies all score the same make no pair.
    Returns the manifest written to prefs.json. An earlier preference directory in out_dir
    is replaced only if its files are as written, or with `force`."""
    check_prefs_target(out_dir, force)  # before the slow sampling
    if isinstance(replies, bool) or not isinstance(replies, int) or replies < 2:
        raise FolioError(f"--replies must be at least 2 (a pair needs two), got {replies!r}")
    if not 0.0 <= flip < 0.5:
        raise FolioError(
            f"--flip must be in [0, 0.5) (beyond it the labels mean the opposite), got {flip!r}"
        )
    for name, v in (("--n", n), ("--n-test", n_test), ("--max-new-tokens", max_new_tokens)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise FolioError(f"{name} must be a positive integer, got {v!r}")
    if temperature <= 0:
        raise FolioError(f"--temperature must be positive (replies must differ), got {temperature}")
    policy = load_policy(checkpoint, "--checkpoint")
    tok, model = policy.tokenizer, policy.model
    end_id = end_of_turn_id(tok)
    material = load_material(corpus)

    def sample(prompts):
        ids = [render_prompt(tok, [{"role": "user", "content": p}]) for p in prompts]
        out = generate_replies(
            model, ids, end_id, max_new_tokens=max_new_tokens, temperature=temperature,
            num_samples=replies, seed=seed,
        )  # fmt: skip
        return [[reply_text(r) for r in group] for group in out]

    def reply_text(r: Reply) -> tuple[str, bool]:
        # a reply that writes another turn token has not ended properly
        ids, cut = cut_at_turn_token(tok, r.ids)
        return tok.decode(ids), r.ended and not cut

    train = make_pairs(line_prompts("train", n, seed, material), sample, flip, seed)
    test = make_pairs(line_prompts("test", n_test, seed, material), sample, flip, seed + 1)
    manifest = {
        "checkpoint": where(policy), "replies": replies, "flip": flip, "seed": seed,
        "corpus": material.corpus, "prompts": {"train": n, "test": n_test},
        "pairs": {"train": len(train), "test": len(test)}, "max_new_tokens": max_new_tokens,
        "temperature": temperature, "rule": LINE_PROMPT,
    }  # fmt: skip
    write_pref_dir(out_dir, train, test, manifest, force)
    return manifest
