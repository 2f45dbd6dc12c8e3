"""Tests for folio.sample.decode: the static-cache decode step, equal to the model's own forward,
and the sampler's decode paths, equal to the uncached reference."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from factories import wide_gpt
from inductor_settings import few_compiles  # noqa: F401  (a fixture)

from folio.bench.sample import precision_report
from folio.errors import FolioError
from folio.models import GPT, GPTConfig
from folio.sample import Sampler, SamplingConfig
from folio.sample.decode import StaticDecoder, _Packed, supports_static_decoding

BLOCK = 16
TINY = GPTConfig(vocab_size=40, n_layer=2, n_head=4, n_embd=32, block_size=BLOCK)
# What inductor compiles: every layer adds seconds of code generation and C++ build, and
# one layer already runs every part of the step (norms, attention, MLP, cache, draw).
ONE_LAYER = dataclasses.replace(TINY, n_layer=1)


def tiny_gpt(config: GPTConfig = TINY) -> GPT:
    """Weights wide enough that greedy text does not settle into a loop at once."""
    return wide_gpt(config)


@pytest.fixture(scope="module")
def model() -> GPT:
    return tiny_gpt()


@pytest.fixture(scope="module")
def one_layer() -> GPT:
    """The model of the tests that compile with inductor (the same weights on every call)."""
    return tiny_gpt(ONE_LAYER)


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
    from torch._dynamo.testing import CompileCounter  # imports dynamo: only where it runs

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


@pytest.mark.usefixtures("few_compiles")
@pytest.mark.parametrize("decode", ["module", "static", "compiled"])
def test_every_path_gives_the_uncached_greedy_tokens_for_300_steps(
    model: GPT, one_layer: GPT, decode: str
) -> None:
    """300 tokens in a block of 16: the window slides about 35 times on the way."""
    sampler = Sampler(one_layer if decode == "compiled" else model, decode=decode)  # ONE_LAYER
    cfg = greedy(300)
    cached = [int(s.ids[0]) for s in sampler.decode_steps([5, 6, 7], cfg)]
    plain = dataclasses.replace(cfg, use_cache=False)
    assert cached == [int(s.ids[0]) for s in sampler.decode_steps([5, 6, 7], plain)]
    assert len(set(cached)) > 5  # a real text, not one token repeated


@pytest.fixture(scope="module")
def aot_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private $FOLIO_CACHE for the ahead-of-time libraries these tests compile."""
    path = tmp_path_factory.mktemp("folio-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FOLIO_CACHE", str(path))
        yield path


@pytest.mark.usefixtures("few_compiles")
def test_the_aot_path_gives_the_uncached_greedy_tokens_and_is_reused(
    one_layer: GPT, aot_cache: Path
) -> None:
    """Compiled ahead of time once (seconds), then loaded from the cache by a second sampler."""
    cfg = greedy(300)
    plain = [
        int(s.ids[0])
        for s in Sampler(one_layer).decode_steps([5, 6, 7], replace(cfg, use_cache=False))
    ]
    first = Sampler(one_layer, decode="aot")
    assert first.path() == "static-kv aot-compiled float32"
    assert [int(s.ids[0]) for s in first.decode_steps([5, 6, 7], cfg)] == plain
    assert not first.static_decoder(1).from_cache
    libraries = list((aot_cache / "aot").iterdir())
    assert len(libraries) == 1 and libraries[0].name.startswith("step-")  # no temporary left
    again = Sampler(one_layer, decode="aot")
    assert [int(s.ids[0]) for s in again.decode_steps([5, 6, 7], cfg)] == plain
    assert again.static_decoder(1).from_cache
    assert list((aot_cache / "aot").iterdir()) == libraries


@pytest.mark.usefixtures("few_compiles")
def test_an_unreadable_aot_library_is_rebuilt(one_layer: GPT, aot_cache: Path) -> None:
    StaticDecoder(one_layer, batch=1).compile(ahead_of_time=True)  # from the cache, if built above
    for library in (aot_cache / "aot").glob("step-*"):
        library.write_bytes(b"not a library")
    again = StaticDecoder(one_layer, batch=1)
    again.compile(ahead_of_time=True)
    assert not again.from_cache
    x = torch.zeros(1, 1, dtype=torch.long)
    with torch.no_grad():
        again.prefill(x)
        got = again.step(x)
        full, _ = one_layer(torch.zeros(1, 2, dtype=torch.long))
    torch.testing.assert_close(got, full[:, -1], atol=1e-5, rtol=1e-5)


