"""The GPT: a decoder-only Transformer, as built in the video and in GPT-2.

Notation: B batch, T time, C channels (n_embd), V vocabulary size.

Read top to bottom: feed-forward -> block -> the model. Parameter names follow
GPT-2 (`wte`, `wpe`, `h`, `ln_1`, `attn`, `c_attn`, `c_proj`, `ln_2`, `mlp`,
`c_fc`, `ln_f`, `lm_head`) so that mapping weights to Hugging Face is a short
table. Blocks are pre-LayerNorm (x + attn(ln(x))), as in GPT-2 and the video,
rather than the post-norm of "Attention Is All You Need".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from folio.models.attention import (
    CausalSelfAttention,
    CrossAttention,
    MultiHeadAttention,
    attention_weights,
)
from folio.models.config import GPTConfig
from folio.models.dropout import Dropout
from folio.models.kv_cache import CacheBatch, KVCache, LayerCacheGroup, LayerKVCache
from folio.models.linear import Linear, linear


def _activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    return nn.GELU(approximate="tanh" if name == "gelu_tanh" else "none")


def _layer_norm(config: GPTConfig) -> nn.Module:
    return nn.LayerNorm(config.n_embd, bias=config.bias) if config.layer_norm else nn.Identity()


def _dropout(config: GPTConfig) -> nn.Module:
    return Dropout(config.dropout) if config.fast_dropout else nn.Dropout(config.dropout)


class MLP(nn.Module):
    """Feed-forward: each token thinks on its own about what attention gathered."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        hidden = config.mlp_ratio * config.n_embd
        fused = config.fused_linear
        self.c_fc = Linear(config.n_embd, hidden, bias=config.bias, fused=fused)
        self.act = _activation(config.activation)
        self.c_proj = Linear(hidden, config.n_embd, bias=config.bias, fused=fused)
        self.dropout = _dropout(config)
        # the ReLU can run inside c_fc's matmul (folio/models/linear.py)
        self.fuse_relu = fused and config.activation == "relu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, T, C) -> (B, T, 4C) -> (B, T, C)
        h = linear(x, self.c_fc, relu=True) if self.fuse_relu else self.act(self.c_fc(x))
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    """Communication (attention) then computation (feed-forward), each on a residual branch.

    With `cross=True` the block also attends to another sequence between the
    two (a decoder block of an encoder-decoder Transformer).
    """

    def __init__(self, config: GPTConfig, cross: bool = False) -> None:
        super().__init__()
        self.residual = config.residual
        args = (config.n_embd, config.n_head, config.dropout, config.bias)
        self.ln_1 = _layer_norm(config)
        if config.attention == "fused":
            self.attn = CausalSelfAttention(
                *args,
                causal=config.causal,
                fast_dropout=config.fast_dropout,
                fused_linear=config.fused_linear,
            )
        else:
            self.attn = MultiHeadAttention(*args, causal=config.causal)
        if cross:
            self.ln_cross = _layer_norm(config)
            self.cross_attn = CrossAttention(*args)
        if config.feed_forward:
            self.ln_2 = _layer_norm(config)
            self.mlp = MLP(config)

    def _add(self, x: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        return x + branch if self.residual else branch

    def forward(
        self,
        x: torch.Tensor,
        cache: LayerKVCache | LayerCacheGroup | None = None,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = self.ln_1(x)
        x = self._add(x, self.attn(h, cache) if cache is not None else self.attn(h))
        if hasattr(self, "cross_attn"):
            if context is None:
                raise ValueError("a cross-attention block needs a context sequence")
            x = self._add(x, self.cross_attn(self.ln_cross(x), context))
        if hasattr(self, "mlp"):
            x = self._add(x, self.mlp(self.ln_2(x)))
        return x


class GPT(nn.Module):
    """Token and position embeddings -> n_layer blocks -> final LayerNorm -> logits."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        modules = {"wte": nn.Embedding(config.vocab_size, config.n_embd)}
        if config.pos_embedding:
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        modules["drop"] = _dropout(config)
        modules["h"] = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        modules["ln_f"] = _layer_norm(config)
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False, fused=False)
        if config.tie_weights:
            self.lm_head.weight = self.transformer.wte.weight
        if config.init == "gpt2":
            self.apply(self._init_weights)
            # GPT-2: scale the projections that write into the residual stream by
            # 1/sqrt(2 * n_layer), so the stream's variance does not grow with depth.
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight"):
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def context_size(self) -> int:
        """Tokens the next prediction can depend on: the block size."""
        return self.config.block_size

    @property
    def supports_kv_cache(self) -> bool:
        """Whether `new_kv_cache` works: causal attention in the fused form."""
        return self.config.attention == "fused" and self.config.causal

    def num_params(self) -> int:
        """All parameters, a tied matrix counted once."""
        return sum(p.numel() for p in self.parameters())

    def new_kv_cache(
        self, batch: int, max_len: int | None = None, dtype: torch.dtype | None = None
    ) -> KVCache:
        """An empty cache for `batch` sequences of up to `max_len` (default block_size) positions."""
        c = self.config
        if not self.supports_kv_cache:
            raise ValueError("the KV cache needs causal (decoder) attention in the fused form")
        p = self.transformer.wte.weight
        return KVCache(
            c.n_layer,
            batch,
            c.n_head,
            max_len or c.block_size,
            c.head_size,
            dtype or p.dtype,
            p.device,
        )

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        cache: KVCache | CacheBatch | None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, V) and, given targets (B, T), the mean cross-entropy loss.

        With a cache, idx holds only the new positions; they are placed after
        the cached ones. With a `CacheBatch`, row b of idx (one new token)
        continues sequence b from its own length. `last_only` computes logits
        for the final position only (B, 1, V), which is all that sampling needs.
        """
        x = self.hidden_states(idx, cache=cache)  # (B, T, C)
        if last_only:
            x = x[:, -1:, :]  # (B, 1, C)
        logits = self.lm_head(x)  # (B, T, C) -> (B, T, V)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1))
        return logits, loss

    def hidden_states(
        self, idx: torch.Tensor, *, cache: KVCache | CacheBatch | None = None
    ) -> torch.Tensor:
        """The final LayerNorm's output (B, T, C): what lm_head reads (and a reward model's
        scalar head). The cache works as in `forward`."""
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if self.config.pos_embedding and start + T > self.config.block_size:
            raise ValueError(
                f"sequence of {start + T} positions exceeds block_size {self.config.block_size}"
            )
        x = self.transformer.wte(idx)  # (B, T) -> (B, T, C)
        if self.config.pos_embedding:
            if cache is None:
                pos = torch.arange(T, device=idx.device)  # (T,)
            else:
                pos = cache.positions(T, idx.device)  # (T,), or (B, T) for a CacheBatch
            x = x + self.transformer.wpe(pos)  # (B, T, C) + (T, C) or (B, T, C) -> (B, T, C)
        x = self.transformer.drop(x)
        if self.config.residual_precision == "autocast" and torch.is_autocast_enabled(
            x.device.type
        ):
            x = x.to(torch.get_autocast_dtype(x.device.type))  # the stream in bf16
        for i, block in enumerate(self.transformer.h):
            x = block(x, cache.layers[i] if cache is not None else None)
        return self.transformer.ln_f(x)

    @torch.no_grad()
    def attention_maps(self, idx: torch.Tensor, layer: int) -> torch.Tensor:
        """The video's `wei` of every head of block `layer`: (B, T) ids -> (B, nh, T, T).

        Row t of a head's matrix is how much position t takes from each earlier
        position (each row sums to 1). Computed by running the blocks below
        `layer` and recomputing that block's queries and keys; nothing is
        hooked or stored, so it is safe beside other forwards of the model.
        """
        if not 0 <= layer < self.config.n_layer:
            raise ValueError(f"layer must be in [0, {self.config.n_layer}), got {layer}")
        B, T = idx.shape
        x = self.transformer.wte(idx)  # (B, T) -> (B, T, C)
        if self.config.pos_embedding:
            x = x + self.transformer.wpe(torch.arange(T, device=idx.device))  # (B, T, C)
        for block in self.transformer.h[:layer]:
            x = block(x)
        block = self.transformer.h[layer]
        h = block.ln_1(x)  # (B, T, C)
        attn = block.attn
        if isinstance(attn, CausalSelfAttention):
            nh, C = attn.n_head, self.config.n_embd
            q, k, _ = attn.c_attn(h).split(C, dim=2)  # (B, T, 3C) -> 3 x (B, T, C)
            q = q.view(B, T, nh, C // nh).transpose(1, 2)  # (B, nh, T, hs)
            k = k.view(B, T, nh, C // nh).transpose(1, 2)  # (B, nh, T, hs)
            return attention_weights(q, k, attn.causal)  # (B, nh, T, T)
        maps = [attention_weights(hd.query(h), hd.key(h), hd.causal) for hd in attn.heads]
        return torch.stack(maps, dim=1)  # nh x (B, T, T) -> (B, nh, T, T)

    @torch.no_grad()
    def generate(
        self, idx: torch.Tensor, max_new_tokens: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The video's sampling loop: re-run the last block_size tokens for every new token.

        Kept as the reference the KV-cached sampler (folio.sample) is tested against.
        """
        for _ in range(max_new_tokens):
            idx_cond = idx[:, -self.config.block_size :]  # (B, <= block_size)
            logits, _ = self(idx_cond, last_only=True)  # (B, 1, V)
            probs = F.softmax(logits[:, -1, :].float(), dim=-1)  # (B, V)
            idx_next = torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)
            idx = torch.cat((idx, idx_next), dim=1)  # (B, T + 1)
        return idx
