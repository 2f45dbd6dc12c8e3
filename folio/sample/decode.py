"""A GPT's decode step as one fixed-shape function over a static KV cache.

Notation: B batch, T new positions, L cache positions (block_size), C channels
(n_embd), nh heads, hs head size (C // nh), V vocabulary size.

`GPT.forward` with a `KVCache` is the readable form of cached decoding: every
block is a module call, the cache grows by slicing, and each token runs about
80 module calls and twice as many tensor operations, each with its Python and
dispatch cost. At batch 1 that overhead is more than half of a token's time on
a CPU (benchmarks/decode_profile.py). `StaticDecoder` runs the same computation
with the module tree flattened into one loop over plain tensors:

- the keys and values of every layer live in one preallocated tensor of
  block_size positions per layer, written in place (`index_copy_`) at the
  positions given by a tensor. Run eagerly, attention reads the filled
  positions. Compiled (`compile()`), it reads all L positions with the
  unfilled ones masked out, so every step has the same shapes and the same
  Python control flow whatever the position, and `torch.compile` traces it
  once and never again (the position is data, not a Python int). Masked
  positions hold zeros or stale finite values and get weight exactly 0, so
  they change nothing. The compiled step also writes its matrix-vector
  products and its attention as products and sums that inductor fuses;
- the weights can be kept as they are (float32), in bfloat16 (on CPUs with
  AVX512-BF16 or AMX the matrix-vector products read half the bytes), or as
  int8 with one float scale per output row (weight-only quantization: the
  activations stay in floating point; `torch.ops.aten._weight_int8pack_mm`),
  or int8 with the activations quantized to int8 too at each product (w8a8:
  `folio.models.w8a8`, whose kernel multiplies bytes with AVX512-VNNI).
  Only the float32 form computes the same function as the module path, up to
  float rounding; the others are approximations whose distance from it
  `folio bench sample` reports.

The float32 form keeps references to the model's own parameters, so a model
trained in place is decoded with its current weights; the other forms copy
the weights when the decoder is built, into one flat buffer per dtype. The
compiled step of those forms slices its weights out of the flat buffers
inside the traced function, so the compiled graph takes a handful of inputs
instead of about a hundred: at batch 1 the per-call cost of passing,
guarding and unwrapping each input was a fifth of a token's time. For the
same reason the compiled step uses inductor's C++ wrapper (`cpp_wrapper`),
which calls its kernels without a Python line per kernel.

The file runs past 500 lines on purpose: the packed weight formats, the step
and the prefill must agree tensor by tensor with the exported program that
folio/sample/aot.py compiles, and splitting them would hide that contract.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch.utils import _pytree as pytree

from folio.models import invariant, w8a8
from folio.models.attention import CausalSelfAttention
from folio.models.gpt import GPT, MLP, Block
from folio.sample.choice import choose

Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""Stores layer i's new keys and values (q, k, v: (B, nh, T, hs)) and returns its attention
output (B, nh, T, hs): how the slot decoder (`folio.sample.slots`) replaces the default."""

WEIGHT_FORMATS = ("float32", "bfloat16", "int8", "w8a8")


class _Linear(NamedTuple):
    """One linear layer in a chosen weight format: y = x W^T (+ b)."""

    weight: torch.Tensor
    """(out, in): float32, bfloat16, or int8 (then scaled row by row by `scale`)."""
    bias: torch.Tensor | None
    """(out,) float32, or None."""
    scale: torch.Tensor | None
    """(out,) the int8 rows' scales; None for float weights."""
    wsum: torch.Tensor | None = None
    """w8a8 only: each int8 row's sum, and `weight` in the kernel's blocks (`folio.models.w8a8`)."""


