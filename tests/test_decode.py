"""Tests for folio.models.decode: the static-cache decode step, equal to the model's own forward,
and the sampler's decode paths, equal to the uncached reference."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from folio.bench.sample import precision_report
from folio.errors import FolioError
from folio.models import GPT, GPTConfig
from folio.models.decode import StaticDecoder, supports_static_decoding
from folio.sample import Sampler, SamplingConfig

BLOCK = 16
TINY = GPTConfig(vocab_size=40, n_layer=2, n_head=4, n_embd=32, block_size=BLOCK)


def tiny_gpt(config: GPTConfig = TINY) -> GPT:
    """Weights wide enough that greedy text does not settle into a loop at once."""
    torch.manual_seed(0)
    model = GPT(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> GPT:
    return tiny_gpt()


def greedy(n: int, **kw) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=n, temperature=0.0, **kw)


VARIANTS = {
    "default": TINY,
    "gpt2-like": dataclasses.replace(TINY, bias=False, activation="gelu_tanh", tie_weights=True),
    "no positions": dataclasses.replace(TINY, pos_embedding=False, activation="gelu"),
    "ladder rung": dataclasses.replace(TINY, layer_norm=False, residual=False, feed_forward=False),
}


@pytest.mark.parametrize("config", VARIANTS.values(), ids=VARIANTS.keys())
def test_prefill_then_steps_give_the_full_forward_logits(config: GPTConfig) -> None:
    model = tiny_gpt(config)
    idx = torch.randint(
        0, config.vocab_size, (2, BLOCK), generator=torch.Generator().manual_seed(1)
    )
    decoder = StaticDecoder(model, batch=2)
    with torch.no_grad():
        full, _ = model(idx)  # (2, BLOCK, V)
        got = [decoder.prefill(idx[:, :5])]
        got += [decoder.step(idx[:, t : t + 1]) for t in range(5, BLOCK)]
    torch.testing.assert_close(torch.stack(got, dim=1), full[:, 4:], atol=1e-5, rtol=1e-5)
    assert decoder.length == BLOCK
    with pytest.raises(ValueError, match="full"):
        decoder.step(idx[:, :1])


def test_a_prefill_restarts_a_used_cache(model: GPT) -> None:
    idx = torch.randint(0, 40, (1, 10), generator=torch.Generator().manual_seed(2))
    decoder = StaticDecoder(model, batch=1)
    with torch.no_grad():
        decoder.prefill(idx[:, :8])
        for t in range(8, 10):
            decoder.step(idx[:, t : t + 1])
        again = decoder.prefill(idx[:, 3:4])  # one token: it must not see the old ones
        alone, _ = model(idx[:, :1] * 0 + idx[:, 3:4])
    torch.testing.assert_close(again, alone[:, -1], atol=1e-5, rtol=1e-5)


def test_the_compiled_step_compiles_once_across_positions_and_slides(model: GPT) -> None:
    counter = CompileCounter()  # dynamo's trace counted, run without inductor (fast)
    decoder = StaticDecoder(model, batch=1)
    decoder.compile(backend=counter)
    x = torch.zeros(1, 1, dtype=torch.long)
    with torch.no_grad():
        for window in (1, 5, BLOCK - 1):  # fresh cache, then two slides
            decoder.prefill(torch.zeros(1, window, dtype=torch.long))
            while decoder.length < BLOCK:
                decoder.step(x)
    assert counter.frame_count == 1


@pytest.mark.parametrize("decode", ["module", "static", "compiled"])
def test_every_path_gives_the_uncached_greedy_tokens_for_300_steps(model: GPT, decode: str) -> None:
    """300 tokens in a block of 16: the window slides about 35 times on the way."""
    sampler = Sampler(model, decode=decode)
    cfg = greedy(300)
    cached = [int(s.ids[0]) for s in sampler.decode_steps([5, 6, 7], cfg)]
    plain = dataclasses.replace(cfg, use_cache=False)
    assert cached == [int(s.ids[0]) for s in sampler.decode_steps([5, 6, 7], plain)]
    assert len(set(cached)) > 5  # a real text, not one token repeated


@pytest.mark.parametrize("decode", ["static", "compiled"])
def test_seeded_samples_are_the_same_on_every_path(model: GPT, decode: str) -> None:
    cfg = SamplingConfig(max_new_tokens=60, seed=3, num_samples=3, top_k=20, context_keep=12)
    module = torch.stack(list(Sampler(model, decode="module").generate_ids([1], cfg)))
    fast = torch.stack(list(Sampler(model, decode=decode).generate_ids([1], cfg)))
    assert torch.equal(module, fast)


def test_auto_takes_the_static_path_where_it_is_exact(model: GPT) -> None:
    assert Sampler(model).path() == "static-kv eager float32"
    assert Sampler(model).path(use_cache=False) == "uncached"
    assert Sampler(model, dtype=torch.bfloat16).path() == "module-kv autocast bfloat16"
    heads = tiny_gpt(dataclasses.replace(TINY, attention="heads"))
    assert not supports_static_decoding(heads)
    assert Sampler(heads).path() == "uncached"  # the teaching form has no cache at all
    hooked = tiny_gpt()
    hooked.transformer.h[0].register_forward_hook(lambda *a: None)
    assert Sampler(hooked).path() == "module-kv float32"  # the decoder would skip the hook


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"decode": "fast"}, "unknown decode path"),
        ({"weights": "int4"}, "unknown sampling weights"),
        ({"decode": "module", "weights": "int8"}, "need the decode path"),
        ({"decode": "static", "dtype": torch.bfloat16}, "computes in float32"),
    ],
)
def test_bad_decode_settings_are_folio_errors(model: GPT, kw: dict, match: str) -> None:
    with pytest.raises(FolioError, match=match):
        Sampler(model, **kw)
    heads = tiny_gpt(dataclasses.replace(TINY, attention="heads"))
    with pytest.raises(FolioError, match="fused form"):
        Sampler(heads, decode="static")


def test_non_finite_logits_on_the_static_path_are_a_folio_error() -> None:
    model = tiny_gpt()
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    with pytest.raises(FolioError, match="non-finite logits at step 0"):
        Sampler(model, decode="static").generate_ids([1], greedy(3)).__next__()


# Stated tolerances for the tiny model (logits span about 10): bf16 weights keep
# 3 significant digits, int8 about 2 per row.
@pytest.mark.parametrize(("weights", "agreement", "max_diff"), [("bfloat16", 0.95, 0.1),
                                                                ("int8", 0.9, 0.2)])  # fmt: skip
def test_low_precision_weights_stay_close_to_float32(
    model: GPT, weights: str, agreement: float, max_diff: float
) -> None:
    report = precision_report(model, Sampler(model, decode="static", weights=weights), steps=300)
    assert report["agreement"] >= agreement
    assert 0 < report["max_logit_diff"] <= max_diff  # approximate, and not by much
    assert report["logit_range"] > 5


def test_low_precision_weights_follow_a_model_trained_in_place() -> None:
    model = tiny_gpt()
    sampler = Sampler(model, decode="static", weights="bfloat16")
    before = [int(i) for i in sampler.generate_ids([1], greedy(20))]
    with torch.no_grad():
        model.lm_head.weight.mul_(-1.0)  # a different model, same tensors
    after = [int(i) for i in sampler.generate_ids([1], greedy(20))]
    fresh = [int(i) for i in Sampler(model, decode="static", weights="bfloat16").generate_ids(
        [1], greedy(20))]  # fmt: skip
    assert after == fresh != before


def test_the_bench_flags_name_every_decode_path() -> None:
    """`folio bench sample --paths` is parsed without torch, from its own list: keep them equal."""
    from folio.bench.sample import DEFAULT_PATHS, PATHS
    from folio.commands.bench import DEFAULT_SAMPLE_PATHS, SAMPLE_PATHS

    assert tuple(PATHS) == SAMPLE_PATHS and DEFAULT_PATHS == DEFAULT_SAMPLE_PATHS
