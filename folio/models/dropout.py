"""Dropout that a CPU can afford: cheap masks, and causal attention dropout without the waste.

Notation: B batch, T time, nh heads, hs head size, c a chunk of query positions.

Dropout (Srivastava et al. 2014) zeroes each activation with probability p and scales
the survivors by 1 / (1 - p), so the expected value is unchanged. On a CPU PyTorch pays
for it twice over:

- its masks come from `bernoulli_`, a full random draw per element; and
- `scaled_dot_product_attention` has no fused kernel with dropout on a CPU, so training
  falls back to the math path: the whole (T, T) score matrix per head, half of it the
  masked future, with a random draw for every entry, future included.

On the video model (batch 64, block 256, 6 heads) those two are most of a training step.
This module keeps the distribution and drops the waste:

1. `keep_multiplier`: one 64-bit random word (numpy's PCG64-DXSM, seeded from torch's
   generator) gives four 16-bit lanes, and a lane below
   round(p * 65536) drops its element. So p is rounded to a multiple of 1/65536 (0.2
   becomes 0.199997) and the survivors are scaled by 1 / (1 - rounded p).
2. `Dropout`: `nn.Dropout` with those masks on a CPU (PyTorch's own elsewhere).
3. `attention_with_dropout`: softmax(q k^T / sqrt(hs)) with dropout on the weights,
   then @ v, computed one chunk of queries at a time. Chunk j only scores the keys up
   to its last query, so the fully masked blocks above the diagonal are never computed,
   stored or drawn for (3/8 of the (T, T) entries with 4 chunks). The backward pass
   reuses the saved weights and masks.

`GPTConfig.fast_dropout` (default true) picks these; the teaching list-of-Heads
attention keeps `nn.Dropout`, as in the video. On a GPU PyTorch's fused kernels already
handle dropout, so nothing here is used there.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

LANES = 65536
"""Resolution of a mask lane: p is rounded to a multiple of 1 / LANES."""


def drop_threshold(p: float) -> int:
    """How many of the 65536 lane values drop an element: round(p * 65536)."""
    return round(p * LANES)


def usable(p: float) -> bool:
    """Whether the cheap masks represent p: it rounds to neither 0 nor 1."""
    return 0 < drop_threshold(p) < LANES


def keep_scale(p: float) -> float:
    """1 / (1 - p') for the rounded p' the masks actually use, so E[output] = input."""
    return LANES / (LANES - drop_threshold(p))


def random_words(n: int, device: torch.device) -> torch.Tensor:
    """n uniformly random 64-bit words (int64), governed by torch's global generator.

    On a CPU one word is drawn from torch's generator (Mersenne Twister, about 5-10 ns
    a word there) to seed numpy's PCG64-DXSM, which makes the n words about five times
    faster. So `torch.manual_seed` and a saved torch RNG state still decide every mask,
    and resume stays exact.
    """
    # randint's high bound is exclusive: one of 2^64 values is missing, a bias of 2^-64
    if device.type != "cpu":
        return torch.randint(-(2**63), 2**63 - 1, (n,), dtype=torch.int64, device=device)
    seed = int(torch.randint(-(2**63), 2**63 - 1, (1,), dtype=torch.int64)) % 2**64
    return torch.from_numpy(np.random.PCG64DXSM(seed).random_raw(n).view(np.int64))


def keep_multiplier(
    shape: tuple[int, ...] | torch.Size,
    p: float,
    dtype: torch.dtype,
    device: torch.device,
    scaled: bool = True,
) -> torch.Tensor:
    """A `dtype` tensor of `shape`: 0 with probability round(p * 65536) / 65536, else
    `keep_scale(p)` (rounded to `dtype`), or 1 if not `scaled`. Multiplying by the
    scaled one is dropout.

    Draws one random 64-bit word per four elements (`random_words`: `torch.manual_seed`
    and saved RNG states govern it, as they do `nn.Dropout`), reads the words as
    signed 16-bit lanes in [-32768, 32767], and keeps a lane at or
    above t = -32768 + round(p * 65536). The 0/1 is computed as clamp(lane, t - 1, t)
    - (t - 1) in int16: a bool mask would be cheaper to store but slower to apply on a
    CPU (masked_fill and bool-by-float products do not vectorise). For a 16-bit float
    dtype (bf16, fp16) the 0/1 is multiplied by the bit pattern of the kept value, still
    in int16, and reinterpreted: the same numbers without a conversion pass.
    """
    if not 0 <= drop_threshold(p) < LANES:
        raise ValueError(f"dropout probability must round into [0, 1), got {p}")
    if drop_threshold(p) == 0:  # nothing to draw: every element is kept, unscaled
        return torch.ones(shape, dtype=dtype, device=device)
    n = math.prod(shape)
    lanes = random_words((n + 3) // 4, device).view(torch.int16)[:n]  # 4 lanes a word
    t = -32768 + drop_threshold(p)
    keep = lanes.clamp(t - 1, t).sub_(t - 1)  # 0 below t, 1 at or above
    value = keep_scale(p) if scaled else 1.0
    if dtype.itemsize == 2 and dtype.is_floating_point:
        # A 16-bit float's bits fit the int16 lane: 0/1 times the bits of `value` is
        # the bits of 0.0 or of `value`, so no conversion pass is needed.
        bits = int(torch.tensor(value, dtype=dtype).view(torch.int16))
        return keep.mul_(bits).view(dtype).view(shape)
    keep = keep.to(dtype)
    return (keep.mul_(value) if scaled else keep).view(shape)


class _MaskedDropout(torch.autograd.Function):
    """y = x * m with m from `keep_multiplier`; the gradient goes through the same m."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:  # type: ignore[override]
        m = keep_multiplier(x.shape, p, x.dtype, x.device)
        ctx.save_for_backward(m)
        return x * m

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (m,) = ctx.saved_tensors
        return grad * m, None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """`F.dropout` with cheap masks on a CPU; PyTorch's own on other devices."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or not usable(p):
        return nn.functional.dropout(x, p, training=True)
    return _MaskedDropout.apply(x, p)


class Dropout(nn.Dropout):
    """`nn.Dropout` (same state, same repr) whose CPU masks come from `keep_multiplier`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def _chunk_bounds(T: int, causal: bool) -> list[int]:
    """Query chunk edges when causal: a chunk per 64 positions, at most 4 (measured best
    on the video model's block 256 and the speedrun's 128); one chunk otherwise."""
    chunks = max(1, min(4, T // 64)) if causal else 1
    return [round(T * j / chunks) for j in range(chunks + 1)]


class _AttentionDropout(torch.autograd.Function):
    """Chunked attention with dropout on the weights; see `attention_with_dropout`."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, qkv: torch.Tensor, n_head: int, p: float, causal: bool
    ) -> torch.Tensor:
        B, T, C3 = qkv.shape
        nh, hs = n_head, C3 // (3 * n_head)
        # Autocast would recast every product; qkv already carries the dtype to compute
        # in (bf16 under autocast), and softmax accumulates in fp32.
        with torch.autocast(qkv.device.type, enabled=False):
            # One copy into head-major order, so that every chunk below is a plain
            # strided slice the batched matmuls take without copying again.
            q, k, v = qkv.view(B, T, 3, nh, hs).permute(2, 0, 3, 1, 4).contiguous()
            # (B, T, 3C) -> (B, T, 3, nh, hs) -> 3 x (B, nh, T, hs)
            # The two scales go on the narrow (T, hs) operands, not on the (T, T) weights:
            # 1/sqrt(hs) on the queries, dropout's 1/(1-p) on the values.
            q.mul_(hs**-0.5)
            v_kept = v * keep_scale(p)
            future = torch.zeros(T, T, dtype=q.dtype, device=q.device)
            if causal:
                future.masked_fill_(
                    torch.ones_like(future, dtype=torch.bool).triu(1), float("-inf")
                )
            y = qkv.new_empty(B, T, nh, hs)
            saved: list[torch.Tensor] = []
            masked = drop_threshold(p) > 0
            bounds = _chunk_bounds(T, causal)
            for start, end in zip(bounds, bounds[1:], strict=False):
                seen = end if causal else T  # chunk j's queries see keys [0, seen)
                # (B, nh, c, hs) @ (B, nh, hs, seen) -> (B, nh, c, seen), the future at -inf
                att = torch.matmul(q[:, :, start:end], k[:, :, :seen].transpose(-2, -1))
                att = torch.softmax(att.add_(future[start:end, :seen]), dim=-1)
                if masked:
                    m = keep_multiplier(att.shape, p, att.dtype, att.device, scaled=False)  # 0/1
                    dropped = att * m
                else:  # p = 0: no mask to draw or apply (saved as att, never read)
                    m = dropped = att
                # (B, nh, c, seen) @ (B, nh, seen, hs) -> (B, nh, c, hs), stored as (B, c, nh, hs)
                y[:, start:end] = torch.matmul(dropped, v_kept[:, :, :seen]).transpose(1, 2)
                saved += [att, m, dropped]
        ctx.save_for_backward(q, k, v, *saved)
        ctx.bounds, ctx.causal, ctx.scales = bounds, causal, (hs**-0.5, keep_scale(p))
        ctx.masked = masked
        return y.view(B, T, nh * hs)  # (B, T, nh, hs) -> (B, T, C)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):  # type: ignore[override]
        q, k, v, *saved = ctx.saved_tensors  # q holds q / sqrt(hs)
        B, nh, T, hs = q.shape
        q_scale, keep = ctx.scales
        with torch.autocast(q.device.type, enabled=False):
            # y = dropped @ (v / (1-p)): fold 1/(1-p) into dy once
            dy = dy.to(q.dtype).view(B, T, nh, hs).transpose(1, 2) * keep  # (B, nh, T, hs)
            dqkv = q.new_zeros(3, B, nh, T, hs)
            dq, dk, dv = dqkv
            for j, (start, end) in enumerate(zip(ctx.bounds, ctx.bounds[1:], strict=False)):
                att, m, dropped = saved[3 * j : 3 * j + 3]
                seen = end if ctx.causal else T
                dyc = dy[:, :, start:end]  # (B, nh, c, hs)
                # (B, nh, seen, c) @ (B, nh, c, hs) -> (B, nh, seen, hs)
                dv[:, :, :seen] += torch.matmul(dropped.transpose(-2, -1), dyc)
                # (B, nh, c, hs) @ (B, nh, hs, seen) -> (B, nh, c, seen), through the mask
                d_att = torch.matmul(dyc, v[:, :, :seen].transpose(-2, -1))
                if ctx.masked:
                    d_att.mul_(m)
                # softmax's backward: d_scores = att * (d_att - sum(d_att * att))
                d_scores = torch._softmax_backward_data(d_att, att, -1, att.dtype)
                dq[:, :, start:end] = torch.matmul(d_scores, k[:, :, :seen])
                dk[:, :, :seen] += torch.matmul(d_scores.transpose(-2, -1), q[:, :, start:end])
            dq.mul_(q_scale)  # the scores were (q / sqrt(hs)) k^T
            # 3 x (B, nh, T, hs) -> (B, T, 3, nh, hs) -> (B, T, 3C), the layout of qkv
            grad = dqkv.permute(1, 3, 0, 2, 4).reshape(B, T, 3 * nh * hs)
        return grad, None, None, None


def attention_with_dropout(
    qkv: torch.Tensor, n_head: int, p: float, causal: bool = True
) -> torch.Tensor:
    """Multi-head self-attention with dropout p on the weights, from the fused projection.

    qkv: (B, T, 3C), queries then keys then values, each split into n_head heads of
    hs = C / n_head -> (B, T, C), the heads side by side. Per head the same function as
    `F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=causal)` in training,
    with masks from `keep_multiplier` (tested equal at p = 0 and against the masks
    replayed by hand).
    """
    if qkv.dim() != 3 or qkv.shape[-1] % (3 * n_head):
        raise ValueError(f"qkv must be (B, T, 3 * n_head * hs), got {tuple(qkv.shape)}")
    return _AttentionDropout.apply(qkv, n_head, p, causal)
