"""Linear layers for training on a CPU: the bias, and a following ReLU, inside oneDNN's matmul.

Notation: M rows (B * T tokens), K inputs, N outputs.

`F.linear` with a bias runs `addmm`, which on a CPU first copies the bias into every
row of the (M, N) output and then accumulates the product onto it: one extra pass over
the output, as large as the product's own. A ReLU after it is another pass, reading and
writing the whole (M, 4C) hidden layer. oneDNN's matmul (the library behind PyTorch's
CPU matmuls) adds the bias and applies the ReLU to each block of the output while it is
still in cache, through `torch.ops.mkldnn._linear_pointwise`. On the video model in bf16
that takes the forward of a 384 -> 1536 layer from about 28 to 17 ms, and the same
layer with its ReLU from about 41 to 18 ms (BENCHMARKS.md), with the same numbers: the
sum is the same, only where the bias is added changes.

`Linear` is `nn.Linear` (same parameters, names and state dict) that takes this path
when it can, and `linear(x, layer, relu=True)` is relu(layer(x)); the backward pass is the usual one:
dX = dY W, dW = dY^T X, db = the column sums of dY, through the ReLU's mask first.
Inside `folio.models.invariant.batch_invariant()` (the serving engine's decode step),
float32 products without gradients run through Folio's batch-invariant operator instead.
Where it cannot (not a CPU, not float32 or bfloat16, no oneDNN, inside torch.compile,
or no gradient wanted: evaluation and sampling keep PyTorch's own kernels) they are
exactly `F.linear` and `F.relu`.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from folio.models import invariant


@functools.cache
def _onednn() -> bool:
    """Whether this PyTorch has oneDNN's fused linear (CPU builds from x86 wheels do)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype | None:
    """The dtype the product runs in on the fused path, or None where the path does not apply."""
    if x.device.type != "cpu" or not torch.is_grad_enabled() or not _onednn():
        return None
    if torch.compiler.is_compiling():
        return None
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
    elif x.dtype == weight.dtype:
        dtype = x.dtype
    else:
        return None
    return dtype if dtype in (torch.float32, torch.bfloat16) else None


class _FusedLinear(torch.autograd.Function):
    """y = x W^T + b, then ReLU if asked, in `dtype`; see the module's docstring."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        relu: bool,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        lead, K = x.shape[:-1], x.shape[-1]
        x2 = x.reshape(-1, K).to(dtype).contiguous()  # (..., K) -> (M, K)
        w = weight.to(dtype)  # (N, K)
        b = bias.to(dtype) if bias is not None else None
        y = torch.ops.mkldnn._linear_pointwise(x2, w, b, "relu" if relu else "none", [None], "")
        ctx.save_for_backward(x2, w, y if relu else None)
        ctx.dtypes = (x.dtype, weight.dtype, bias.dtype if bias is not None else None)
        ctx.lead, ctx.relu = lead, relu
        return y.view(*lead, w.shape[0])  # (M, N) -> (..., N)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):  # type: ignore[override]
        x2, w, y = ctx.saved_tensors
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        dy = dy.reshape(-1, w.shape[0]).to(w.dtype)  # (..., N) -> (M, N)
        if ctx.relu:
            dy = torch.ops.aten.threshold_backward(dy, y, 0)  # through ReLU's mask
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        dx = (dy @ w).view(*ctx.lead, w.shape[1]).to(x_dtype) if need_x else None
        dw = (dy.t() @ x2).to(w_dtype) if need_w else None  # (N, M) @ (M, K) -> (N, K)
        # the column sums in the product's dtype, as PyTorch's addmm backward (a bf16 sum
        # accumulates in fp32 inside; asking for an fp32 result is 3x slower)
        db = dy.sum(0).to(b_dtype) if need_b and b_dtype else None
        return dx, dw, db, None, None


def linear(x: torch.Tensor, layer: nn.Linear, relu: bool = False) -> torch.Tensor:
    """`layer(x)` (then ReLU if `relu`), the bias and ReLU fused into the matmul where
    the path applies, else PyTorch's own kernels."""
    if invariant.applies(x, layer.weight):  # the serving engine's batched decode step
        y = invariant.linear(x, layer.weight, layer.bias)
        return F.relu(y) if relu else y
    dtype = _compute_dtype(x, layer.weight)
    if dtype is None:
        y = F.linear(x, layer.weight, layer.bias)
        return F.relu(y) if relu else y
    return _FusedLinear.apply(x, layer.weight, layer.bias, relu, dtype)


class Linear(nn.Linear):
    """`nn.Linear` (same parameters, state dict and repr) whose training forward on a
    CPU adds the bias inside oneDNN's matmul, unless `fused` is false; see the module's
    docstring."""

    def __init__(self, *args, fused: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fused = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused or invariant.applies(x, self.weight):
            return linear(x, self)
        return super().forward(x)
