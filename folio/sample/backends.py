"""Where the serving engine's sequences keep their caches, and how their forwards run.

Notation: B sequences in a call, T time, V vocabulary size.

The engine (`folio.sample.engine`) decides which sequences prefill and which
decode in a step; a backend runs those forwards and owns the caches:

- `ModuleBackend`: the model's own forward, with a `KVCache` of batch 1 per
  sequence (`CacheBatch` steps them together). Prompts are prefilled one at a
  time. Any model: one without a cache re-runs its window every step.
- `SlotBackend`: the static decode paths, one slot of `SlotDecoder` per
  sequence (`folio.sample.slots`). New prompts are prefilled together. On
  the compiled paths the active sequences are kept in the first slots (a
  compiled step takes the first B rows); an eager step takes any slots. A new
  sequence takes the free slot holding the longest prefix of its prompt, so
  that only the rest is prefilled.

A sequence is anything with `tokens` (its ids), `start` (its window is
tokens[start:]), `slot` (the backend's handle on its cache, None when it has
none) and `cached` (the cache holds tokens[start : start + cached]).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from folio.models import invariant
from folio.models.kv_cache import CacheBatch, KVCache
from folio.sample.paths import DecodePath
from folio.sample.slots import SlotDecoder


class Sequence(Protocol):
    tokens: list[int]
    start: int
    slot: Any
    cached: int


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading ids a and b share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class ModuleBackend:
    """The model's forward with a `KVCache` per sequence; see the module docstring."""

    def __init__(self, model: nn.Module, batch_invariant: bool) -> None:
        self.model, self.batch_invariant = model, batch_invariant
        self.supports_cache: bool = model.supports_kv_cache
        self.free: list[KVCache] = []
        self.made = 0
        """Caches allocated so far (at most the engine's max_batch)."""

    def admit(self, seq: Sequence) -> None:
        """Give `seq` a cache."""
        if self.supports_cache:
            if self.free:
                seq.slot = self.free.pop()
                seq.slot.reset()
            else:
                seq.slot = self.model.new_kv_cache(1)
                self.made += 1

    def release(self, seq: Sequence) -> None:
        if seq.slot is not None:
            self.free.append(seq.slot)
            seq.slot = None

    def reset(self, seqs: list[Sequence]) -> None:
        """Free the caches of `seqs`, all the sequences there are."""
        for seq in seqs:
            self.release(seq)

    def prefill(self, seqs: list[Sequence]) -> tuple[torch.Tensor, int]:
        """Each sequence's window, one after another: the next-token logits (B, V), and the
        tokens computed."""
        rows, computed = [], 0
        for seq in seqs:
            window = torch.tensor([seq.tokens[seq.start :]], device=self._device())  # (1, T)
            if seq.slot is not None:
                seq.slot.reset()
            logits, _ = self.model(window, cache=seq.slot, last_only=True)
            seq.cached = window.shape[1] if seq.slot is not None else 0
            computed += window.shape[1]
            rows.append(logits[0, -1])  # (1, T, V) -> (V,)
        return torch.stack(rows).float(), computed

    def decode(self, seqs: list[Sequence]) -> torch.Tensor:
        """One token for each sequence, in one batched forward: (B, V) logits."""
        idx = torch.tensor([[s.tokens[-1]] for s in seqs], device=self._device())  # (B, 1)
        batch = CacheBatch([s.slot for s in seqs])
        if self.batch_invariant:
            with invariant.batch_invariant():
                logits, _ = self.model(idx, cache=batch, last_only=True)  # (B, 1, V)
        else:
            logits, _ = self.model(idx, cache=batch, last_only=True)  # (B, 1, V)
        for s in seqs:
            s.cached += 1
        return logits[:, -1].float()  # (B, V)

    def _device(self) -> torch.device:
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")


