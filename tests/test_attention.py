"""Attention, piece by piece: the invariants the video teaches, each as a test.

Notation: B batch, T time, S length of another sequence, C channels, hs head size.
Everything runs on CPU in fp32 with tiny sizes and fixed seeds.
"""

from __future__ import annotations

import pytest
import torch

from folio.models.attention import (
    CausalSelfAttention,
    CrossAttention,
    Head,
    MultiHeadAttention,
    attention_weights,
    average_past_loop,
    average_past_matmul,
    average_past_softmax,
    scaled_score_std,
)
from folio.models.kv_cache import LayerKVCache

B, T, C, NH = 2, 8, 32, 4
HS = C // NH


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- the four versions of "average the past" ---------------------------------------


def test_three_versions_of_averaging_agree() -> None:
    x = _randn(B, T, C)
    loop = average_past_loop(x)
    torch.testing.assert_close(average_past_matmul(x), loop)
    torch.testing.assert_close(average_past_softmax(x), loop)
    # The first position averages only itself and the last averages everything.
    torch.testing.assert_close(loop[:, 0], x[:, 0])
    torch.testing.assert_close(loop[:, -1], x.mean(dim=1))


def test_causal_weights_are_rows_of_a_lower_triangle() -> None:
    q, k = _randn(B, T, HS, seed=1), _randn(B, T, HS, seed=2)
    wei = attention_weights(q, k, causal=True)  # (B, T, T)
    torch.testing.assert_close(wei.sum(dim=-1), torch.ones(B, T))
    above = ~torch.ones(T, T, dtype=torch.bool).tril()
    assert torch.all(wei[:, above] == 0)
    assert torch.all(wei[:, ~above] > 0)


def test_non_causal_weights_see_everything() -> None:
    q, k = _randn(B, T, HS, seed=1), _randn(B, T, HS, seed=2)
    wei = attention_weights(q, k, causal=False)
    torch.testing.assert_close(wei.sum(dim=-1), torch.ones(B, T))
    assert torch.all(wei > 0)


def test_causal_weights_with_more_keys_than_queries() -> None:
    # T new queries after S - T earlier positions (what a KV cache produces):
    # query i sits at absolute position S - T + i and sees keys 0 .. S - T + i.
    Tq, S = 3, 7
    q, k = _randn(B, Tq, HS, seed=3), _randn(B, S, HS, seed=4)
    wei = attention_weights(q, k, causal=True)  # (B, Tq, S)
    assert wei.shape == (B, Tq, S)
    torch.testing.assert_close(wei.sum(dim=-1), torch.ones(B, Tq))
    for i in range(Tq):
        last_visible = S - Tq + i
        assert torch.all(wei[:, i, : last_visible + 1] > 0)
        assert torch.all(wei[:, i, last_visible + 1 :] == 0)


# --- one head ----------------------------------------------------------------------


@pytest.mark.parametrize("t", [0, 3, T - 2])
def test_head_never_sees_the_future(t: int) -> None:
    torch.manual_seed(0)
    head = Head(C, HS).eval()
    x = _randn(B, T, C)
    x2 = x.clone()
    x2[:, t + 1 :] = _randn(B, T - t - 1, C, seed=5)
    with torch.no_grad():
        y, y2 = head(x), head(x2)
    torch.testing.assert_close(y2[:, : t + 1], y[:, : t + 1], rtol=0, atol=1e-6)
    # The perturbation is real: positions after t do change.
    assert not torch.allclose(y2[:, t + 1 :], y[:, t + 1 :], atol=1e-4)


# --- scaled attention ----------------------------------------------------------------


@pytest.mark.parametrize("head_size", [8, 16, 64])
def test_scaled_scores_keep_unit_variance(head_size: int) -> None:
    assert 0.9 < scaled_score_std(head_size) < 1.1


def test_unscaled_scores_grow_with_head_size() -> None:
    # Without the 1/sqrt(hs) the variance of q . k is hs; softmax of such large
    # scores saturates towards one-hot, which is what the scale prevents.
    def unscaled_var(hs: int) -> float:
        q, k = _randn(64, 64, hs, seed=6), _randn(64, 64, hs, seed=7)
        return float((q @ k.transpose(-2, -1)).var())  # (B, T, hs) @ (B, hs, T) -> (B, T, T)

    for hs in (8, 16, 64):
        assert 0.9 * hs < unscaled_var(hs) < 1.1 * hs
    q, k = _randn(1, T, 64, seed=8), _randn(1, T, 64, seed=9)
    scaled_peak = attention_weights(q, k, causal=False).max(dim=-1).values.mean()
    unscaled_peak = torch.softmax(q @ k.transpose(-2, -1), dim=-1).max(dim=-1).values.mean()
    assert unscaled_peak > scaled_peak


