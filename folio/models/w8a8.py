"""Int8 weights times int8 activations: the matrix products of the `w8a8` decode path.

Notation: M rows of activations, K inputs, N outputs.

A batch-1 decode step reads every weight once per token, so its matrix-vector
products run at the speed weights stream in. Int8 weights (`int8`, weight-only)
halve the bytes of bfloat16, but PyTorch's kernel for them converts each weight
to floating point before multiplying, which costs about as much as reading it.
Here the activations are quantized too, one step per row (symmetric, 8 bits, at
call time), and on CPUs with AVX512-VNNI one instruction multiplies 64 pairs of
bytes and sums them in int32: the product then costs little beyond the read
(the "dynamic W8A8" scheme of LLM.int8() and SmoothQuant, without their outlier
handling, which models this small do not need). The error is one activation
rounding per product on top of the weights' own, and `folio bench sample`
reports its greedy agreement with float32.

The kernel (`w8a8.cpp`, one operator, `torch.ops.folio.w8a8_linear`) is C++
built with the system's C++ compiler at first use, like the compiled decode
paths, and kept in `$FOLIO_CACHE/kernels` under a hash of its source, the torch
version and the compiler; later processes load it in milliseconds. On a CPU
without AVX512-VNNI (or not x86) the same operator runs a portable loop that
computes the same integers and the same floats, bit for bit, only slower.
"""

from __future__ import annotations

from pathlib import Path

import torch

from folio.models import kernels

SOURCE = Path(__file__).with_name("w8a8.cpp")
ROWS = 16
"""Output rows per weight block (one 512-bit register of int32 sums)."""

_WHAT, _WAY_OUT = "the w8a8 kernel", "use int8 or bfloat16 weights"
_loaded: Path | None = None


def build(directory: Path | None = None) -> Path:
    """The kernel's shared library, built unless already in `directory` ($FOLIO_CACHE/kernels);
    see `folio.models.kernels.build`."""
    return kernels.build(SOURCE, _WHAT, _WAY_OUT, directory)


def load() -> None:
    """Make `torch.ops.folio.w8a8_linear` available in this process (built at first use)."""
    global _loaded
    if _loaded is not None:
        return
    path = kernels.load(SOURCE, _WHAT, _WAY_OUT)

    @torch.library.register_fake("folio::w8a8_linear")
    def _(x: torch.Tensor, w: torch.Tensor, wsum: torch.Tensor, scale: torch.Tensor):
        return x.new_empty(x.shape[0], scale.shape[0])

    _loaded = path


def has_vnni() -> bool:
    """Whether the kernel runs its AVX512-VNNI form on this CPU (else the portable loop)."""
    load()
    return bool(torch.ops.folio.w8a8_vnni())


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, K) float weight -> (blocks, wsum, scale) for `linear`.

    Symmetric per output row, w ~= q * scale with q in [-127, 127] (the same
    rounding as the `int8` format), laid out as (N16, K4, 16, 4): blocks of 16
    rows by 4 inputs, zero-padded to whole blocks. wsum (N16 * 16,) int32 is
    each row's sum of q; scale (N,) float32.
    """
    w = weight.detach().float()
    N, K = w.shape
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12)  # (N,)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)  # (N, K)
    N16, K4 = -(-N // ROWS), -(-K // 4)
    padded = torch.zeros(N16 * ROWS, K4 * 4, dtype=torch.int8, device=w.device)
    padded[:N, :K] = q
    wsum = padded.sum(dim=1, dtype=torch.int32)  # (N16 * 16,)
    # (N16 * 16, K4 * 4) -> (N16, 16, K4, 4) -> (N16, K4, 16, 4)
    blocks = padded.view(N16, ROWS, K4, 4).permute(0, 2, 1, 3).contiguous()
    return blocks, wsum, scale.contiguous()


def dequantize_weight(blocks: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The float32 (N, K) weight that `quantize_weight`'s blocks stand for (K padded to 4)."""
    N16, K4 = blocks.shape[:2]
    q = blocks.permute(0, 2, 1, 3).reshape(N16 * ROWS, K4 * 4)[: scale.shape[0]]  # (N, K4 * 4)
    return q.float() * scale[:, None]


def linear(
    x: torch.Tensor, blocks: torch.Tensor, wsum: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """(..., K) float32 -> (..., N) float32: x quantized per row, times the int8 weights."""
    flat = x.reshape(-1, x.shape[-1]).float()  # (M, K)
    y = torch.ops.folio.w8a8_linear(flat, blocks, wsum, scale)  # (M, N)
    return y.view(*x.shape[:-1], scale.shape[0])
