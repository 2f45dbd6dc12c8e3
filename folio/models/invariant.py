"""Batch-invariant float32 linear layers: a row's result never depends on the other rows.

Notation: M rows of activations, K inputs, N outputs.

A BLAS picks its kernel by shape: one row goes to a matrix-vector routine, a few
rows and many rows to blocked kernels, and each sums the K products in its own
order (some also split K across threads). So row 0 of a (16, K) @ (K, N) product
differs in its last bits from the same row computed alone, and a served request's
tokens could change with the traffic around it. MKL's strict reproducible mode
removes this on Intel processors and not on AMD ones, where it is ignored.

Here the serving engine's batched decode step runs every linear layer through
Folio's own operator (`invariant.cpp`, `torch.ops.folio_invariant.linear`): each
output is one dot product summed in 16 lanes, in increasing k, then in one fixed
tree, so its bits depend only on its own row of x, its row of W and its bias, on
every CPU (the idea of Thinking Machines' "Defeating Nondeterminism in LLM
Inference": one reduction order for every batch size, no split over K). Tiles of
4 rows by 4 outputs reuse each load, and threads split the outputs, neither of
which changes any sum. With AVX-512 the lanes are one register; elsewhere a
portable loop keeps the same lanes, only slower.

`batch_invariant()` turns it on for the calling thread: inside it, `Linear` and
`linear` in `folio.models.linear` run float32 CPU products through this operator.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import torch

from folio.models import kernels

SOURCE = Path(__file__).with_name("invariant.cpp")
_WHAT, _WAY_OUT = "the batch-invariant kernel", "install g++ (apt-get install g++)"
_loaded: Path | None = None
_state = threading.local()


def load() -> None:
    """Make `torch.ops.folio_invariant.linear` available in this process (built at first use)."""
    global _loaded
    if _loaded is None:
        _loaded = kernels.load(SOURCE, _WHAT, _WAY_OUT)


def has_avx512() -> bool:
    """Whether the operator runs its AVX-512 form on this CPU (else the portable loop)."""
    load()
    return bool(torch.ops.folio_invariant.avx512())


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """(..., K) float32 -> (..., N) float32, each output summed in the one fixed order."""
    load()
    flat = x.reshape(-1, x.shape[-1])  # (..., K) -> (M, K)
    y = torch.ops.folio_invariant.linear(flat, weight, bias)  # (M, K) @ (K, N) -> (M, N)
    return y.view(*x.shape[:-1], weight.shape[0])


def active() -> bool:
    """Whether the calling thread is inside `batch_invariant()`."""
    return getattr(_state, "on", False)


def applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a product of x and weight runs through the operator here."""
    return (
        active()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_grad_enabled()
    )


@contextlib.contextmanager
def batch_invariant() -> Iterator[None]:
    """Inside: float32 CPU linear layers (without gradients) use the invariant operator."""
    load()
    before = active()
    _state.on = True
    try:
        yield
    finally:
        _state.on = before