# --- multi-head: teaching form == fused form -----------------------------------------


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("causal", [True, False])
def test_heads_copied_from_fused_compute_the_same(bias: bool, causal: bool) -> None:
    torch.manual_seed(0)
    fused = CausalSelfAttention(C, NH, bias=bias, causal=causal).eval()
    if bias:  # nonzero biases, so copying them is actually checked
        with torch.no_grad():
            fused.c_attn.bias.normal_()
            fused.c_proj.bias.normal_()
    heads = MultiHeadAttention(C, NH, bias=bias, causal=causal).eval()
    x = _randn(B, T, C)
    with torch.no_grad():
        assert not torch.allclose(heads(x), fused(x), atol=1e-5)
        heads.copy_from_fused(fused)
        torch.testing.assert_close(heads(x), fused(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("form", ["fused", "heads"])
@pytest.mark.parametrize("causal", [True, False])
def test_encoder_sees_the_future_decoder_does_not(form: str, causal: bool) -> None:
    torch.manual_seed(0)
    cls = CausalSelfAttention if form == "fused" else MultiHeadAttention
    attn = cls(C, NH, causal=causal).eval()
    t = 3
    x = _randn(B, T, C)
    x2 = x.clone()
    x2[:, t + 1 :] = _randn(B, T - t - 1, C, seed=5)
    with torch.no_grad():
        y, y2 = attn(x), attn(x2)
    past_unchanged = torch.allclose(y2[:, : t + 1], y[:, : t + 1], rtol=0, atol=1e-6)
    assert past_unchanged == causal


# --- cross-attention -------------------------------------------------------------------


def test_cross_attention_reads_the_context() -> None:
    torch.manual_seed(0)
    cross = CrossAttention(C, NH).eval()
    Tq, S = 5, 9  # queries and context need not have the same length
    x, ctx = _randn(B, Tq, C, seed=1), _randn(B, S, C, seed=2)
    with torch.no_grad():
        y = cross(x, ctx)
        assert y.shape == (B, Tq, C)
        assert not torch.allclose(cross(x, _randn(B, S, C, seed=3)), y, atol=1e-4)
        # A shorter context works too: nothing ties S to T.
        assert cross(x, ctx[:, :2]).shape == (B, Tq, C)
        # Nothing is masked: changing the last context position changes the first query's output.
        ctx2 = ctx.clone()
        ctx2[:, -1] += 1.0
        assert not torch.allclose(cross(x, ctx2)[:, 0], y[:, 0], atol=1e-6)


# --- KV cache -------------------------------------------------------------------------------


def _attn_and_cache(max_len: int = T) -> tuple[CausalSelfAttention, LayerKVCache]:
    torch.manual_seed(0)
    attn = CausalSelfAttention(C, NH).eval()
    return attn, LayerKVCache(B, NH, max_len, HS, torch.float32, torch.device("cpu"))


def test_kv_cache_prefill_then_single_tokens_equals_full_forward() -> None:
    attn, cache = _attn_and_cache()
    x = _randn(B, T, C)
    with torch.no_grad():
        full = attn(x)
        chunks = [attn(x[:, :5], cache)]
        chunks += [attn(x[:, t : t + 1], cache) for t in range(5, T)]
    assert cache.length == T
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, rtol=0, atol=1e-5)


def test_kv_cache_chunk_after_prefill_equals_full_forward() -> None:
    # Several new queries at once need the offset causal mask, not a plain tril.
    attn, cache = _attn_and_cache()
    x = _randn(B, T, C)
    with torch.no_grad():
        full = attn(x)
        chunks = [attn(x[:, :4], cache), attn(x[:, 4:7], cache), attn(x[:, 7:], cache)]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, rtol=0, atol=1e-5)


def test_kv_cache_overflow_raises() -> None:
    attn, cache = _attn_and_cache(max_len=4)
    with torch.no_grad():
        attn(_randn(B, 3, C), cache)
        with pytest.raises(ValueError, match="holds 4 positions"):
            attn(_randn(B, 2, C), cache)
