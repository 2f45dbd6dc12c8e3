"""A pool of KV-cache slots over one `StaticDecoder`: the serving engine's static decode paths.

Notation: S slots, B rows in a step, T new positions, L cache positions
(block_size), nh heads, hs head size, V vocabulary size.

The engine (`folio.sample.engine`) serves many sequences of different lengths
at once. Here each sequence owns one row ("slot") of the decoder's static
cache, (S, nh, L, hs) per layer, and each row sits at its own position: the
decode step takes one token and one position per row, so sequences of any
lengths step together. Three operations:

- `prefill`: the new prompts of a step, padded into one (B, T) batch, run
  together through the position-wise layers (embeddings, LayerNorm, the
  projections, the MLP, the head), each row's keys and values written into
  its slot at its own positions. A row may start after a prefix its slot
  already holds (prefix reuse): only the new tokens are computed.
- `step`: one new token for each of B slots.
- `swap`: exchange two slots' contents, so that the engine keeps its active
  sequences in the first slots, which is what a compiled step takes (its
  shapes are fixed); an eager step takes any slots, and nothing moves.

Two modes.

Exact (`exact=True`, float32 weights, eager): a row's numbers never depend on
the other rows, nor on how its positions were split between prefills and
steps. The linear layers run Folio's batch-invariant operator
(`folio.models.invariant`: one summation order per output, whatever the rows),
and attention runs one query at a time, each over exactly the keys of its own
position: query t of sequence s is always the same call, `sdpa(q (1, nh, 1,
hs), keys[s, :, :t+1], values[s, :, :t+1])`, whether t comes in a prefill of 30
tokens among 31 other prompts, in a prefill that reuses a held prefix, or in a
decode step. So a request gives the same bits alone or among others, and a
chat's next turn that reuses its history gives the same bits as a fresh
prefill of the whole conversation. The price is a Python loop over queries in
a prefill, cheap beside the products at these sizes.

Fast (every other path): the prefill attends with one causal call per batch;
the step runs eagerly, or compiled (`torch.compile`, or ahead of time with
AOTInductor) once per bucket of rows (1, 2, 4, ... up to S), the active count
rounded up. Rows past the active ones in a bucket write their (ignored) keys
at position L - 1 of free slots, which no live sequence reads before writing.
These paths give up batch invariance: the library's and the compiler's
kernels sum in orders that depend on the number of rows.

Each slot remembers the tokens whose keys and values it holds, from position
0 (`held`), so that the engine can hand a new request the free slot that
already holds the longest prefix of its prompt (llama.cpp's prompt cache,
vLLM's prefix caching, at the granularity of whole slots).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F

from folio.models import invariant
from folio.models.gpt import GPT
from folio.sample.decode import StaticDecoder
from folio.sample.paths import DecodePath

Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""A compiled step of one bucket: tokens (B, 1), positions (B, 1) -> logits (B, V)."""


def _bucket(rows: int, slots: int) -> int:
    """The smallest power of two >= rows, at most `slots`."""
    b = 1
    while b < rows:
        b *= 2
    return min(b, slots)


