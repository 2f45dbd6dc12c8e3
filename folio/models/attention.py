"""Self-attention, built up the way the video teaches it.

Notation: B batch, T time (sequence length), C channels (n_embd),
nh number of heads, hs head size (C // nh), S length of another sequence.

The file reads top to bottom as the lesson does:

1. Four ways for a token to aggregate its past: a loop that averages, a matrix
   multiply with a row-normalised lower-triangular matrix, masked_fill(-inf)
   then softmax, and finally data-dependent weights from queries and keys.
   Versions 1-3 compute exactly the same thing (tested).
2. `Head`: one head of self-attention with query, key and value projections;
   scores are scaled by 1/sqrt(hs) so that at initialisation they keep unit
   variance and softmax does not saturate into one-hot ("scaled attention",
   Attention Is All You Need, section 3.2.1).
3. `MultiHeadAttention`: the teaching form, a list of `Head`s run side by side,
   concatenated, then projected.
4. `CausalSelfAttention`: the fused form used for real training; one qkv
   projection, heads as a batch dimension and PyTorch's
   `scaled_dot_product_attention`. It also serves the KV cache for sampling.
5. `CrossAttention`: queries from one sequence, keys and values from another
   (the encoder-decoder attention of the original Transformer).

`causal=True` makes a decoder (a token sees only its past); `causal=False`
makes an encoder (every token sees the whole sequence).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from folio.models.dropout import Dropout, attention_with_dropout, usable
from folio.models.kv_cache import LayerCacheGroup
from folio.models.linear import Linear

if TYPE_CHECKING:
    from folio.models.kv_cache import LayerKVCache


# --- 1. four versions of "average the past" -------------------------------------


def average_past_loop(x: torch.Tensor) -> torch.Tensor:
    """Version 1: for every (b, t), average x[b, :t+1] with explicit loops."""
    B, T, C = x.shape
    out = torch.zeros_like(x)
    for b in range(B):
        for t in range(T):
            out[b, t] = x[b, : t + 1].mean(dim=0)  # (t+1, C) -> (C,)
    return out


def average_past_matmul(x: torch.Tensor) -> torch.Tensor:
    """Version 2: the same average as one matmul with a row-normalised lower triangle."""
    T = x.shape[1]
    wei = torch.tril(torch.ones(T, T, dtype=x.dtype, device=x.device))
    wei = wei / wei.sum(dim=1, keepdim=True)
    return wei @ x  # (T, T) @ (B, T, C) -> (B, T, C)


def average_past_softmax(x: torch.Tensor) -> torch.Tensor:
    """Version 3: uniform affinities, the future masked to -inf, softmax gives the weights.

    This is the form attention generalises: replace the zeros with
    data-dependent scores and the weights stop being uniform.
    """
    T = x.shape[1]
    tril = torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device))
    wei = torch.zeros(T, T, dtype=x.dtype, device=x.device)
    wei = wei.masked_fill(~tril, float("-inf"))
    wei = F.softmax(wei, dim=-1)
    return wei @ x  # (T, T) @ (B, T, C) -> (B, T, C)


def attention_weights(q: torch.Tensor, k: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """Version 4's weights: softmax(q k^T / sqrt(hs)), with the future masked when causal.

    q: (..., T, hs), k: (..., S, hs) -> (..., T, S). The scale uses the head
    size hs, not the embedding width.
    """
    hs = q.shape[-1]
    scores = q @ k.transpose(-2, -1) * hs**-0.5  # (..., T, hs) @ (..., hs, S) -> (..., T, S)
    if causal:
        T, S = scores.shape[-2:]
        # Query i sits at absolute position S - T + i, so it may see keys 0 .. S - T + i.
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
        scores = scores.masked_fill(~mask, float("-inf"))
    return F.softmax(scores, dim=-1)


# --- 2. one head -------------------------------------------------------------------


class Head(nn.Module):
    """Version 4: one head of self-attention with its own query, key and value."""

    def __init__(
        self,
        n_embd: int,
        head_size: int,
        dropout: float = 0.0,
        bias: bool = False,
        causal: bool = True,
    ) -> None:
        super().__init__()
        self.query = nn.Linear(n_embd, head_size, bias=bias)
        self.key = nn.Linear(n_embd, head_size, bias=bias)
        self.value = nn.Linear(n_embd, head_size, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.causal = causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.query(x)  # (B, T, C) -> (B, T, hs)
        k = self.key(x)  # (B, T, C) -> (B, T, hs)
        v = self.value(x)  # (B, T, C) -> (B, T, hs)
        wei = attention_weights(q, k, self.causal)  # (B, T, T)
        wei = self.dropout(wei)
        return wei @ v  # (B, T, T) @ (B, T, hs) -> (B, T, hs)


# --- 3. multi-head, teaching form ----------------------------------------------------


class MultiHeadAttention(nn.Module):
    """Several `Head`s in parallel, concatenated along channels, then projected."""

    def __init__(
        self, n_embd: int, n_head: int, dropout: float = 0.0, bias: bool = True, causal: bool = True
    ) -> None:
        super().__init__()
        head_size = n_embd // n_head
        self.heads = nn.ModuleList(
            Head(n_embd, head_size, dropout, bias, causal) for _ in range(n_head)
        )
        self.c_proj = nn.Linear(head_size * n_head, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([h(x) for h in self.heads], dim=-1)  # nh x (B, T, hs) -> (B, T, C)
        return self.resid_dropout(self.c_proj(out))

    @torch.no_grad()
    def copy_from_fused(self, fused: CausalSelfAttention) -> None:
        """Load the weights of a fused attention so both forms compute the same function."""
        C = fused.n_embd
        hs = C // fused.n_head
        wq, wk, wv = fused.c_attn.weight.split(C, dim=0)  # (3C, C) -> 3 x (C, C)
        bq, bk, bv = fused.c_attn.bias.split(C) if fused.c_attn.bias is not None else (None,) * 3
        for i, head in enumerate(self.heads):
            rows = slice(i * hs, (i + 1) * hs)
            for lin, w, b in ((head.query, wq, bq), (head.key, wk, bk), (head.value, wv, bv)):
                lin.weight.copy_(w[rows])
                if lin.bias is not None and b is not None:
                    lin.bias.copy_(b[rows])
        self.c_proj.load_state_dict(fused.c_proj.state_dict())


# --- 4. multi-head, fused form --------------------------------------------------------


class CausalSelfAttention(nn.Module):
    """All heads at once: one qkv projection, heads as a batch dimension, fused kernel.

    Despite the name (kept from GPT-2), `causal=False` gives encoder attention.
    With a `LayerKVCache`, keys and values of earlier positions are reused so
    that generating a token costs one position of work instead of T.
    """

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        dropout: float = 0.0,
        bias: bool = True,
        causal: bool = True,
        fast_dropout: bool = False,
        fused_linear: bool = False,
    ) -> None:
        super().__init__()
        self.n_embd, self.n_head, self.causal = n_embd, n_head, causal
        self.c_attn = Linear(n_embd, 3 * n_embd, bias=bias, fused=fused_linear)
        self.c_proj = Linear(n_embd, n_embd, bias=bias, fused=fused_linear)
        self.dropout = dropout
        self.fast_dropout = fast_dropout
        self.resid_dropout = Dropout(dropout) if fast_dropout else nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, cache: LayerKVCache | LayerCacheGroup | None = None
    ) -> torch.Tensor:
        B, T, C = x.shape
        nh, hs = self.n_head, C // self.n_head
        qkv = self.c_attn(x)  # (B, T, C) -> (B, T, 3C)
        if cache is None and self._chunked_on_cpu(qkv):
            # PyTorch's CPU kernels have no fused attention with dropout, and in
            # bf16 its fused kernel is slow at small shapes (40 ms against 16 ms
            # forward and backward at (24, 128, 6 heads of 32)): use the chunked
            # one, which skips the masked future (folio/models/dropout.py).
            y = attention_with_dropout(qkv, nh, self.dropout, self.causal)  # (B, T, C)
            return self.resid_dropout(self.c_proj(y))
        q, k, v = qkv.split(C, dim=2)  # (B, T, 3C) -> 3 x (B, T, C)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, T, nh, hs) -> (B, nh, T, hs)
        k = k.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        if isinstance(cache, LayerCacheGroup):
            y = self._attend_each(q, k, v, cache)  # (B, nh, 1, hs)
            y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, nh, 1, hs) -> (B, 1, C)
            return self.resid_dropout(self.c_proj(y))
        mask, is_causal = None, self.causal
        if cache is not None:
            past = cache.length
            k, v = cache.append(k, v)  # (B, nh, past + T, hs)
            if past > 0 and self.causal:
                # A single new query may see every cached key; several new queries
                # see the cache plus their own past.
                is_causal = False
                if T > 1:
                    mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(past)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
        )  # (B, nh, T, hs) @ (B, nh, hs, S) @ (B, nh, S, hs) -> (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, nh, T, hs) -> (B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def _chunked_on_cpu(self, qkv: torch.Tensor) -> bool:
        """Training on a CPU with dropout the cheap masks represent, or without dropout in bf16."""
        if not (self.fast_dropout and self.training and qkv.device.type == "cpu"):
            return False
        if self.dropout == 0.0:
            return qkv.dtype == torch.bfloat16
        return usable(self.dropout)

    def _attend_each(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: LayerCacheGroup
    ) -> torch.Tensor:
        """One new token per sequence, each attending to its own cache only.

        Sequence b runs exactly the attention it would run alone (no padding),
        so batching does not change its float sums.
        """
        if q.shape[2] != 1 or q.shape[0] != len(group.members):
            raise ValueError("a cache group takes exactly one new token per cached sequence")
        ys = []
        for b, layer in enumerate(group.members):
            kb, vb = layer.append(k[b : b + 1], v[b : b + 1])  # (1, nh, L + 1, hs)
            # A single new query may see every cached key: nothing to mask.
            ys.append(F.scaled_dot_product_attention(q[b : b + 1], kb, vb))  # (1, nh, 1, hs)
        return torch.cat(ys)  # B x (1, nh, 1, hs) -> (B, nh, 1, hs)


# --- 5. cross-attention -----------------------------------------------------------------


class CrossAttention(nn.Module):
    """Queries from x, keys and values from another sequence (e.g. an encoder's output).

    Nothing is masked: every query may look at the whole other sequence.
    """

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        self.n_embd, self.n_head = n_embd, n_head
        self.c_q = nn.Linear(n_embd, n_embd, bias=bias)
        self.c_kv = nn.Linear(n_embd, 2 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        S = context.shape[1]
        nh, hs = self.n_head, C // self.n_head
        q = self.c_q(x).view(B, T, nh, hs).transpose(1, 2)  # (B, T, C) -> (B, nh, T, hs)
        k, v = self.c_kv(context).split(C, dim=2)  # (B, S, 2C) -> 2 x (B, S, C)
        k = k.view(B, S, nh, hs).transpose(1, 2)  # (B, nh, S, hs)
        v = v.view(B, S, nh, hs).transpose(1, 2)  # (B, nh, S, hs)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, nh, T, hs) -> (B, T, C)
        return self.resid_dropout(self.c_proj(y))


def scaled_score_std(head_size: int, T: int = 64, B: int = 64, seed: int = 0) -> float:
    """Std of q k^T / sqrt(hs) for unit-variance q and k: about 1 thanks to the scale."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, head_size, generator=g)
    k = torch.randn(B, T, head_size, generator=g)
    return float((q @ k.transpose(-2, -1) * head_size**-0.5).std()) if head_size > 0 else math.nan
