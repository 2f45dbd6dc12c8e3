"""The fused Linear of folio/models/linear.py: PyTorch's linear (and ReLU), forward and backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from folio.models import GPT, GPTConfig
from folio.models.linear import Linear, _onednn, linear

pytestmark = pytest.mark.skipif(not _onednn(), reason="this PyTorch has no oneDNN")


def _layer(k: int, n: int, bias: bool = True, seed: int = 0) -> Linear:
    torch.manual_seed(seed)
    return Linear(k, n, bias=bias)


def _grads(f, x: torch.Tensor, layer: torch.nn.Linear, dy: torch.Tensor):
    x = x.detach().requires_grad_()
    layer.zero_grad(set_to_none=True)
    y = f(x)
    y.backward(dy)
    grads = [x.grad] + [p.grad for p in layer.parameters()]
    return y.detach(), grads


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_float32_equals_pytorch_forward_and_backward(relu: bool, bias: bool) -> None:
    layer = _layer(24, 40, bias)
    g = torch.Generator().manual_seed(1)
    x, dy = torch.randn(3, 7, 24, generator=g), torch.randn(3, 7, 40, generator=g)
    want_y, want = _grads(
        lambda x: (F.relu if relu else torch.nn.Identity())(F.linear(x, layer.weight, layer.bias)),
        x, layer, dy,
    )  # fmt: skip
    got_y, got = _grads(lambda x: linear(x, layer, relu=relu), x, layer, dy)
    assert torch.allclose(got_y, want_y, atol=1e-5, rtol=1e-5)
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype and torch.allclose(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("relu", [False, True])
def test_bf16_autocast_equals_pytorch_forward_bit_for_bit_and_backward_closely(relu: bool) -> None:
    layer = _layer(64, 96)
    g = torch.Generator().manual_seed(2)
    x, dy = torch.randn(4, 16, 64, generator=g), torch.randn(4, 16, 96, generator=g)

    def ref(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", torch.bfloat16):
            y = F.linear(x, layer.weight, layer.bias)
            return F.relu(y) if relu else y

    def fused(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", torch.bfloat16):
            return linear(x, layer, relu=relu)

    want_y, want = _grads(ref, x, layer, dy.bfloat16())
    got_y, got = _grads(fused, x, layer, dy.bfloat16())
    assert got_y.dtype == torch.bfloat16 and torch.equal(got_y, want_y)
    for a, b in zip(got, want, strict=True):
        # fp32 master gradients, from the same bf16 products and sums
        assert a.dtype == b.dtype == torch.float32
        assert torch.allclose(a, b, atol=1e-2, rtol=1e-2)


def test_without_gradients_or_when_unfused_it_is_plain_linear() -> None:
    layer = _layer(8, 8)
    x = torch.randn(5, 8)
    with torch.no_grad():
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    plain = Linear(8, 8, fused=False)
    plain.load_state_dict(layer.state_dict())
    assert torch.equal(plain(x), F.linear(x, layer.weight, layer.bias))
    assert set(plain.state_dict()) == {"weight", "bias"}


def test_a_gpt_trains_the_same_with_and_without_fused_linears() -> None:
    kw = dict(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=32)
    idx = torch.randint(0, 20, (3, 16), generator=torch.Generator().manual_seed(0))
    losses, grads = [], []
    for fused in (False, True):
        torch.manual_seed(0)
        model = GPT(GPTConfig(fused_linear=fused, **kw))
        _, loss = model(idx, idx)
        loss.backward()
        losses.append(float(loss.detach()))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    assert torch.allclose(grads[0], grads[1], atol=1e-5)
