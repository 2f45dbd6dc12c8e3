"""Supervised fine-tuning (SFT): a pretrained model learns to answer in the chat format.

The second stage of the video's closing chapter. A base model continues
text; fine-tuned on conversations (`{"messages": [...]}` JSONL, the chat
format of folio/tokenizers/chat.py) it learns to read a user turn and to
answer after `<|assistant|>`, then stop with `<|end|>`.

`train()` is the stage `folio sft` runs:

1. The base: `--init-from run:DIR` (a Folio run or checkpoint) or `hf:DIR`
   (folio/train/init.py). The model's shape, block size included, is the
   base's; the preset's model section gives only dropout.
2. The data: a JSONL file, or a directory. In a directory with a
   train.jsonl (as `folio tasks make` writes), train.jsonl trains and the
   validation conversations are val.jsonl, else test.jsonl; without a
   train.jsonl every *.jsonl trains. Where no validation file exists, a
   held-out slice is drawn: `val_fraction` of the conversations (at least
   one), chosen by a generator seeded with the run's seed. Each line is
   checked; a bad one is one error naming its file and line.
3. The vocabulary: the base tokenizer extended with the characters the
   conversations (and the mixed-in text) need and the four chat tokens; the
   model grows matching rows (new rows at the mean of the old; old logits
   unchanged). The extension is recorded in run.json and every checkpoint.
4. The rows: conversations rendered (mask 1 on assistant content and its
   `<|end|>`) and packed into rows of block_size + 1 tokens
   (folio/data/conversations.py). A conversation longer than that is
   refused, naming its line, never truncated.
5. The objective: the masked next-token loss (loss on assistant tokens
   only), optionally with `mix_fraction` of each training batch's rows taken
   from a pretraining dataset (`MixedObjective`), so the model keeps its
   Shakespeare. Each eval adds greedy pass@1 and the end-of-turn rate on the
   first `eval_prompts` validation conversations, and the text's val loss
   when mixing.
6. The one `Trainer`: accumulation, clipping, checkpoints, exact resume,
   signals, metrics and the loss plot come with it.

Note that with a tasks directory the validation conversations are its
test.jsonl: val loss, pass@1 during training and best.json are then measured
on the test prompts. Report the latest checkpoint (or keep a val.jsonl
apart) when the test figures must be untouched by any choice.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from folio.config.run import RunConfig
from folio.config.sft import EVAL_PROMPTS, MIX_FRACTION, VAL_FRACTION
from folio.data.batches import Dataset, remapped
from folio.data.conversations import Conversation, read_conversations, read_jsonl_file, sft_rows
from folio.errors import FolioError
from folio.eval.tasks import TaskItem, evaluate_tasks, task_items
from folio.tokenizers.extend import token_id_map
from folio.train.init import covering_tokenizer, load_language_model, start_from_base
from folio.train.objectives import MixedObjective
from folio.train.rundir import check_run_dir
from folio.train.trainer import Trainer, TrainResult

REPLY_TOKENS = 32
"""The longest reply generated for the pass@1 figure during training."""


@dataclass
class SFTData:
    """The conversations of a fine-tuning run, split into training and validation."""

    train: list[Conversation]
    val: list[Conversation]
    val_from: str
    """Where the validation conversations came from, for the log and run.json."""


def _held_out(conversations: list[Conversation], fraction: float, seed: int, where: str) -> SFTData:
    if len(conversations) < 2:
        raise FolioError(
            f"{where}: holds {len(conversations)} conversation; at least 2 are needed to hold "
            f"one out for validation (or give a val.jsonl beside train.jsonl)"
        )
    n_val = min(len(conversations) - 1, max(1, round(fraction * len(conversations))))
    order = list(range(len(conversations)))
    random.Random(seed).shuffle(order)
    val_ix = set(order[:n_val])
    return SFTData(
        train=[c for i, c in enumerate(conversations) if i not in val_ix],
        val=[c for i, c in enumerate(conversations) if i in val_ix],
        val_from=f"held out: {n_val} of {len(conversations)} conversations of {where}",
    )


def read_sft_data(path: str | Path, val_fraction: float = VAL_FRACTION, seed: int = 0) -> SFTData:
    """Training and validation conversations from a JSONL file or a directory.

    See the module docstring for which file is which; `val_fraction` and
    `seed` draw the held-out slice when there is no validation file.
    """
    if isinstance(val_fraction, bool) or not 0.0 < val_fraction < 1.0:
        raise FolioError(f"--val-fraction must be between 0 and 1, got {val_fraction!r}")
    p = Path(path).expanduser()
    train_file = p / "train.jsonl"
    if p.is_dir() and train_file.is_file():
        train = read_jsonl_file(train_file)
        for name in ("val.jsonl", "test.jsonl"):
            if (p / name).is_file():
                return SFTData(train, read_jsonl_file(p / name), str(p / name))
        return _held_out(train, val_fraction, seed, str(train_file))
    return _held_out(read_conversations(p), val_fraction, seed, str(p))


class SFTObjective(MixedObjective):
    """Masked loss on conversation rows (and mixed-in text), with task figures at each eval.

    `metrics` adds, besides the text's val loss when mixing, `pass_at_1` and
    `end_rate`: greedy replies (at most REPLY_TOKENS tokens) to `items`,
    scored by their tasks' checkers (folio/eval/tasks.py).
    """

    def __init__(
        self,
        rows: dict,
        batch_size: int,
        tokenizer: Any,
        items: list[TaskItem],
        text: dict[str, np.ndarray] | None = None,
        fraction: float = 0.0,
    ) -> None:
        super().__init__(rows, batch_size, text, fraction)
        self.tokenizer, self.items = tokenizer, items

    def metrics(self, model: nn.Module) -> dict[str, float]:
        out = super().metrics(model)
        if self.items:
            report = evaluate_tasks(
                model, self.tokenizer, self.items, k=0, max_new_tokens=REPLY_TOKENS
            )
            out["pass_at_1"] = report["overall"]["pass_at_1"]
            out["end_rate"] = report["overall"]["end_rate"]
        return out


def _eval_items(val: list[Conversation], tokenizer: Any, n: int) -> list[TaskItem]:
    """Prompts for the pass@1 figure: the first n validation conversations that end with a reply."""
    answered = [c for c in val if c.messages[-1]["role"] == "assistant"]
    return task_items(answered[:n], tokenizer) if n > 0 else []


def train(
    run: RunConfig,
    init_from: str,
    data: str | Path,
    out_dir: str | Path,
    *,
    mix_data: str | Path | None = None,
    mix_fraction: float | None = None,
    val_fraction: float = VAL_FRACTION,
    eval_prompts: int = EVAL_PROMPTS,
    resume: bool = False,
    restart: bool = False,
    progress: bool = True,
    log=print,
    force: bool = False,
) -> TrainResult:
    """Fine-tune the model `init_from` names on the conversations in `data`, writing `out_dir`.

    `mix_data` (a prepared dataset) mixes `mix_fraction` (default
    MIX_FRACTION) of pretraining text rows into each training batch. The
    model's shape comes from the base; `run.train` is used as given.
    """
    check_run_dir(out_dir, "sft", resume=resume, restart=restart)
    if mix_fraction is not None and mix_data is None:
        raise FolioError("--mix-fraction needs --mix-data (the pretraining dataset to mix in)")
    fraction = MIX_FRACTION if mix_fraction is None else mix_fraction
    if isinstance(fraction, bool) or not 0.0 <= fraction < 1.0:
        raise FolioError(f"--mix-fraction must be in [0, 1), got {fraction!r}")
    if isinstance(eval_prompts, bool) or not isinstance(eval_prompts, int) or eval_prompts < 0:
        raise FolioError(f"--eval-prompts must be a non-negative integer, got {eval_prompts!r}")
    # Everything the user gave is read and checked before the base model is loaded.
    convs = read_sft_data(data, val_fraction, run.train.seed)
    mix = Dataset.open(mix_data) if mix_data is not None else None
    base = load_language_model(init_from)
    # The base's tokenizer, grown to read the conversations, the mixed text and the turns.
    texts = (m["content"] for c in convs.train + convs.val for m in c.messages)
    tokenizer = covering_tokenizer(
        base.tokenizer, texts, tokenizers=[mix.tokenizer] if mix else [], chat=True
    )
    start = start_from_base(run, base, tokenizer, run.train.seed)
    del base  # the start holds the weights it needs
    run, block_size = start.run, start.run.model.block_size
    rows = {
        "train": sft_rows(convs.train, tokenizer, block_size),
        "val": sft_rows(convs.val, tokenizer, block_size),
    }
    text = None
    if mix is not None and fraction > 0:
        mix.check_block_size(block_size)
        lut = token_id_map(mix.tokenizer, tokenizer)
        text = {s: remapped(mix.tokens(s), lut) for s in ("train", "val")}
    items = _eval_items(convs.val, tokenizer, eval_prompts)
    objective = SFTObjective(rows, run.train.batch_size, tokenizer, items, text, fraction)
    added = start.record["added_tokens"] if start.record else []
    log(
        f"sft: {len(convs.train)} conversations in {len(rows['train'][0])} rows of "
        f"{block_size} tokens; validation: {len(convs.val)} ({convs.val_from}); "
        f"vocabulary {tokenizer.vocab_size} = base {tokenizer.vocab_size - len(added)} "
        f"+ {len(added)} added"
        + (
            f"; {objective.n_text} of {run.train.batch_size} rows per batch from {mix_data}"
            if text
            else ""
        )
    )
    meta = {
        "stage": "sft",
        "conversations": os.path.abspath(data),
        "val": convs.val_from,
        "mix_data": os.path.abspath(mix_data) if text else None,
        "mix_fraction": fraction if text else 0.0,
        "init_from": init_from,
        "init": start.record,
    }
    trainer = Trainer(
        run, objective, out_dir, tokenizer,
        init_weights=start.weights, meta=meta, init=start.record,
        resume=resume, restart=restart, force=force, progress=progress, log=log,
    )  # fmt: skip
    return trainer.fit()
