"""Key/value cache for fast autoregressive decoding.

Notation: B batch, nh heads, T new positions, L cached positions, hs head size.

Generating token t+1 only needs the query of the newest position; the keys and
values of positions 0..t do not change, so each attention layer keeps them in
a preallocated buffer of `max_len` positions and appends the new ones.

`CacheBatch` groups the caches of independent sequences of different lengths
so that a serving engine can step them together (continuous batching).
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

    def positions(self, T: int, device: torch.device) -> torch.Tensor:
        """Absolute positions (T,) of T new tokens placed after the cached ones."""
        return torch.arange(self.length, self.length + T, device=device)


class CacheBatch:
    """Separate caches of several sequences, stepped together one new token each.

    Continuous batching puts sequences of different lengths side by side.
    Rather than pad them into one tensor (which changes the length of every
    softmax and so the float sums), each sequence keeps its own `KVCache` of
    batch 1, and attention runs once per sequence on exactly the keys it
    would see if it were alone; only the position-wise layers are batched.
    """

    def __init__(self, caches: list[KVCache]) -> None:
        if not caches:
            raise ValueError("a CacheBatch needs at least one cache")
        self.caches = caches
        n_layer = len(caches[0].layers)
        # layers[i] is layer i of every sequence, in batch order.
        self.layers = [LayerCacheGroup([c.layers[i] for c in caches]) for i in range(n_layer)]

    @property
    def length(self) -> int:
        """The longest cached length in the batch (the bound checked against block_size)."""
        return max(c.length for c in self.caches)

    def positions(self, T: int, device: torch.device) -> torch.Tensor:
        """Absolute positions (B, T): each sequence continues from its own length."""
        starts = torch.tensor([c.length for c in self.caches], device=device)  # (B,)
        return starts[:, None] + torch.arange(T, device=device)  # (B, 1) + (T,) -> (B, T)


class LayerCacheGroup:
    """One attention layer's caches of the sequences of a `CacheBatch`."""

    def __init__(self, layers: list[LayerKVCache]) -> None:
        self.members = layers