def _pack(weight: torch.Tensor, bias: torch.Tensor | None, fmt: str) -> _Linear:
    """A linear layer's weight in format `fmt`; float32 keeps the model's own tensors."""
    if fmt == "float32":
        return _Linear(weight, bias, None)
    w = weight.detach()
    b = bias.detach().float().clone() if bias is not None else None
    if fmt == "bfloat16":
        return _Linear(w.to(torch.bfloat16).contiguous(), b, None)
    if fmt == "w8a8":
        blocks, wsum, scale = w8a8.quantize_weight(w)
        return _Linear(blocks, b, scale, wsum)
    # Symmetric int8 per output row: w ~= q * scale, q in [-127, 127].
    scale = (w.float().abs().amax(dim=1) / 127.0).clamp_min(1e-12)  # (out,)
    q = torch.round(w.float() / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
    return _Linear(q, b, scale.to(torch.bfloat16).contiguous())


_DEQUANTIZE_ROWS = 16
"""From this many rows up, int8 weights are converted for the call rather than read by the
int8 matrix-vector kernel (37 us for one row, 1,150 us for 128, against a constant ~0.3 ms)."""


def _linear(x: torch.Tensor, lin: _Linear) -> torch.Tensor:
    """(..., in) float32 -> (..., out) float32, whatever the weight format."""
    if lin.wsum is not None:  # w8a8: int8 activations too, the same kernel for any rows
        y = w8a8.linear(x, lin.weight, lin.wsum, lin.scale)
        return y + lin.bias if lin.bias is not None else y
    if lin.scale is not None:
        # (N, in) bf16 activations: the kernel's fast form (with float32 ones it is
        # several times slower on CPU), and the scales in the same dtype.
        flat = x.reshape(-1, x.shape[-1]).to(lin.scale.dtype)  # (N, in)
        if flat.shape[0] >= _DEQUANTIZE_ROWS:
            # Many rows (a prefill): x @ (q * s)^T = (x @ q^T) * s, with q converted to
            # bf16 for this call only, runs the library's bf16 matrix product
            # (AMX where there is one): 0.32 ms against 1.15 ms for 128 rows of 384 x 1536.
            y = F.linear(flat, lin.weight.to(flat.dtype)) * lin.scale  # (N, out)
        else:
            y = torch.ops.aten._weight_int8pack_mm(flat, lin.weight, lin.scale)  # (N, out)
        y = y.float().view(*x.shape[:-1], -1)
        return y + lin.bias if lin.bias is not None else y
    if invariant.applies(x, lin.weight):  # the serving engine's exact path
        return invariant.linear(x, lin.weight, lin.bias)
    if lin.weight.dtype != x.dtype:  # bfloat16 weights: multiply in bf16, return to fp32
        b = lin.bias.to(lin.weight.dtype) if lin.bias is not None else None
        return F.linear(x.to(lin.weight.dtype), lin.weight, b).float()
    return F.linear(x, lin.weight, lin.bias)


def _linear_unrolled(x: torch.Tensor, lin: _Linear) -> torch.Tensor:
    """`_linear` written as a product and a sum, for `torch.compile` to generate.

    Inductor turns this into one loop that reads each weight once, converts it
    to float32 in registers and accumulates: for a single row (a batch-1 step)
    that beats the library's matrix-vector kernels for bfloat16 and int8
    weights, which are tuned for matrices. Never run it eagerly: it would
    materialise (..., out, in).
    """
    if lin.scale is not None or x[..., 0].numel() != 1:
        # int8: the library kernel beat inductor's loop; several rows: a matrix product
        return _linear(x, lin)
    w = lin.weight if lin.weight.dtype == torch.float32 else lin.weight.float()
    y = (x[..., None, :] * w).sum(-1)  # (..., 1, in) * (out, in) -> (..., out, in) -> (..., out)
    return y + lin.bias if lin.bias is not None else y


def _attend_unrolled(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """softmax(q k^T / sqrt(hs), masked) v as products and sums, for `torch.compile`.

    q (B, nh, T, hs), k and v (B, nh, L, hs), mask (T, L), or (B, 1, T, L) with
    each row at its own positions -> (B, nh, T, hs).
    PyTorch's CPU flash-attention kernel is built for long queries; for one
    query, inductor's fused loops over the L cached positions cost less.
    """
    hs = q.shape[-1]
    scores = (q[..., None, :] * k[:, :, None]).sum(-1) * hs**-0.5  # (B, nh, T, L)
    scores = scores.masked_fill(~mask, float("-inf"))
    p = F.softmax(scores, dim=-1)  # (B, nh, T, L)
    return (p[..., None] * v[:, :, None]).sum(-2)  # (B, nh, T, L, hs) -> (B, nh, T, hs)


class _Layer(NamedTuple):
    """One block's tensors, in the order the step uses them."""

    ln_1: tuple[torch.Tensor, torch.Tensor | None] | None
    c_attn: _Linear
    c_proj: _Linear
    ln_2: tuple[torch.Tensor, torch.Tensor | None] | None
    c_fc: _Linear | None
    mlp_proj: _Linear | None


def _store(cache: torch.Tensor, pos: torch.Tensor, new: torch.Tensor) -> None:
    """Write new (B, nh, T, hs) into cache (B, nh, L, hs) at positions pos: (T,) shared
    by every row, or (B, T) one set per row."""
    new = new.to(cache.dtype)
    if pos.dim() == 1:
        cache.index_copy_(2, pos, new)
    else:
        cache.scatter_(2, pos[:, None, :, None].expand_as(new), new)


def _norm(ln: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    if isinstance(ln, torch.nn.LayerNorm):
        return (ln.weight, ln.bias)
    return None  # nn.Identity: the ladder's rungs without LayerNorm


def supports_static_decoding(model: torch.nn.Module) -> bool:
    """Whether `StaticDecoder` computes this model's logits: a GPT with causal fused attention.

    A model whose forward was replaced or hooked is not one: the decoder reads
    the weights and would bypass the change.
    """
    hooked = any(
        m._forward_hooks or m._forward_pre_hooks or "forward" in vars(m) for m in model.modules()
    )
    return (
        isinstance(model, GPT)
        and not hooked
        and type(model).forward is GPT.forward
        and type(model).hidden_states is GPT.hidden_states
        and model.supports_kv_cache
        and all(
            type(b) is Block
            and type(b.attn) is CausalSelfAttention
            and type(getattr(b, "mlp", None)) in (MLP, type(None))
            and not hasattr(b, "cross_attn")
            for b in model.transformer.h
        )
    )


def _flatten(tree: Any) -> tuple[list[torch.Tensor | None], pytree.TreeSpec]:
    """The tensors of a nest of tuples and lists, absent ones (None) included as leaves."""
    return pytree.tree_flatten(tree, is_leaf=lambda x: x is None)


class _Packed:
    """Tensors copied into one flat buffer per dtype; `unpack` slices them back out.

    Traced by `torch.compile`, `unpack` is a few views of the buffers at fixed
    offsets, so the compiled graph's inputs are the buffers, not every tensor.
    None entries (absent biases) stay None.
    """

    def __init__(self, tensors: list[torch.Tensor | None]) -> None:
        present = [t for t in tensors if t is not None]
        dtypes = list(dict.fromkeys(t.dtype for t in present))
        offsets = dict.fromkeys(dtypes, 0)
        self.spec: list[tuple[int, int, torch.Size] | None] = []  # (buffer, offset, shape)
        for t in tensors:
            if t is None:
                self.spec.append(None)
                continue
            self.spec.append((dtypes.index(t.dtype), offsets[t.dtype], t.shape))
            offsets[t.dtype] += t.numel()
        self.buffers = tuple(
            torch.cat([t.detach().reshape(-1) for t in present if t.dtype == d]) for d in dtypes
        )

    def unpack(self, buffers: tuple[torch.Tensor, ...] | None = None) -> list[torch.Tensor | None]:
        """The tensors as views of `buffers` (default: the packed ones)."""
        buffers = self.buffers if buffers is None else buffers
        return [
            None if s is None else buffers[s[0]][s[1] : s[1] + s[2].numel()].view(s[2])
            for s in self.spec
        ]


class StaticDecoder:
    """A GPT's forward over a static KV cache of block_size positions, for B sequences at once.

    `prefill(idx)` restarts the cache from a window of T tokens; `step(idx)`
    appends one token per sequence. Both return the float32 logits of the last
    position, (B, V). The positions written so far are `length` (a Python int,
    kept beside the position tensor that the step reads). `compile()` replaces
    the one-token step with a `torch.compile`d one.
    """

    def __init__(self, model: GPT, batch: int, weights: str = "float32") -> None:
        if weights not in WEIGHT_FORMATS:
            raise ValueError(f"weights must be one of {', '.join(WEIGHT_FORMATS)}, got {weights!r}")
        if not supports_static_decoding(model):
            raise ValueError("static decoding needs a GPT with causal attention in the fused form")
        if weights == "w8a8":
            if model.transformer.wte.weight.device.type != "cpu":
                raise ValueError("w8a8 weights run on a CPU only")
            w8a8.load()  # the kernel, built at first use (a FolioError if it cannot be)
        c = model.config
        self.config, self.weights, self.batch = c, weights, batch
        self.n_head, self.head_size = c.n_head, c.n_embd // c.n_head
        t = model.transformer
        device = t.wte.weight.device
        self.wte = t.wte.weight  # (V, C)
        self.wpe = t.wpe.weight if c.pos_embedding else None  # (L, C)
        self.layers = [
            _Layer(
                _norm(b.ln_1),
                _pack(b.attn.c_attn.weight, b.attn.c_attn.bias, weights),
                _pack(b.attn.c_proj.weight, b.attn.c_proj.bias, weights),
                _norm(b.ln_2) if hasattr(b, "mlp") else None,
                _pack(b.mlp.c_fc.weight, b.mlp.c_fc.bias, weights) if hasattr(b, "mlp") else None,
                _pack(b.mlp.c_proj.weight, b.mlp.c_proj.bias, weights)
                if hasattr(b, "mlp")
                else None,
            )
            for b in t.h
        ]
        self.ln_f = _norm(t.ln_f)
        self.lm_head = _pack(model.lm_head.weight, None, weights)
        # Low-precision forms own copies of their weights: one flat buffer per dtype,
        # with every tensor the step reads a view of it (see the module docstring).
        self._packed: _Packed | None = None
        leaves, self._tree = _flatten(self._weights())
        if weights != "float32":
            self._packed = _Packed(leaves)
            self._set_weights(pytree.tree_unflatten(self._packed.unpack(), self._tree))
        self.act = c.activation
        L = c.block_size
        # Zeros, not empty: a masked position gets weight 0, and 0 * NaN would be NaN.
        # One tensor per layer (not slices of one): a compiled step then writes each
        # in place, where a slice would be copied out and back whole every step.
        shape = (batch, c.n_head, L, self.head_size)
        # With low-precision weights the cache is bfloat16 too: a compiled step reads
        # all L slots every token (4.7 MB in fp32 for the video model, beside 10.6 MB
        # of int8 weights).
        dtype = torch.float32 if weights == "float32" else torch.bfloat16
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(c.n_layer)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(c.n_layer)]
        self.slots = torch.arange(L, device=device)  # (L,) the cache positions
        self.pos = torch.zeros(1, dtype=torch.long, device=device)  # the next position, as data
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=device)  # the step's input
        # A greedy step's stand-ins for the draw's noise and temperature (see `advance`).
        self.ones = torch.ones(batch, c.vocab_size, device=device)
        self.zero = torch.zeros(1, device=device)
        self.length = 0
        self._step = self._advance
        self.compiled = False
        self.from_cache = False

    def _weights(self) -> tuple[Any, ...]:
        return (self.wte, self.wpe, self.layers, self.ln_f, self.lm_head)

    def _set_weights(self, weights: tuple[Any, ...]) -> None:
        self.wte, self.wpe, self.layers, self.ln_f, self.lm_head = weights

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        if self.act == "relu":
            return F.relu(x)
        return F.gelu(x, approximate="tanh" if self.act == "gelu_tanh" else "none")

    def step_inputs(self) -> list[torch.Tensor]:
        """The tensors a compiled step reads besides its token and position, in order.

        The weights (the flat buffers of a low-precision form, or every tensor of
        the float32 one, which are the model's own), then the keys and values of
        every layer. `traced_step` takes them back in this order.
        """
        if self._packed is not None:
            weights = list(self._packed.buffers)
        else:
            weights = [t for t in _flatten(self._weights())[0] if t is not None]
        return [*weights, *self.k, *self.v]

    def traced_step(
        self,
        idx: torch.Tensor,
        pos: torch.Tensor,
        noise: torch.Tensor,
        temperature: torch.Tensor,
        inputs: tuple[torch.Tensor, ...],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`advance` as a function of `step_inputs()`, for ahead-of-time export.

        Everything the step reads comes in as an argument, so the exported
        program's inputs are exactly (idx, pos, noise, temperature, *inputs), and
        idx, pos and the caches among them are written in place.
        """
        weights, caches = self._unpack_inputs(inputs)
        return self._advance(idx, pos, noise, temperature, True, weights, caches)

    def traced_forward(
        self, idx: torch.Tensor, pos: torch.Tensor, inputs: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        """The unrolled forward as a function of `step_inputs()`: logits (B, V), no choice.

        With pos (B, 1), one position per row (the serving engine's slots).
        """
        weights, caches = self._unpack_inputs(inputs)
        return self._forward(idx, pos, True, weights, caches)

    def _unpack_inputs(
        self, inputs: tuple[torch.Tensor, ...]
    ) -> tuple[tuple[Any, ...], tuple[list[torch.Tensor], list[torch.Tensor]]]:
        """`step_inputs()` back into the weights' tree and the keys and values."""
        n = self.config.n_layer
        weights, k, v = inputs[: -2 * n], list(inputs[-2 * n : -n]), list(inputs[-n:])
        if self._packed is not None:
            leaves = self._packed.unpack(weights)
        else:  # the float32 form: put the absent tensors (None) back in their places
            given = iter(weights)
            leaves = [None if t is None else next(given) for t in _flatten(self._weights())[0]]
        return pytree.tree_unflatten(leaves, self._tree), (k, v)

    def _advance(
        self,
        idx: torch.Tensor,
        pos: torch.Tensor,
        noise: torch.Tensor,
        temperature: torch.Tensor,
        unrolled: bool = False,
        weights: tuple[Any, ...] | None = None,
        caches: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step: token idx (B, 1) at position pos (1,) -> logits (B, V), the next
        tokens (B,) (`choose`), and whether every logit is finite (a 0-dim bool).
        The next tokens are written into idx and pos is advanced, in place."""
        logits = self._forward(idx, pos, unrolled, weights, caches)  # (B, V)
        chosen = choose(logits, noise, temperature)  # (B,)
        idx.copy_(chosen[:, None])
        pos.add_(1)
        return logits, chosen, torch.isfinite(logits).all()

    def _forward(
        self,
        idx: torch.Tensor,
        pos: torch.Tensor,
        unrolled: bool = False,
        weights: tuple[Any, ...] | None = None,
        caches: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None,
        attend: Attend | None = None,
        last: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Tokens idx (B, T) at positions pos (T,) -> logits of the last position (B, V).

        pos may also be (B, T), each row at its own positions (the serving engine's
        slots; traced, or with `attend`). `unrolled`: matrix products and attention
        as the product-and-sum forms that `torch.compile` fuses (only ever traced,
        never run eagerly). `weights` and `caches` (keys, values) replace the
        decoder's own. `attend`: stores each layer's keys and values and attends in
        its own way, instead of the decoder's cache. `last` (B,): the position of each
        row whose logits are returned, instead of the last one.
        """
        linear = _linear_unrolled if unrolled else _linear
        if weights is None and unrolled and self._packed is not None:
            weights = pytree.tree_unflatten(self._packed.unpack(), self._tree)  # views, traced
        wte, wpe, layers, ln_f, lm_head = weights if weights is not None else self._weights()
        cache_k, cache_v = caches if caches is not None else (self.k, self.v)
        B, T = idx.shape
        C, nh, hs = self.config.n_embd, self.n_head, self.head_size
        x = F.embedding(idx, wte)  # (B, T) -> (B, T, C)
        if wpe is not None:
            x = x + F.embedding(pos, wpe)  # (B, T, C) + (T, C) or (B, T, C)
        # Query t (at position pos[t]) sees the cache slots up to its own position.
        # Traced for compilation, attention reads all L slots with the rest masked,
        # so that the shapes never change; run eagerly, it reads only the `filled`
        # ones (then a lone query needs no mask at all).
        filled = self.config.block_size if unrolled else self.length + T
        mask = None
        if attend is None and (unrolled or T > 1):
            mask = self.slots[:filled] <= pos[..., None]  # (T, S), or (B, T, S) by row
            if mask.dim() == 3:
                mask = mask[:, None]  # (B, 1, T, S): broadcast over heads
        for i, layer in enumerate(layers):
            h = F.layer_norm(x, (C,), *layer.ln_1) if layer.ln_1 is not None else x
            qkv = linear(h, layer.c_attn)  # (B, T, C) -> (B, T, 3C)
            qkv = qkv.view(B, T, 3, nh, hs).permute(2, 0, 3, 1, 4)  # (3, B, nh, T, hs)
            q, k, v = qkv[0], qkv[1], qkv[2]  # 3 x (B, nh, T, hs)
            if attend is not None:
                y = attend(i, q, k, v)
            else:
                _store(cache_k[i], pos, k)  # (B, nh, L, hs) <- (B, nh, T, hs)
                _store(cache_v[i], pos, v)
                if unrolled:
                    y = _attend_unrolled(q, cache_k[i], cache_v[i], mask)
                else:
                    k, v = cache_k[i][:, :, :filled], cache_v[i][:, :, :filled]  # (B, nh, S, hs)
                    q = q.to(k.dtype)
                    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).float()
            # (B, nh, T, hs) @ (B, nh, hs, L) @ (B, nh, L, hs) -> (B, nh, T, hs)
            y = y.transpose(1, 2).reshape(B, T, C)  # (B, nh, T, hs) -> (B, T, C)
            a = linear(y, layer.c_proj)
            x = x + a if self.config.residual else a
            if layer.c_fc is not None:
                h = F.layer_norm(x, (C,), *layer.ln_2) if layer.ln_2 is not None else x
                m = linear(self._act(linear(h, layer.c_fc)), layer.mlp_proj)  # (B, T, C)
                x = x + m if self.config.residual else m
        # (B, C): sampling needs one position per row only
        x = x[:, -1, :] if last is None else x[torch.arange(B, device=x.device), last]
        if ln_f is not None:
            x = F.layer_norm(x, (C,), *ln_f)
        return linear(x, lm_head)  # (B, C) -> (B, V)

    def prefill(self, idx: torch.Tensor) -> torch.Tensor:
        """Restart the cache from the window idx (B, T), T <= block_size; logits (B, V)."""
        T = idx.shape[1]
        if not 0 < T <= self.config.block_size:
            raise ValueError(f"a prefill takes 1 to {self.config.block_size} tokens, got {T}")
        pos = torch.arange(T, device=idx.device)
        self.length = 0
        logits = self._forward(idx, pos)
        self.length = T
        self.pos.fill_(T)
        return logits

    def step(self, idx: torch.Tensor) -> torch.Tensor:
        """Append one token per sequence, idx (B, 1), and return the next logits (B, V)."""
        self.token.copy_(idx)  # one fixed (B, 1) input, whatever idx's strides
        return self.advance()[0]

    def advance(
        self, noise: torch.Tensor | None = None, temperature: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Append `token` (B, 1), then choose the next token of each sequence in the same call.

        `noise` (B, V) Exp(1) variates and `temperature` (1,) make the draw of
        `choose`; None for either: greedy. Returns the logits (B, V), the chosen
        tokens (B,), left in `token` for the next call, and whether every logit
        was finite (a 0-dim bool tensor). Set `token` after a prefill.
        """
        if self.length >= self.config.block_size:
            raise ValueError(f"the cache holds {self.config.block_size} positions and is full")
        if noise is None or temperature is None:
            noise, temperature = self.ones, self.zero
        out = self._step(self.token, self.pos, noise, temperature)
        self.length += 1
        return out

    def compile(
        self, ahead_of_time: bool = False, aot_dir: Path | None = None, **options: object
    ) -> None:
        """Use a compiled one-token step (prefill stays eager: its T varies).

        By default `torch.compile`, with `options` passed on; its inductor
        options default to the C++ wrapper, which cuts the per-token cost of
        calling the kernels. `ahead_of_time`: AOTInductor instead, a library
        kept on disk and reused by later decoders of the same shapes
        (`folio.sample.aot`; `aot_dir` overrides where), and `self.from_cache`
        says whether it was.
        """
        if ahead_of_time:
            from folio.sample.aot import compile_step

            def traced(idx, pos, noise, t, *inputs):  # every tensor it reads is an input
                return self.traced_step(idx, pos, noise, t, inputs)

            example = (self.token, self.pos, self.ones, self.zero)
            self._step, self.from_cache = compile_step(traced, example, self.step_inputs(), aot_dir)
            self.compiled = True
            return
        if options.get("backend", "inductor") == "inductor":
            options.setdefault("options", {"cpp_wrapper": True})
        step = torch.compile(self._advance, dynamic=False, **options)
        self._step = lambda idx, pos, noise, t: step(idx, pos, noise, t, unrolled=True)
        self.compiled = True
