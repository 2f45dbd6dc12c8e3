"""The GPT and the bigram baseline: the video's invariants on a tiny model.

Notation: B batch, T time, C channels, V vocabulary size.
Each invariant runs for both attention forms ('fused' and the teaching 'heads').
The tiny model is 2 layers, 32 wide, block 16, vocabulary 20, fp32 on CPU, seeded.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from folio.errors import FolioError
from folio.models import GPT, BigramConfig, GPTConfig, build_model
from folio.models.bigram import BigramLanguageModel
from folio.models.gpt import Block

V, BLOCK = 20, 16
FORMS = ["fused", "heads"]


def _config(**overrides: Any) -> GPTConfig:
    kw: dict[str, Any] = dict(vocab_size=V, block_size=BLOCK, n_layer=2, n_head=4, n_embd=32)
    kw.update(overrides)
    return GPTConfig(**kw)


def _model(seed: int = 0, **overrides: Any) -> GPT:
    torch.manual_seed(seed)
    return GPT(_config(**overrides)).eval()


def _tokens(B: int = 4, T: int = BLOCK, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def _logits(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(idx)[0]


# --- information flow -----------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("t", [0, 7, BLOCK - 2])
def test_future_tokens_never_change_past_logits(form: str, t: int) -> None:
    model = _model(attention=form)
    idx = _tokens()
    idx2 = idx.clone()
    idx2[:, t + 1 :] = (idx[:, t + 1 :] + 1) % V  # every later token is different
    y, y2 = _logits(model, idx), _logits(model, idx2)
    torch.testing.assert_close(y2[:, : t + 1], y[:, : t + 1], rtol=0, atol=1e-6)
    assert not torch.allclose(y2[:, t + 1 :], y[:, t + 1 :], atol=1e-4)


@pytest.mark.parametrize("form", FORMS)
def test_samples_in_a_batch_do_not_talk(form: str) -> None:
    model = _model(attention=form)
    idx = _tokens()
    idx2 = idx.clone()
    idx2[1] = (idx[1] + 1) % V
    y, y2 = _logits(model, idx), _logits(model, idx2)
    torch.testing.assert_close(y2[0], y[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(y2[2:], y[2:], rtol=0, atol=1e-6)
    assert not torch.allclose(y2[1], y[1], atol=1e-4)


@pytest.mark.parametrize("form", FORMS)
def test_without_positions_attention_works_on_sets(form: str) -> None:
    # Only an encoder (causal=False) is permutation-equivariant: the causal mask
    # is itself an ordering (token i sees tokens 0..i), so permuting a decoder's
    # input changes which tokens each one may see, not just where its output lands.
    model = _model(attention=form, pos_embedding=False, causal=False)
    idx = _tokens()
    perm = torch.randperm(BLOCK, generator=torch.Generator().manual_seed(1))
    y, y_perm = _logits(model, idx), _logits(model, idx[:, perm])
    torch.testing.assert_close(y_perm, y[:, perm], rtol=0, atol=1e-5)
    # With position embeddings the same permutation is visible to the model.
    model = _model(attention=form, causal=False)
    assert not torch.allclose(_logits(model, idx[:, perm]), _logits(model, idx)[:, perm], atol=1e-4)


# --- dropout, loss at init, overfitting ---------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_dropout_only_in_train_mode(form: str) -> None:
    model = _model(attention=form, dropout=0.5)
    idx = _tokens()
    torch.testing.assert_close(_logits(model, idx), _logits(model, idx), rtol=0, atol=0)
    model.train()
    assert not torch.allclose(_logits(model, idx), _logits(model, idx), atol=1e-4)


@pytest.mark.parametrize("form", FORMS)
def test_loss_at_init_is_near_ln_vocab(form: str) -> None:
    # Small init weights give near-uniform predictions: loss = -ln(1/V) = ln V.
    model = _model(attention=form)
    with torch.no_grad():
        _, loss = model(_tokens(), _tokens(seed=1))
    assert abs(loss.item() - math.log(V)) < 0.1


@pytest.mark.parametrize("form", FORMS)
def test_tiny_model_overfits_one_batch(form: str) -> None:
    model = _model(attention=form).train()
    x = _tokens(B=4)
    # Distinct first tokens: with the same first token two samples would share a
    # context at position 0 with different targets, and loss could not reach 0.
    x[:, 0] = torch.arange(4)
    y = _tokens(B=4, seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(300):
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if loss.item() < 0.05:
            break
    assert loss.item() < 0.05


# --- teaching form == fused form ------------------------------------------------------------------


def test_heads_gpt_with_fused_weights_matches_fused_gpt() -> None:
    fused = _model(seed=0, attention="fused")
    heads = _model(seed=1, attention="heads")
    fused_sd = fused.state_dict()
    heads_sd = heads.state_dict()
    shared = {k: v for k, v in fused_sd.items() if k in heads_sd}
    # Everything but the per-head q/k/v (and the fused c_attn they come from) matches by name.
    assert {k for k in fused_sd if k not in shared} == {
        f"transformer.h.{i}.attn.c_attn.{p}" for i in range(2) for p in ("weight", "bias")
    }
    heads.load_state_dict(shared, strict=False)
    for fb, hb in zip(fused.transformer.h, heads.transformer.h, strict=True):
        hb.attn.copy_from_fused(fb.attn)
    idx = _tokens()
    torch.testing.assert_close(_logits(heads, idx), _logits(fused, idx), rtol=0, atol=1e-5)


# --- initialisation, tying, size, names --------------------------------------------------------------


def test_gpt2_init() -> None:
    n_layer = 4
    torch.manual_seed(0)
    model = GPT(_config(n_layer=n_layer, n_embd=64))
    proj, other = [], []
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            proj.append(p.flatten())
        elif name.endswith("weight") and p.dim() == 2:  # Linear and Embedding matrices
            other.append(p.flatten())
        elif name.endswith("bias") and "ln" not in name:
            assert torch.all(p == 0), name
    proj_std = torch.cat(proj).std().item()
    other_std = torch.cat(other).std().item()
    assert proj_std == pytest.approx(0.02 / math.sqrt(2 * n_layer), rel=0.05)
    assert other_std == pytest.approx(0.02, rel=0.05)


@pytest.mark.parametrize("form", FORMS)
def test_weight_tying_shares_the_tensor(form: str) -> None:
    tied = _model(attention=form, tie_weights=True)
    assert tied.lm_head.weight is tied.transformer.wte.weight
    untied = _model(attention=form)
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    assert untied.num_params() - tied.num_params() == V * 32
    # A gradient step through the head moves the embedding too: one tensor, two roles.
    _, loss = tied.train()(_tokens(), _tokens(seed=1))
    loss.backward()
    assert tied.transformer.wte.weight.grad is tied.lm_head.weight.grad


def test_video_preset_has_about_10_8_million_parameters() -> None:
    model = GPT(GPTConfig(vocab_size=65))
    assert 10.7e6 < model.num_params() < 10.9e6


def test_gpt2_parameter_names() -> None:
    keys = set(_model().state_dict())
    for name in (
        "transformer.wte.weight",
        "transformer.wpe.weight",
        "transformer.h.0.ln_1.weight",
        "transformer.h.0.attn.c_attn.weight",
        "transformer.h.0.attn.c_proj.weight",
        "transformer.h.0.ln_2.weight",
        "transformer.h.0.mlp.c_fc.weight",
        "transformer.h.0.mlp.c_proj.weight",
        "transformer.ln_f.weight",
        "lm_head.weight",
    ):
        assert name in keys, name


# --- KV cache, block size ------------------------------------------------------------------------


def test_kv_cached_forward_equals_full_forward() -> None:
    model = _model(attention="fused")
    idx = _tokens(B=2)
    full = _logits(model, idx)
    cache = model.new_kv_cache(batch=2)
    prefill = 5
    with torch.no_grad():
        logits, _ = model(idx[:, :prefill], cache=cache, last_only=True)
        torch.testing.assert_close(logits[:, -1], full[:, prefill - 1], rtol=0, atol=1e-5)
        for t in range(prefill, BLOCK):
            logits, _ = model(idx[:, t : t + 1], cache=cache)
            torch.testing.assert_close(logits[:, -1], full[:, t], rtol=0, atol=1e-5)
    assert cache.length == BLOCK


def test_kv_cache_needs_the_fused_form() -> None:
    with pytest.raises(ValueError, match="fused"):
        _model(attention="heads").new_kv_cache(batch=1)


@pytest.mark.parametrize("form", FORMS)
def test_sequence_longer_than_block_size_raises(form: str) -> None:
    model = _model(attention=form)
    model(_tokens(B=1, T=BLOCK))
    with pytest.raises(ValueError, match="block_size"):
        model(_tokens(B=1, T=BLOCK + 1))


# --- cross-attention block -------------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_cross_attention_block_reads_its_context(form: str) -> None:
    torch.manual_seed(0)
    block = Block(_config(attention=form), cross=True).eval()
    x = torch.randn(2, 6, 32)
    ctx = torch.randn(2, 9, 32)
    with pytest.raises(ValueError, match="context"):
        block(x)
    with torch.no_grad():
        y = block(x, context=ctx)
        assert y.shape == x.shape
        assert not torch.allclose(block(x, context=torch.randn(2, 9, 32)), y, atol=1e-5)


# --- config validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (dict(n_embd=30, n_head=4), "n_embd"),
        (dict(n_layer=0), "n_layer"),
        (dict(n_embd=-32), "n_embd"),
        (dict(block_size=0), "block_size"),
        (dict(vocab_size=-1), "vocab_size"),
        (dict(dropout=1.5), "dropout"),
        (dict(dropout=-0.1), "dropout"),
        (dict(attention="flash"), "attention"),
        (dict(activation="swish"), "activation"),
        (dict(n_layer=True), "n_layer"),
        (dict(n_head=2.0), "n_head"),
        (dict(bias="yes"), "bias"),
        (dict(residual_precision="bfloat16"), "residual_precision"),
    ],
)
def test_bad_config_names_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(FolioError, match=field):
        _config(**overrides)


def test_config_round_trips_and_rejects_unknown_keys() -> None:
    cfg = _config(dropout=0.1, attention="heads")
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(FolioError, match="n_layers"):
        GPTConfig.from_dict({**cfg.to_dict(), "n_layers": 3})
    with pytest.raises(FolioError, match="unknown"):
        BigramConfig.from_dict({"vocab_size": V, "n_embd": 32})


# --- the residual stream's precision under autocast -------------------------------------


def _bf16_loss_and_grads(model: GPT, idx: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", torch.bfloat16):
        _, loss = model(idx, idx)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def test_a_bf16_residual_stream_is_bf16_under_autocast_and_close_to_fp32() -> None:
    idx = _tokens()
    fp32 = _model(seed=1)
    bf16 = _model(seed=1, residual_precision="autocast")
    seen: list[torch.dtype] = []
    bf16.transformer.h[1].register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    fp32.transformer.h[1].register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    loss_a, grads_a = _bf16_loss_and_grads(fp32, idx)
    loss_b, grads_b = _bf16_loss_and_grads(bf16, idx)
    assert seen == [torch.float32, torch.bfloat16]  # the stream entering block 1
    assert loss_b.dtype == torch.float32 and abs(float(loss_a - loss_b)) < 0.02
    named = list(bf16.named_parameters())
    for (name, p), a, b in zip(named, grads_a, grads_b, strict=True):
        assert p.dtype == torch.float32 and b.dtype == torch.float32, name  # fp32 master weights
        cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)
        assert cos > 0.97, name
    # without autocast the setting changes nothing: the same model, bit for bit
    assert torch.equal(_logits(fp32, idx), _logits(bf16, idx))


# --- bigram ---------------------------------------------------------------------------------------------


def test_bigram_shapes_loss_and_generate() -> None:
    torch.manual_seed(0)
    model = build_model(BigramConfig(vocab_size=V))
    assert isinstance(model, BigramLanguageModel)
    idx, targets = _tokens(B=3, T=8), _tokens(B=3, T=8, seed=1)
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 8, V)
    assert torch.isfinite(loss)
    assert model(idx)[1] is None
    out = model.generate(idx[:, :1], max_new_tokens=10, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 11)
    assert torch.equal(out[:, :1], idx[:, :1])
    assert out.min() >= 0 and out.max() < V


def test_gpt_generate_returns_ids_in_range() -> None:
    model = _model()
    out = model.generate(
        _tokens(B=2, T=4), max_new_tokens=BLOCK, generator=torch.Generator().manual_seed(0)
    )
    assert out.shape == (2, 4 + BLOCK)  # runs past block_size by cropping the context
    assert out.min() >= 0 and out.max() < V
