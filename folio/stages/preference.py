"""Learning from preference pairs: a Bradley-Terry reward model, and DPO.

Notation: N pairs, B pairs per batch, T positions.

Both stages read pairs (folio/data/prefs.py) rendered as two rows each:

    chosen   = prompt (ending with <|assistant|>), chosen reply, END, padding
    rejected = prompt, rejected reply, END, padding

- The reward model (`RewardObjective`) scores each row at its END token and
  learns P(chosen preferred) = sigma(r_chosen - r_rejected) (Bradley-Terry,
  as in Ouyang et al. 2022), optionally with a centring term. Its figure is
  the held-out pairwise accuracy: the share of test pairs it orders as the
  labellers did (at most 1 minus the share of flipped labels, on average).
- DPO (`DPOObjective`, Rafailov et al. 2023) skips the reward model: the
  policy's own log-ratio to a frozen reference is the reward,
  beta * (log pi(y) - log pi_ref(y)), summed over the reply's tokens, and the
  same Bradley-Terry loss is applied to it. The reference's log-probs never
  change, so they are computed once, before training. With `ptx_coef`, each
  step adds the SFT loss on conversation rows, as PPO-ptx does
  (folio/stages/ptx.py).

Both are objectives of the one `Trainer`. A pair too long for the model's
context is refused, as SFT refuses a long conversation: cutting it would
drop the end of the reply, which is what the score reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from folio.config.prefs import PrefConfig as PrefConfig
from folio.data.prefs import Pair, read_pref_dir
from folio.errors import FolioError
from folio.eval.gold import gold_report
from folio.rl.estimators import bradley_terry_loss, dpo_loss, sequence_logprobs
from folio.rl.rollout import reply_logprobs
from folio.stages.ptx import PtxRows, draw_ptx, ptx_loss
from folio.tokenizers.chat import end_of_turn_id, render_prompt
from folio.train.objectives import Objective

GOLD_SEED = 0
"""Seed of the replies the gold score samples: the same draws at every eval."""


@dataclass
class PairRows:
    """N pairs as padded rows: the chosen rows, then the rejected rows (2N, T)."""

    tokens: torch.Tensor
    """(2N, T) int64: prompt, reply, END, padding; rows [0, N) chosen, [N, 2N) rejected."""
    mask: torch.Tensor
    """(2N, T - 1) float32: 1 where the target tokens[:, t + 1] is a reply token (END included)."""
    end: torch.Tensor
    """(2N,) int64: the position of each row's END token (where a reward model reads)."""

    def __len__(self) -> int:
        return self.tokens.shape[0] // 2

    def rows(self, pairs: torch.Tensor) -> torch.Tensor:
        """Row indices of some pairs: their chosen rows, then their rejected rows."""
        return torch.cat([pairs, pairs + len(self)])