class SlotDecoder:
    """S cache slots of one model, prefilled and stepped row by row; see the module docstring."""

    def __init__(self, model: GPT, slots: int, path: DecodePath, exact: bool) -> None:
        if exact and (path.how != "static" or path.weights != "float32"):
            raise ValueError("the exact mode is the eager static path with float32 weights")
        self.decoder = StaticDecoder(model, slots, path.weights)
        self.path, self.exact, self.slots = path, exact, slots
        self.block_size = model.config.block_size
        self.held: list[list[int]] = [[] for _ in range(slots)]
        """Slot s holds the keys and values of held[s], at positions 0..len - 1."""
        self._steps: dict[int, Step] = {}

    # --- the two ways of attending --------------------------------------------------------------

    def _write(self, i: int, slot: int, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store layer i's keys and values k, v (nh, T, hs) in `slot` at positions start..."""
        K, V = self.decoder.k[i], self.decoder.v[i]
        end = start + k.shape[1]
        K[slot, :, start:end] = k.to(K.dtype)
        V[slot, :, start:end] = v.to(V.dtype)

    def _one_query(self, i: int, slot: int, q: torch.Tensor, position: int) -> torch.Tensor:
        """Query q (1, nh, 1, hs) at `position` over its slot's keys: the exact mode's only call."""
        K, V = self.decoder.k[i], self.decoder.v[i]
        keys, values = K[slot : slot + 1, :, : position + 1], V[slot : slot + 1, :, : position + 1]
        return F.scaled_dot_product_attention(q.contiguous(), keys, values)  # (1, nh, 1, hs)

    def _prefill_attend(self, rows: list[tuple[int, int, int]]):
        """`Attend` for a prefill of rows (slot, start, new tokens), padded to the longest."""

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            for b, (slot, start, n) in enumerate(rows):
                self._write(i, slot, start, k[b, :, :n], v[b, :, :n])
            y = torch.zeros_like(q)  # (B, nh, T, hs); padding positions stay 0
            if self.exact:
                for b, (slot, start, n) in enumerate(rows):
                    for t in range(n):
                        y[b : b + 1, :, t : t + 1] = self._one_query(
                            i, slot, q[b : b + 1, :, t : t + 1], start + t
                        )
                return y
            dtype = self.decoder.k[i].dtype
            if all(start == 0 for _, start, _ in rows):  # fresh prompts: their own keys only
                qc, kc, vc = q.to(dtype), k.to(dtype), v.to(dtype)
                return F.scaled_dot_product_attention(qc, kc, vc, is_causal=True).float()
            K, V = self.decoder.k[i], self.decoder.v[i]
            for b, (slot, start, n) in enumerate(rows):  # after a held prefix: the cache
                end = start + n
                # query t (at start + t) sees keys 0..start + t: (n, end)
                mask = torch.arange(end, device=q.device) <= torch.arange(start, end)[:, None]
                y[b : b + 1, :, :n] = F.scaled_dot_product_attention(
                    q[b : b + 1, :, :n].to(dtype),
                    K[slot : slot + 1, :, :end],
                    V[slot : slot + 1, :, :end],
                    attn_mask=mask.to(q.device),
                ).float()
            return y

        return attend

    def _step_attend(self, slots: list[int], positions: list[int]):
        """`Attend` for an eager step of `slots` at `positions`, one of each per row."""
        device = self.decoder.wte.device
        rows, pos = torch.tensor(slots, device=device), torch.tensor(positions, device=device)

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            K, V = self.decoder.k[i], self.decoder.v[i]
            K[rows, :, pos] = k[:, :, 0].to(K.dtype)  # (B, nh, hs) into each row's position
            V[rows, :, pos] = v[:, :, 0].to(V.dtype)
            if self.exact:
                return torch.cat(
                    [
                        self._one_query(i, s, q[b : b + 1], p)
                        for b, (s, p) in enumerate(zip(slots, positions, strict=True))
                    ]
                )  # B x (1, nh, 1, hs) -> (B, nh, 1, hs)
            filled = max(positions) + 1
            mask = torch.arange(filled, device=device) <= pos[:, None]  # (B, S)
            keys, values = K[rows, :, :filled], V[rows, :, :filled]  # (B, nh, S, hs) copies
            y = F.scaled_dot_product_attention(
                q.to(K.dtype), keys, values, attn_mask=mask[:, None, None]
            )
            return y.float()

        return attend

    def _mode(self) -> contextlib.AbstractContextManager:
        return invariant.batch_invariant() if self.exact else contextlib.nullcontext()

    # --- the operations -------------------------------------------------------------------------

    def prefill(self, rows: list[tuple[int, list[int], int]]) -> torch.Tensor:
        """Fill slots from windows: rows of (slot, window, start), where the slot already holds
        window[:start]; returns the logits (B, V) after each window's last token."""
        device = self.decoder.wte.device
        news = [window[start:] for _, window, start in rows]
        T = max(len(n) for n in news)
        idx = torch.zeros(len(rows), T, dtype=torch.long)
        pos = torch.zeros(len(rows), T, dtype=torch.long)
        for b, ((_, _, start), new) in enumerate(zip(rows, news, strict=True)):
            idx[b, : len(new)] = torch.tensor(new)
            pos[b] = torch.arange(start, start + T).clamp_max(self.block_size - 1)
        last = torch.tensor([len(n) - 1 for n in news], device=device)
        spans = [(slot, start, len(new)) for (slot, _, start), new in zip(rows, news, strict=True)]
        with torch.no_grad(), self._mode():
            logits = self.decoder._forward(
                idx.to(device), pos.to(device), attend=self._prefill_attend(spans), last=last
            )
        for slot, window, _ in rows:
            self.held[slot] = list(window)
        return logits

    def step(
        self, tokens: list[int], positions: list[int], slots: list[int] | None = None
    ) -> torch.Tensor:
        """Append tokens[b] at positions[b] in slots[b]; logits (B, V). A compiled step takes
        the first B slots (`slots` None); an eager one, any."""
        device = self.decoder.wte.device
        B = len(tokens)
        slots = list(range(B)) if slots is None else slots
        if self.path.how == "static":
            idx = torch.tensor(tokens, device=device)[:, None]  # (B, 1)
            pos = torch.tensor(positions, device=device)[:, None]
            with torch.no_grad(), self._mode():
                logits = self.decoder._forward(idx, pos, attend=self._step_attend(slots, positions))
        else:
            if slots != list(range(B)):
                raise ValueError("a compiled step takes the first slots")
            rows = _bucket(B, self.slots)
            pad = rows - B  # free slots beyond the active ones: position L - 1 (module docstring)
            for s in range(B, rows):
                del self.held[s][self.block_size - 1 :]
            idx = torch.tensor(tokens + [0] * pad, device=device)[:, None]  # (rows, 1)
            pos = torch.tensor(positions + [self.block_size - 1] * pad, device=device)[:, None]
            with torch.no_grad():
                logits = self._compiled(rows)(idx, pos)[:B]
        for s, p, token in zip(slots, positions, tokens, strict=True):
            held = self.held[s]
            del held[p:]
            held.append(token)
        return logits

    def _compiled(self, rows: int) -> Step:
        """The compiled step of the first `rows` slots, built at first use."""
        step = self._steps.get(rows)
        if step is not None:
            return step
        d = self.decoder
        n = d.config.n_layer
        full = d.step_inputs()
        weights, caches = full[: -2 * n], full[-2 * n :]
        bound = [*weights, *(c[:rows] for c in caches)]  # views: the first rows of each cache
        if self.path.how == "aot":
            from folio.sample.aot import compile_step

            def traced(idx, pos, *inputs):  # every tensor it reads is an input
                return (d.traced_forward(idx, pos, inputs),)

            device = d.wte.device
            example = tuple(torch.zeros(rows, 1, dtype=torch.long, device=device) for _ in "ip")
            library, _ = compile_step(traced, example, bound)

            def step(idx: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
                return library(idx, pos)[0]

        else:
            forward = torch.compile(d.traced_forward, dynamic=False, options={"cpp_wrapper": True})

            def step(idx: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
                return forward(idx, pos, tuple(bound))

        self._steps[rows] = step
        return step

    def warm_up(self) -> None:
        """Build the compiled step of every bucket now (a no-op on the eager path)."""
        if self.path.how == "static":
            return
        device = self.decoder.wte.device
        rows = 1
        while True:
            idx = torch.zeros(rows, 1, dtype=torch.long, device=device)
            with torch.no_grad():
                self._compiled(rows)(idx, torch.full_like(idx, self.block_size - 1))
            for s in range(rows):  # position L - 1 of these slots now holds nothing of theirs
                del self.held[s][self.block_size - 1 :]
            if rows == self.slots:
                return
            rows = _bucket(rows + 1, self.slots)

    def swap(self, a: int, b: int) -> None:
        """Exchange the contents of slots a and b."""
        if a == b:
            return
        for cache in (*self.decoder.k, *self.decoder.v):
            row = cache[a].clone()
            cache[a].copy_(cache[b])
            cache[b].copy_(row)
        self.held[a], self.held[b] = self.held[b], self.held[a]