class SlotBackend:
    """One `SlotDecoder` slot per sequence; see the module docstring."""

    supports_cache = True

    def __init__(self, model: nn.Module, slots: int, path: DecodePath, exact: bool) -> None:
        self.decoder = SlotDecoder(model, slots, path, exact)
        self.compact = path.how != "static"
        """Whether the active sequences must fill the first slots (a compiled step's rows)."""
        self.rows: list[Sequence] = []
        """The active sequences; when compact, rows[i] is the one in slot i."""

    def admit(self, seq: Sequence) -> None:
        """Give `seq` the free slot that holds the longest prefix of its window (the emptiest
        among equals)."""
        d, window = self.decoder, seq.tokens[seq.start :]
        taken = {s.slot for s in self.rows}
        best = max(
            (s for s in range(d.slots) if s not in taken),
            key=lambda s: (common_prefix(d.held[s], window), -len(d.held[s])),
        )
        if self.compact:  # into the first free slot
            d.swap(len(self.rows), best)
            best = len(self.rows)
        seq.slot, seq.cached = best, 0
        self.rows.append(seq)

    def release(self, seq: Sequence) -> None:
        """Free `seq`'s slot, keeping what it holds; when compact, the last active sequence
        takes its place."""
        if self.compact:
            i, last = seq.slot, len(self.rows) - 1
            self.decoder.swap(i, last)
            moved = self.rows[last]
            self.rows[i], moved.slot = moved, i
            self.rows.pop()
        else:
            self.rows = [s for s in self.rows if s is not seq]
        seq.slot = None

    def reset(self, seqs: list[Sequence]) -> None:
        """Free every slot and forget what they hold (after an error left them unknown)."""
        for seq in seqs:
            seq.slot = None
        self.rows = []
        self.decoder.held = [[] for _ in range(self.decoder.slots)]

    def _exchange(self, i: int, j: int) -> None:
        """Swap the sequences (and caches) of slots i and j."""
        self.decoder.swap(i, j)
        a, b = self.rows[i], self.rows[j]
        self.rows[i], self.rows[j] = b, a
        a.slot, b.slot = j, i

    def prefill(self, seqs: list[Sequence]) -> tuple[torch.Tensor, int]:
        """Every window together, after what each slot already holds: logits (B, V), and the
        tokens computed."""
        rows = []
        for seq in seqs:
            window = seq.tokens[seq.start :]
            held = min(common_prefix(self.decoder.held[seq.slot], window), len(window) - 1)
            rows.append((seq.slot, window, held))
        logits = self.decoder.prefill(rows)
        for seq, (_, window, _) in zip(seqs, rows, strict=True):
            seq.cached = len(window)
        return logits.float(), sum(len(w) - h for _, w, h in rows)

    def decode(self, seqs: list[Sequence]) -> torch.Tensor:
        """One token for each sequence: (B, V) logits, in the order of `seqs`."""
        if not self.compact:  # an eager step takes the slots where they are
            logits = self.decoder.step(
                [s.tokens[-1] for s in seqs], [s.cached for s in seqs], [s.slot for s in seqs]
            )
            for s in seqs:
                s.cached += 1
            return logits
        B = len(seqs)
        stepping = {id(s) for s in seqs}
        # The step takes the first B slots: move any other sequence (one being prefilled
        # in this step) past them. New sequences join at the end, so this is rare.
        later = (i for i in range(B, len(self.rows)) if id(self.rows[i]) in stepping)
        for i in range(B):
            if id(self.rows[i]) not in stepping:
                self._exchange(i, next(later))
        ordered = self.rows[:B]
        logits = self.decoder.step(
            [s.tokens[-1] for s in ordered], [s.cached for s in ordered]
        )  # (B, V) by slot
        for s in ordered:
            s.cached += 1
        return logits[torch.tensor([s.slot for s in seqs])]

    def warm_up(self) -> None:
        """Compile every bucket's step now, not at a request's first step."""
        self.decoder.warm_up()
