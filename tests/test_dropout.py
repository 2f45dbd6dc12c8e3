"""folio/models/dropout.py: cheap dropout masks and chunked attention with dropout.

Each fast path is held equal to a reference: PyTorch's attention at p = 0, and at
p > 0 the same function computed by hand from the masks replayed off the same seed.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from folio.errors import FolioError
from folio.models import GPT, GPTConfig
from folio.models.dropout import (
    Dropout,
    _chunk_bounds,
    attention_with_dropout,
    drop_threshold,
    dropout,
    keep_multiplier,
    keep_scale,
    usable,
)
from folio.runtime import keep_freed_memory

CPU = torch.device("cpu")


def test_p_is_rounded_to_a_multiple_of_1_over_65536_and_the_scale_matches_it() -> None:
    assert drop_threshold(0.2) == 13107
    assert keep_scale(0.2) == 65536 / (65536 - 13107)
    assert keep_scale(0.5) == 2.0
    assert usable(0.2) and usable(0.1)
    assert not usable(0.0) and not usable(1e-6) and not usable(0.9999999)


def test_masks_drop_at_the_rounded_rate_and_keep_the_mean() -> None:
    torch.manual_seed(0)
    n = 1 << 20
    for p in (0.1, 0.2, 0.5):
        m = keep_multiplier((n,), p, torch.float32, CPU)
        assert torch.equal(m.unique(), torch.tensor([0.0, keep_scale(p)]))
        rate = float((m == 0).float().mean())
        p_used = drop_threshold(p) / 65536
        assert abs(rate - p_used) < 5 * math.sqrt(p_used * (1 - p_used) / n)  # 5 sigma
        assert abs(float(m.double().mean()) - 1.0) < 0.01


def test_masks_follow_the_global_seed_and_differ_across_draws() -> None:
    torch.manual_seed(3)
    a = keep_multiplier((4, 1001), 0.3, torch.float32, CPU)
    b = keep_multiplier((4, 1001), 0.3, torch.float32, CPU)
    torch.manual_seed(3)
    assert torch.equal(a, keep_multiplier((4, 1001), 0.3, torch.float32, CPU))
    assert not torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scaled", [True, False])
def test_16_bit_masks_are_the_float32_masks_rounded(dtype: torch.dtype, scaled: bool) -> None:
    # 16-bit masks are built from the bits of the kept value, not by a conversion
    for p in (0.05, 0.2, 0.7):
        torch.manual_seed(5)
        want = keep_multiplier((3, 777), p, torch.float32, CPU, scaled=scaled).to(dtype)
        torch.manual_seed(5)
        got = keep_multiplier((3, 777), p, dtype, CPU, scaled=scaled)
        assert got.dtype == dtype and got.shape == (3, 777)
        assert torch.equal(got, want)
        assert 0 < int((got == 0).sum()) < got.numel()


def test_unscaled_masks_are_zeros_and_ones_and_p_zero_keeps_everything() -> None:
    torch.manual_seed(0)
    m = keep_multiplier((999,), 0.25, torch.bfloat16, CPU, scaled=False)
    assert m.dtype == torch.bfloat16 and set(m.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(keep_multiplier((5,), 0.0, torch.float32, CPU), torch.ones(5))
    with pytest.raises(ValueError):
        keep_multiplier((5,), 0.99999999, torch.float32, CPU)


def test_dropout_equals_the_replayed_mask_forward_and_backward() -> None:
    x = torch.randn(3, 7, 11, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(5)
    y = dropout(x, 0.3)
    (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    torch.manual_seed(5)
    m = keep_multiplier(x.shape, 0.3, torch.float64, CPU)
    assert torch.equal(y, x * m)
    assert torch.equal(g, m)


def test_the_dropout_module_is_identity_in_eval_and_has_nn_dropouts_state() -> None:
    d = Dropout(0.4)
    assert isinstance(d, torch.nn.Dropout) and d.state_dict() == {}
    x = torch.randn(10, 10)
    d.eval()
    assert torch.equal(d(x), x)
    d.train()
    torch.manual_seed(0)
    y = d(x)
    assert ((y == 0) | torch.isclose(y, x * keep_scale(0.4))).all() and (y == 0).any()


def _reference_attention(qkv: torch.Tensor, n_head: int, causal: bool) -> torch.Tensor:
    B, T, C3 = qkv.shape
    C = C3 // 3
    q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in qkv.split(C, dim=2))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return y.transpose(1, 2).reshape(B, T, C)


@pytest.mark.parametrize("T", [5, 64, 130, 256])
@pytest.mark.parametrize("causal", [True, False])
def test_attention_with_p_zero_equals_pytorchs_forward_and_backward(T: int, causal: bool) -> None:
    torch.manual_seed(0)
    qkv = torch.randn(2, T, 3 * 12, dtype=torch.float64, requires_grad=True)
    y = attention_with_dropout(qkv, 3, 0.0, causal)
    ref = _reference_attention(qkv, 3, causal)
    assert torch.allclose(y, ref, atol=1e-12)
    g = torch.randn_like(y)
    (a,) = torch.autograd.grad(y, qkv, g)
    (b,) = torch.autograd.grad(ref, qkv, g)
    assert torch.allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("causal", [True, False])
def test_attention_with_dropout_equals_the_masks_replayed_by_hand(causal: bool) -> None:
    """The same weights, dropped by the same masks (drawn chunk by chunk in order),
    computed with plain differentiable ops."""
    B, T, nh, hs, p = 2, 130, 3, 4, 0.3
    torch.manual_seed(1)
    qkv = torch.randn(B, T, 3 * nh * hs, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(7)
    y = attention_with_dropout(qkv, nh, p, causal)
    g = torch.randn_like(y)
    (grad,) = torch.autograd.grad(y, qkv, g)

    torch.manual_seed(7)
    q, k, v = (t.view(B, T, nh, hs).transpose(1, 2) for t in qkv.split(nh * hs, dim=2))
    att = q @ k.transpose(-2, -1) / math.sqrt(hs)  # (B, nh, T, T)
    if causal:
        att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    att = att.softmax(-1)
    rows = []
    bounds = _chunk_bounds(T, causal)
    assert len(bounds) > 2 if causal else len(bounds) == 2  # several chunks are exercised
    for start, end in zip(bounds, bounds[1:], strict=False):
        seen = end if causal else T
        m = keep_multiplier((B, nh, end - start, seen), p, torch.float64, CPU)
        rows.append(att[:, :, start:end, :seen] * m @ v[:, :, :seen])
    ref = torch.cat(rows, dim=2).transpose(1, 2).reshape(B, T, nh * hs)
    (ref_grad,) = torch.autograd.grad(ref, qkv, g)
    assert torch.allclose(y, ref, atol=1e-12)
    assert torch.allclose(grad, ref_grad, atol=1e-12)


def test_attention_with_dropout_passes_gradcheck() -> None:
    qkv = torch.randn(1, 70, 3 * 4, dtype=torch.float64, requires_grad=True)

    def f(x: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(3)  # the same masks on every call
        return attention_with_dropout(x, 2, 0.25)

    assert torch.autograd.gradcheck(f, (qkv,))


def test_attention_in_bf16_stays_close_to_fp32() -> None:
    torch.manual_seed(0)
    qkv = torch.randn(2, 128, 3 * 64)
    torch.manual_seed(9)
    a = attention_with_dropout(qkv, 4, 0.2)
    torch.manual_seed(9)
    b = attention_with_dropout(qkv.bfloat16(), 4, 0.2)
    assert b.dtype == torch.bfloat16
    assert (a - b.float()).abs().max() < 0.1


def _gpt(fast: bool, dropout_p: float) -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=dropout_p)
    cfg.fast_dropout = fast
    return GPT(cfg)


def test_fast_and_plain_dropout_models_agree_in_eval_and_without_dropout() -> None:
    x = torch.randint(11, (3, 16), generator=torch.Generator().manual_seed(0))
    fast, plain = _gpt(True, 0.2).eval(), _gpt(False, 0.2).eval()
    assert torch.equal(fast(x)[0], plain(x)[0])  # same weights, dropout off in eval
    fast, plain = _gpt(True, 0.0).train(), _gpt(False, 0.0).train()
    assert torch.equal(fast(x)[0], plain(x)[0])


def test_without_dropout_bf16_training_takes_the_chunked_attention_and_matches_sdpa() -> None:
    """In bf16 on a CPU, PyTorch's fused attention is slow at small shapes, so training
    without dropout takes the chunked one too: the same loss and gradients, to bf16."""
    x = torch.randint(11, (3, 16), generator=torch.Generator().manual_seed(0))
    fast, plain = _gpt(True, 0.0).train(), _gpt(False, 0.0).train()
    calls = []
    attn = fast.transformer.h[0].attn
    assert attn._chunked_on_cpu(torch.zeros(1, 1, 3, dtype=torch.bfloat16))
    assert not attn._chunked_on_cpu(torch.zeros(1, 1, 3))  # fp32: PyTorch's kernel is faster
    from folio.models import attention as attention_module

    real = attention_module.attention_with_dropout
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            attention_module, "attention_with_dropout", lambda *a: calls.append(1) or real(*a)
        )
        losses, grads = [], []
        for model in (fast, plain):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                _, loss = model(x, x)
            loss.backward()
            losses.append(float(loss))
            grads.append(model.transformer.wte.weight.grad.float())
    assert len(calls) == len(fast.transformer.h)  # every layer of the fast model, none of the plain
    assert losses[0] == pytest.approx(losses[1], abs=2e-2)
    torch.testing.assert_close(grads[0], grads[1], atol=2e-2, rtol=5e-2)


def test_a_model_with_fast_dropout_learns_a_batch() -> None:
    model = _gpt(True, 0.1).train()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(11, (4, 16), generator=g), torch.randint(11, (4, 16), generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(40):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        first = first if first is not None else float(loss.detach())
    assert float(loss.detach()) < first - 0.5


def test_fast_dropout_is_a_config_field_and_must_be_a_bool() -> None:
    assert GPTConfig().fast_dropout is True
    assert GPTConfig.from_dict({"fast_dropout": False}).fast_dropout is False
    with pytest.raises(FolioError, match="fast_dropout"):
        GPTConfig(fast_dropout="yes")  # type: ignore[arg-type]


def test_keep_freed_memory_takes_on_linux_glibc() -> None:
    assert keep_freed_memory() in (True, False)
    import platform

    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert keep_freed_memory() is True