def pair_rows(pairs: Sequence[Pair], tokenizer: Any, block_size: int) -> PairRows:
    """Render pairs for a model of context `block_size`; a FolioError names a pair that does not
    fit or holds text outside the vocabulary."""
    end_id = end_of_turn_id(tokenizer)
    rendered: list[tuple[list[int], int]] = []
    for side in ("chosen", "rejected"):
        for p in pairs:
            try:
                prompt = render_prompt(tokenizer, p.prompt)
                ids = prompt + tokenizer.encode(getattr(p, side)) + [end_id]
            except FolioError as e:
                raise FolioError(f"{p.where or 'a pair'}: {e}") from None
            if len(ids) > block_size:
                raise FolioError(
                    f"{p.where or 'a pair'}: the prompt and {side} reply are {len(ids)} tokens, "
                    f"longer than the model's context of {block_size}; shorten them"
                )
            rendered.append((ids, len(prompt)))
    T = max(len(ids) for ids, _ in rendered)
    tokens = torch.full((len(rendered), T), end_id, dtype=torch.long)
    mask = torch.zeros(len(rendered), T - 1)
    end = torch.zeros(len(rendered), dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(rendered):
        tokens[i, : len(ids)] = torch.tensor(ids)
        mask[i, n_prompt - 1 : len(ids) - 1] = 1.0
        end[i] = len(ids) - 1
    return PairRows(tokens, mask, end)


def _batches(n: int, size: int) -> list[torch.Tensor]:
    return [torch.arange(a, min(a + size, n)) for a in range(0, n, size)]


class RewardObjective(Objective):
    """Bradley-Terry on preference pairs, scores read at the END token (a `RewardModel`)."""

    splits = ("train", "val")

    def __init__(self, data: dict[str, PairRows], batch_size: int, center_coef: float = 0.0):
        self.data, self.batch_size, self.center_coef = data, batch_size, center_coef
        self.tokens_per_batch = 2 * batch_size * data["train"].tokens.shape[1]

    def batch(self, split: str, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        d = self.data[split]
        rows = d.rows(torch.randint(len(d), (self.batch_size,), generator=generator))
        return d.tokens[rows], d.end[rows]

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        tokens, end = batch
        chosen, rejected = model.score_at(tokens, end).chunk(2)
        return bradley_terry_loss(chosen, rejected, self.center_coef)

    @torch.no_grad()
    def metrics(self, model: nn.Module) -> dict[str, float]:
        """Held-out pairwise accuracy and mean margin r_chosen - r_rejected on every test pair."""
        return pairwise_accuracy(model, self.data["val"], self.batch_size)


@torch.no_grad()
def pairwise_accuracy(model: nn.Module, data: PairRows, batch_size: int = 64) -> dict[str, float]:
    """{"accuracy", "margin"}: the share of pairs a reward model orders as labelled, and the mean
    score difference."""
    device = next(model.parameters()).device
    margins = []
    for pairs in _batches(len(data), batch_size):
        rows = data.rows(pairs)
        chosen, rejected = model.score_at(
            data.tokens[rows].to(device), data.end[rows].to(device)
        ).chunk(2)
        margins.append((chosen - rejected).float().cpu())
    m = torch.cat(margins)
    return {"accuracy": float((m > 0).float().mean()), "margin": float(m.mean())}


@torch.no_grad()
def sequence_logprobs_of(model: nn.Module, data: PairRows, batch_size: int = 64) -> torch.Tensor:
    """log pi(reply) of every row (2N,), summed over reply tokens, at temperature 1."""
    device = next(model.parameters()).device
    out = []
    for rows in _batches(data.tokens.shape[0], batch_size):
        mask = data.mask[rows].to(device)
        lp = reply_logprobs(model, data.tokens[rows].to(device), mask, 1.0, None)
        out.append(sequence_logprobs(lp, mask).float().cpu())
    return torch.cat(out)


class DPOObjective(Objective):
    """DPO on preference pairs against a frozen reference (see the module docstring)."""

    splits = ("train", "val")

    def __init__(
        self,
        data: dict[str, PairRows],
        reference: nn.Module,
        batch_size: int,
        cfg: PrefConfig,
        tokenizer: Any,
        gold_prompts: Sequence[str],
        ptx: PtxRows | None = None,
    ) -> None:
        self.data, self.batch_size, self.cfg, self.tokenizer = data, batch_size, cfg, tokenizer
        self.ptx = ptx
        reference.requires_grad_(False)
        reference.eval()
        self.reference = reference  # frozen: for the KL of the gold replies only
        # The reference never changes: its log-probs are computed once, here.
        self.ref_logprobs = {s: sequence_logprobs_of(reference, d) for s, d in data.items()}
        self.gold_prompts = list(gold_prompts)
        self.tokens_per_batch = 2 * batch_size * data["train"].tokens.shape[1]

    def batch(self, split: str, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        d = self.data[split]
        rows = d.rows(torch.randint(len(d), (self.batch_size,), generator=generator))
        batch = d.tokens[rows], d.mask[rows], self.ref_logprobs[split][rows]
        if self.ptx is not None and split == "train":  # with ptx: conversation rows as well
            batch += draw_ptx(self.ptx, self.batch_size, generator)
        return batch

    def _logratios(self, model: nn.Module, batch: tuple[torch.Tensor, ...]):
        tokens, mask, ref = batch[:3]
        lp = sequence_logprobs(reply_logprobs(model, tokens, mask, 1.0, None), mask)  # (2B,)
        return lp.chunk(2), ref.to(lp.dtype).chunk(2)

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        (chosen, rejected), (ref_chosen, ref_rejected) = self._logratios(model, batch)
        loss, _, _ = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.cfg.beta)
        if len(batch) > 3:  # ptx (folio/stages/ptx.py): the SFT loss on conversation rows
            loss = loss + self.cfg.ptx_coef * ptx_loss(model, *batch[3:])
        return loss

    @torch.no_grad()
    def metrics(self, model: nn.Module) -> dict[str, float]:
        """On every held-out pair: the implicit reward margin, pairwise accuracy, and the chosen
        and rejected log-probs; and, on replies sampled to held-out prompts, the gold score, the
        end rate and the KL to the reference (folio/eval/gold.py, as `folio eval gold`)."""
        d, ref = self.data["val"], self.ref_logprobs["val"]
        lp = sequence_logprobs_of(model, d)
        chosen, rejected = lp.chunk(2)
        ref_chosen, ref_rejected = ref.chunk(2)
        _, margin, accuracy = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.cfg.beta)
        out = {
            "margin": float(margin),
            "accuracy": float(accuracy),
            "chosen_logprob": float(chosen.mean()),
            "rejected_logprob": float(rejected.mean()),
        }
        if self.gold_prompts:  # hand-written pairs may have no prompt the gold rule applies to
            gold = gold_report(
                model, self.tokenizer, self.gold_prompts, reference=self.reference,
                max_new_tokens=self.cfg.max_new_tokens, seed=GOLD_SEED,
            )  # fmt: skip
            out |= {
                k: v for k, v in gold.items() if k.startswith("gold_") or k in ("kl", "end_rate")
            }
        return out


def run_flags(trainer_args: dict[str, Any]) -> dict[str, bool]:
    """The resume and restart flags among a stage's Trainer arguments (for check_run_dir)."""
    return {k: bool(trainer_args.get(k, False)) for k in ("resume", "restart")}


def preference_rows(path: str | Path, tokenizer: Any, block_size: int):
    """A preference directory's pairs as rows {"train", "val"}, and its held-out pairs."""
    train, test = read_pref_dir(path)
    rows = {
        "train": pair_rows(train, tokenizer, block_size),
        "val": pair_rows(test, tokenizer, block_size),
    }
    return rows, test
