"""The batch-invariant linear operator: right, and each row the same alone or among others."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from folio.models import invariant
from folio.models.linear import Linear, linear

SHAPES = [(64, 256), (256, 64), (384, 1152), (1536, 384), (384, 65), (7, 5), (33, 17), (16, 1)]


@pytest.mark.parametrize(("k", "n"), SHAPES)
def test_it_computes_x_times_w_transposed_plus_b(k: int, n: int) -> None:
    g = torch.Generator().manual_seed(k * n)
    x, w, b = (
        torch.randn(9, k, generator=g),
        torch.randn(n, k, generator=g),
        torch.randn(n, generator=g),
    )
    exact = x.double() @ w.double().T + b.double()  # (9, k) @ (k, n) -> (9, n)
    torch.testing.assert_close(invariant.linear(x, w, b).double(), exact, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(invariant.linear(x, w, None), x @ w.T, atol=1e-4, rtol=1e-4)
    assert invariant.linear(x[:0], w, b).shape == (0, n)


@pytest.mark.parametrize(("k", "n"), SHAPES)
def test_every_row_is_the_same_alone_or_among_others(k: int, n: int) -> None:
    """Bit for bit, for every row of batches of 2 to 40 rows: the sum order never changes."""
    g = torch.Generator().manual_seed(k + n)
    x, w, b = (
        torch.randn(40, k, generator=g),
        torch.randn(n, k, generator=g),
        torch.randn(n, generator=g),
    )
    alone = torch.cat([invariant.linear(x[i : i + 1], w, b) for i in range(40)])  # (40, n)
    for rows in (2, 3, 5, 16, 33, 40):
        assert torch.equal(invariant.linear(x[:rows], w, b), alone[:rows]), rows
    # and the same when threads split the outputs differently
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert torch.equal(invariant.linear(x, w, b), alone)
    finally:
        torch.set_num_threads(old)


def test_non_finite_inputs_stay_non_finite() -> None:
    x, w = torch.ones(3, 20), torch.ones(4, 20)
    x[1, 17] = float("nan")
    y = invariant.linear(x, w, None)
    assert torch.isnan(y[1]).all() and torch.isfinite(y[[0, 2]]).all()


def test_layers_use_it_only_inside_the_context_and_without_gradients() -> None:
    torch.manual_seed(0)
    layer = Linear(24, 40)
    x = torch.randn(5, 24)
    with torch.no_grad():
        plain = layer(x)
        with invariant.batch_invariant():
            inside = layer(x)
            fused_relu = linear(x, layer, relu=True)
            assert invariant.active()
        assert not invariant.active()
    assert torch.equal(inside, invariant.linear(x, layer.weight, layer.bias))
    assert torch.equal(fused_relu, F.relu(inside))
    torch.testing.assert_close(inside, plain, atol=1e-5, rtol=1e-5)
    with invariant.batch_invariant():  # training keeps PyTorch's own kernels and their gradients
        assert not invariant.applies(x, layer.weight)
        assert layer(x).requires_grad
    with torch.no_grad(), invariant.batch_invariant():  # bfloat16 is not this operator's
        assert not invariant.applies(x.bfloat16(), layer.weight.bfloat16())
