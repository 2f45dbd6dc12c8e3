"""Tests for folio.models.w8a8: the int8-by-int8 kernel against its definition, bit for bit,
its build, and the w8a8 decode paths against float32 and against each other."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from inductor_settings import few_compiles  # noqa: F401  (a fixture)
from test_decode import ONE_LAYER, tiny_gpt

from folio.bench.sample import precision_report
from folio.errors import FolioError
from folio.models import w8a8
from folio.sample import Sampler, SamplingConfig
from folio.sample.decode import StaticDecoder


@pytest.fixture(scope="module", autouse=True)
def kernel() -> None:
    w8a8.load()  # built once per session into the session's $FOLIO_CACHE (about 10 s)


def reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The kernel's definition in torch: per-row int8 activations times the packed weights.

    The integer sums are exact in float64; the float steps are the kernel's, in its order.
    """
    blocks, _, scale = w8a8.quantize_weight(weight)
    K = x.shape[1]
    q = (w8a8.dequantize_weight(blocks, scale)[:, :K] / scale[:, None]).round()  # (N, K) ints
    step = x.abs().amax(dim=1) / 127.0  # (M,)
    step = torch.where(step > 0, step, torch.ones_like(step))
    u = torch.round(x * (1.0 / step)[:, None])  # (M, K), in [-127, 127]
    sums = (u.double() @ q.double().T).float()  # (M, K) @ (K, N) -> (M, N), exact integers
    return sums * scale * step[:, None]


@pytest.mark.parametrize("op", ["w8a8_linear", "w8a8_linear_portable"])
@pytest.mark.parametrize(("M", "N", "K"), [(1, 64, 32), (3, 37, 10), (5, 100, 130), (17, 16, 4)])
def test_the_kernel_is_its_definition_bit_for_bit(op: str, M: int, N: int, K: int) -> None:
    """Both forms (AVX512-VNNI where the CPU has it, and the portable loop) on shapes that
    leave partial blocks of rows and of inputs, and more rows than one pass takes."""
    g = torch.Generator().manual_seed(M * N + K)
    x = torch.randn(M, K, generator=g)
    x[0, 0] = 0.0
    weight = torch.randn(N, K, generator=g) * 0.1
    blocks, wsum, scale = w8a8.quantize_weight(weight)
    got = getattr(torch.ops.folio, op)(x, blocks, wsum, scale)
    assert got.shape == (M, N)
    assert torch.equal(got, reference(x, weight))
    assert (got - x @ weight.T).abs().max() < 0.05 * (x @ weight.T).abs().max()  # and close


def test_the_two_forms_agree_on_a_video_sized_product() -> None:
    g = torch.Generator().manual_seed(1)
    x, weight = torch.randn(2, 384, generator=g), torch.randn(1536, 384, generator=g)
    packed = w8a8.quantize_weight(weight)
    fast = torch.ops.folio.w8a8_linear(x, *packed)
    assert torch.equal(fast, torch.ops.folio.w8a8_linear_portable(x, *packed))


def test_a_non_finite_row_gives_a_nan_row_and_a_zero_row_zeros() -> None:
    x = torch.randn(4, 20)
    x[1, 3], x[2, 0], x[3] = float("nan"), float("inf"), 0.0
    y = torch.ops.folio.w8a8_linear(x, *w8a8.quantize_weight(torch.randn(24, 20)))
    assert y[0].isfinite().all() and y[1].isnan().all() and y[2].isnan().all()
    assert torch.equal(y[3], torch.zeros(24))


def test_packing_keeps_every_weight_within_half_a_step() -> None:
    weight = torch.randn(37, 10)
    blocks, wsum, scale = w8a8.quantize_weight(weight)
    assert blocks.shape == (3, 3, 16, 4) and wsum.shape == (48,) and scale.shape == (37,)
    back = w8a8.dequantize_weight(blocks, scale)  # (37, 12): inputs padded to 4
    assert torch.equal(back[:, 10:], torch.zeros(37, 2))
    assert ((back[:, :10] - weight).abs() <= scale[:, None] / 2 + 1e-7).all()
    rows = w8a8.dequantize_weight(blocks, torch.ones(48)).sum(dim=1)  # padded rows included
    assert torch.equal(rows.to(torch.int32), wsum)


@pytest.mark.parametrize("cxx", ["/nonexistent/g++", "false"])
def test_a_build_that_fails_is_one_folio_error(
    cxx: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No compiler, or one that fails: one line naming the way out, and no temporary left."""
    monkeypatch.setenv("CXX", cxx)
    with pytest.raises(FolioError, match=r"cannot build the w8a8 kernel .*; use int8"):
        w8a8.build(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_w8a8_stays_close_to_float32() -> None:
    """The same stated tolerance as int8 weights alone (logits span about 10)."""
    model = tiny_gpt()
    report = precision_report(model, Sampler(model, decode="static", weights="w8a8"), steps=300)
    assert report["agreement"] >= 0.9
    assert 0 < report["max_logit_diff"] <= 0.3
    assert report["logit_range"] > 5


@pytest.mark.usefixtures("few_compiles")
def test_the_compiled_w8a8_steps_compute_the_eager_one() -> None:
    """Traced by dynamo and compiled ahead of time, the step calls the same kernel. The two
    compiled forms compute the same function; the eager step differs from them as every
    low-precision eager step does (its attention runs in bfloat16, theirs in float32).
    The library goes to the session's cache, where the next test finds it (seconds saved).
    One layer (ONE_LAYER): every further one only adds compile time."""
    model = tiny_gpt(ONE_LAYER)
    idx = torch.randint(0, 40, (1, 12), generator=torch.Generator().manual_seed(5))
    out = []
    for how in ("eager", "traced", "aot"):
        decoder = StaticDecoder(model, 1, "w8a8")
        if how == "traced":
            decoder.compile(backend="eager")  # dynamo's trace of the unrolled step, no inductor
        elif how == "aot":
            decoder.compile(ahead_of_time=True)
        with torch.no_grad():
            decoder.prefill(idx[:, :4])
            out.append(torch.stack([decoder.step(idx[:, t : t + 1]) for t in range(4, 12)]))
    torch.testing.assert_close(out[2], out[1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[1], out[0], atol=0.1, rtol=0.05)


@pytest.mark.usefixtures("few_compiles")
def test_the_aot_w8a8_sampler_names_its_path_and_samples() -> None:
    model = tiny_gpt(ONE_LAYER)  # the model of the test above: its library, from the cache
    sampler = Sampler(model, decode="aot", weights="w8a8")
    assert sampler.path() == "static-kv aot-compiled w8a8"
    cfg = SamplingConfig(max_new_tokens=40, temperature=0.0)
    tokens = [int(i) for i in sampler.generate_ids([5, 6, 7], cfg)]
    traced = Sampler(model, decode="compiled", weights="w8a8")
    traced.static_decoder(1).compile(backend="eager")  # the same trace, without inductor
    assert tokens == [int(i) for i in traced.generate_ids([5, 6, 7], cfg)]
    assert len(set(tokens)) > 5


def test_w8a8_off_a_cpu_is_one_folio_error() -> None:
    model = tiny_gpt().to("meta")  # any device but the CPU; meta allocates nothing
    with pytest.raises(FolioError, match="w8a8 weights run on a CPU only"):
        Sampler(model, decode="static", weights="w8a8")
