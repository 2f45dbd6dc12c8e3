"""Key/value cache for fast autoregressive decoding.

Notation: B batch, nh heads, T new positions, L cached positions, hs head size.

Generating token t+1 only needs the query of the newest position; the keys and
values of positions 0..t do not change, so each attention layer keeps them in
a preallocated buffer of `max_len` positions and appends the new ones.
"""

from __future__ import annotations

import torch


class LayerKVCache:
    """Keys and values of one attention layer, preallocated to `max_len` positions."""

    def __init__(
        self,
        batch: int,
        n_head: int,
        max_len: int,
        head_size: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (batch, n_head, max_len, head_size)
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nh, T, hs) after the cached positions; return all of them (B, nh, L+T, hs)."""
        T = k.shape[2]
        end = self.length + T
        if end > self.k.shape[2]:
            raise ValueError(f"KV cache holds {self.k.shape[2]} positions; asked for {end}")
        self.k[:, :, self.length : end] = k.to(self.k.dtype)
        self.v[:, :, self.length : end] = v.to(self.v.dtype)
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class KVCache:
    """One `LayerKVCache` per transformer block."""

    def __init__(
        self,
        n_layer: int,
        batch: int,
        n_head: int,
        max_len: int,
        head_size: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        device = torch.device(device)
        self.layers = [
            LayerKVCache(batch, n_head, max_len, head_size, dtype, device) for _ in range(n_layer)
        ]

    @property
    def length(self) -> int:
        return self.layers[0].length if self.layers else 0

    def reset(self) -> None:
        for layer in self.layers:
            layer.length = 0