@pytest.mark.usefixtures("few_compiles")
def test_the_aot_step_reads_the_weights_it_is_given(aot_cache: Path) -> None:
    """The library holds no weights: a float32 decoder follows the model trained in place."""
    trained = tiny_gpt(ONE_LAYER)
    decoder = StaticDecoder(trained, batch=1)
    decoder.compile(ahead_of_time=True)  # the shapes of the test above: from the cache
    assert decoder.from_cache
    idx = torch.randint(0, 40, (1, 6), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        for p in trained.parameters():
            p.mul_(1.5)  # in place, as an optimizer step would
        full, _ = trained(idx)
        decoder.prefill(idx[:, :5])
        got = decoder.step(idx[:, 5:6])
    torch.testing.assert_close(got, full[:, -1], atol=1e-5, rtol=1e-5)


@pytest.mark.usefixtures("few_compiles")
@pytest.mark.parametrize("top_k", [20, None], ids=["top-k, chosen by the sampler", "in the step"])
@pytest.mark.parametrize("decode", ["static", "compiled"])
def test_seeded_samples_are_the_same_on_every_path(
    model: GPT, one_layer: GPT, decode: str, top_k: int | None
) -> None:
    cfg = SamplingConfig(max_new_tokens=60, seed=3, num_samples=3, top_k=top_k, context_keep=12)
    model = one_layer if decode == "compiled" else model  # see ONE_LAYER
    module = torch.stack(list(Sampler(model, decode="module").generate_ids([1], cfg)))
    fast = torch.stack(list(Sampler(model, decode=decode).generate_ids([1], cfg)))
    assert torch.equal(module, fast)


@pytest.mark.usefixtures("few_compiles")
def test_a_seeded_sample_is_the_same_on_the_aot_path(one_layer: GPT, aot_cache: Path) -> None:
    """The AOT step draws its own token (temperature 0.8, across slides); batch 1 reuses the
    library of the test above."""
    cfg = SamplingConfig(max_new_tokens=150, seed=4, temperature=0.8)
    module = torch.stack(list(Sampler(one_layer, decode="module").generate_ids([1], cfg)))
    fast = torch.stack(list(Sampler(one_layer, decode="aot").generate_ids([1], cfg)))
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


def test_packing_keeps_every_tensor_and_every_gap() -> None:
    tensors = [torch.randn(3, 4), None, torch.arange(6, dtype=torch.int8).view(2, 3), torch.ones(5)]
    packed = _Packed(tensors)
    assert [b.dtype for b in packed.buffers] == [torch.float32, torch.int8]
    back = packed.unpack()
    assert back[1] is None
    for got, want in zip(back, tensors, strict=True):
        if want is not None:
            assert got.dtype == want.dtype and torch.equal(got, want)


@pytest.mark.parametrize("weights", ["bfloat16", "int8"])
def test_a_traced_step_slices_the_packed_weights_right(model: GPT, weights: str) -> None:
    """Traced, a low-precision step slices its weights out of the flat buffers itself;
    it must compute what the same step computes from the per-tensor views."""
    packed, views = StaticDecoder(model, 1, weights), StaticDecoder(model, 1, weights)
    views._packed = None  # the traced step then reads the views, one input each
    idx = torch.randint(0, 40, (1, 12), generator=torch.Generator().manual_seed(5))
    out = []
    for decoder in (packed, views):
        decoder.compile(backend="eager")  # dynamo's trace, run without inductor (fast)
        with torch.no_grad():
            decoder.prefill(idx[:, :4])
            out.append(torch.stack([decoder.step(idx[:, t : t + 1]) for t in range(4, 12)]))
    torch.testing.assert_close(out[0], out[1], atol=0, rtol=0)


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


def test_an_int8_prefill_of_many_rows_matches_the_int8_kernel() -> None:
    """From _DEQUANTIZE_ROWS rows up, int8 weights are converted to bf16 for the call:
    the same product as the int8 kernel's, to bf16 rounding."""
    from folio.sample import decode

    torch.manual_seed(0)
    x = torch.randn(2, decode._DEQUANTIZE_ROWS, 32)
    lin = decode._pack(torch.randn(48, 32) * 0.2, torch.randn(48), "int8")
    wide = decode._linear(x, lin)  # (2, 16, 48): 32 rows, the converted path
    rows = torch.cat([decode._linear(x[b, t : t + 1], lin) for b in range(2) for t in range(16)])
    assert wide.shape == (2, decode._DEQUANTIZE_ROWS, 48)
    torch.testing.assert_close(wide.reshape(-1, 48), rows, atol=3e-2, rtol=2e-2)


def test_an_aot_compile_that_fails_is_one_folio_error(
    model: GPT, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No C++ compiler, a full disk: one line naming the way out, and no temporary left."""

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("C++ compile error: g++ not found\nmore detail")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", fail)
    with pytest.raises(FolioError, match=r"ahead of time \(C\+\+ compile error: g\+\+ not found\)"):
        StaticDecoder(model, batch=1).compile(ahead_of_time=True, aot_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
