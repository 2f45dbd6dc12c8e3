"""Tests for folio.sample: the KV-cached sampling engine and its decoding controls."""

from __future__ import annotations

import warnings

import pytest
import torch
from factories import wide_gpt

from folio.errors import FolioError
from folio.models import GPT, BigramConfig, BigramLanguageModel, GPTConfig
from folio.sample import Sampler, SamplingConfig, filter_logits
from folio.tokenizers import CharTokenizer

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n"
BLOCK = 16


@pytest.fixture(scope="module")
def tok() -> CharTokenizer:
    return CharTokenizer.from_text(TEXT)


def tiny_gpt(vocab_size: int, attention: str = "fused") -> GPT:
    """The house tiny model with weights wide enough that greedy text does not repeat at once."""
    config = GPTConfig(
        vocab_size=vocab_size, n_layer=2, n_head=4, n_embd=32, block_size=BLOCK, attention=attention
    )
    return wide_gpt(config)


@pytest.fixture(scope="module")
def model(tok: CharTokenizer) -> GPT:
    return tiny_gpt(tok.vocab_size)


@pytest.fixture(scope="module")
def sampler(model: GPT, tok: CharTokenizer) -> Sampler:
    return Sampler(model, tok)


def greedy(n: int, **kw) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=n, temperature=0.0, **kw)


def argmax_loop(model, ids: list[int], n: int) -> list[int]:
    """The video's loop with argmax: re-run the last block_size tokens for every new token."""
    idx = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(idx[:, -BLOCK:])
            idx = torch.cat((idx, logits[:, -1, :].argmax(-1, keepdim=True)), dim=1)
    return idx[0, len(ids) :].tolist()


# --- exactness -----------------------------------------------------------------------


def test_cached_equals_uncached_for_300_greedy_tokens_across_the_boundary(sampler, tok):
    ids = tok.encode("First")
    cached = list(sampler.decode_steps(ids, greedy(300)))
    uncached = list(sampler.decode_steps(ids, greedy(300, use_cache=False)))
    assert [s.ids.item() for s in cached] == [s.ids.item() for s in uncached]
    for a, b in zip(cached, uncached, strict=True):
        torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-5)
    assert len(set(tok.decode(s.ids.item() for s in cached))) > 5  # not one repeated character


def test_cached_greedy_within_block_equals_argmax_of_plain_forward(sampler, model, tok):
    ids = tok.encode("Firs")
    out = [t.item() for t in sampler.generate_ids(ids, greedy(BLOCK - len(ids)))]
    assert out == argmax_loop(model, ids, BLOCK - len(ids))


def test_keeping_block_size_tokens_reproduces_the_video_loop_past_the_boundary(sampler, model, tok):
    ids = tok.encode("First")
    out = [t.item() for t in sampler.generate_ids(ids, greedy(60, context_keep=BLOCK))]
    assert out == argmax_loop(model, ids, 60)


def test_sampled_batch_cached_equals_uncached(sampler):
    cfg = SamplingConfig(max_new_tokens=60, seed=5, num_samples=3)
    three = sampler.generate("Fir", cfg)
    assert len(three) == 3 and all(len(s) == 60 for s in three)
    assert len(set(three)) == 3  # independent samples
    assert sampler.generate("Fir", SamplingConfig(**{**vars(cfg), "use_cache": False})) == three


# --- decoding controls -------------------------------------------------------------------


def test_seed_reproduces_and_ignores_global_rng(sampler):
    cfg = SamplingConfig(max_new_tokens=50, seed=7)
    torch.manual_seed(1)
    state = torch.get_rng_state()
    a = sampler.generate("First", cfg)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG was not consumed
    torch.manual_seed(123)
    b = sampler.generate("First", cfg)
    c = sampler.generate("First", SamplingConfig(max_new_tokens=50, seed=8))
    assert a == b
    assert a != c


def test_top_k_one_and_tiny_top_p_are_greedy(sampler):
    want = sampler.generate("First", greedy(40))
    assert sampler.generate("First", SamplingConfig(max_new_tokens=40, top_k=1, seed=3)) == want
    assert sampler.generate("First", SamplingConfig(max_new_tokens=40, top_p=1e-6, seed=3)) == want


def test_top_k_larger_than_vocab_is_clamped(sampler):
    cfg = SamplingConfig(max_new_tokens=40, seed=3)
    big = SamplingConfig(max_new_tokens=40, seed=3, top_k=10_000)
    assert sampler.generate("First", big) == sampler.generate("First", cfg)


def test_filter_logits_keeps_the_nucleus():
    logits = torch.tensor([[0.5, 0.3, 0.2]]).log()
    kept = lambda **kw: torch.isfinite(filter_logits(logits, **kw))[0].tolist()  # noqa: E731
    assert kept(top_k=None, top_p=0.5) == [True, False, False]
    assert kept(top_k=None, top_p=0.6) == [True, True, False]
    assert kept(top_k=None, top_p=1.0) == [True, True, True]
    assert kept(top_k=2, top_p=None) == [True, True, False]
    assert kept(top_k=2, top_p=0.9) == [True, True, False]


def test_greedy_batch_rows_are_identical(sampler):
    outs = sampler.generate("First", greedy(30, num_samples=4))
    assert len(outs) == 4 and len(set(outs)) == 1


def test_generate_ids_yields_one_id_per_sample(sampler, tok):
    steps = list(
        sampler.generate_ids(tok.encode("F"), SamplingConfig(max_new_tokens=5, num_samples=3))
    )
    assert len(steps) == 5 and all(s.shape == (3,) for s in steps)
    assert list(sampler.generate_ids(tok.encode("F"), SamplingConfig(max_new_tokens=0))) == []
    assert sampler.generate("F", SamplingConfig(max_new_tokens=0, num_samples=2)) == ["", ""]


# --- stop strings and streaming -------------------------------------------------------------


def test_stop_string_truncates_before_it(sampler):
    full = sampler.generate("First", greedy(80))[0]
    stop = full[20:23]
    out = sampler.generate("First", greedy(80, stop=[stop]))[0]
    assert out == full[: full.find(stop)]
    assert stop not in out


def test_each_sample_stops_on_its_own(sampler):
    base = dict(max_new_tokens=80, seed=11, num_samples=4)
    full = sampler.generate("First", SamplingConfig(**base))
    stop = full[0][30:32]
    outs = sampler.generate("First", SamplingConfig(**base, stop=[stop, "zz"]))
    for f, o in zip(full, outs, strict=True):
        cuts = [i for s in (stop, "zz") if (i := f.find(s)) >= 0]
        assert o == (f[: min(cuts)] if cuts else f)


def test_stream_concatenates_to_generate_and_never_shows_a_stop_string(sampler):
    full = sampler.generate("First", greedy(80))[0]
    stop = full[40:44]
    cfg = greedy(80, stop=[stop, full[10:12] + "\x00"])  # the second one only ever half-matches
    pieces = [p[0] for p in sampler.stream("First", cfg)]
    assert "".join(pieces) == sampler.generate("First", cfg)[0] == full[: full.find(stop)]
    # The stop string spans four tokens: printing its first characters before the
    # rest arrived could not be taken back, so equality proves they were held back.
    assert len(pieces) > 1


# --- prompts and bad input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"top_p": -0.1},
        {"temperature": -1.0},
        {"temperature": float("nan")},
        {"max_new_tokens": -1},
        {"top_k": 0},
        {"num_samples": 0},
        {"stop": [""]},
        {"seed": -3},
    ],
)
def test_bad_config_is_a_one_line_folio_error(kw):
    with pytest.raises(FolioError) as err:
        SamplingConfig(**kw)
    assert "\n" not in str(err.value) and str(err.value).startswith("sampling config:")


def test_bad_dtype_and_prompt_ids_are_folio_errors(model, tok):
    with pytest.raises(FolioError):
        Sampler(model, tok, dtype="int8")
    with pytest.raises(FolioError):
        Sampler(model, tok).generate_ids([tok.vocab_size], SamplingConfig(max_new_tokens=1))


def test_long_prompt_warns_and_keeps_its_last_block_size_tokens(sampler):
    prompt = TEXT[:40]
    with pytest.warns(UserWarning, match="keeping its last 16 tokens"):
        out = sampler.generate(prompt, greedy(20))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert out == sampler.generate(prompt[-BLOCK:], greedy(20))


def test_empty_prompt_starts_from_newline(sampler):
    assert sampler.start_id == sampler.tokenizer.encode("\n")[0]
    out = sampler.generate("", greedy(20))[0]
    assert len(out) == 20 and out == sampler.generate("\n", greedy(20))[0]


@pytest.mark.parametrize("use_cache", [True, False])
def test_non_finite_logits_raise_a_folio_error(tok, use_cache):
    model = tiny_gpt(tok.vocab_size)
    forward = model.forward

    def broken(*args, **kwargs):
        logits, loss = forward(*args, **kwargs)
        return logits * float("nan"), loss

    model.forward = broken
    with pytest.raises(FolioError, match="non-finite logits at step 0"):
        Sampler(model, tok).generate("First", SamplingConfig(max_new_tokens=5, use_cache=use_cache))


# --- models without a cache, and bf16 -------------------------------------------------------------


def test_heads_gpt_falls_back_and_matches_the_fused_cache(model, sampler, tok):
    heads = tiny_gpt(tok.vocab_size, attention="heads")
    heads.load_state_dict(model.state_dict(), strict=False)  # all but the attention layers
    for h_block, f_block in zip(heads.transformer.h, model.transformer.h, strict=True):
        h_block.attn.copy_from_fused(f_block.attn)
    cfg = greedy(50)
    assert Sampler(heads, tok).generate("First", cfg) == sampler.generate("First", cfg)


def test_bigram_falls_back_to_its_last_token(tok):
    torch.manual_seed(0)
    bigram = BigramLanguageModel(BigramConfig(vocab_size=tok.vocab_size)).eval()
    s = Sampler(bigram, tok)
    out = s.generate(TEXT, greedy(10))[0]  # a long prompt: no warning needed, one token is read
    ids, table = tok.encode(TEXT[-1:]), bigram.token_embedding_table.weight
    for _ in range(10):
        ids.append(int(table[ids[-1]].argmax()))
    assert out == tok.decode(ids[1:])
    sampled = SamplingConfig(max_new_tokens=30, seed=2, num_samples=2)
    assert s.generate("F", sampled) == s.generate(
        "F", SamplingConfig(**{**vars(sampled), "use_cache": False})
    )


def test_bfloat16_autocast_runs(model, tok):
    outs = Sampler(model, tok, dtype=torch.bfloat16).generate(
        "First", SamplingConfig(max_new_tokens=20, seed=1)
    )
    assert len(outs[0]) == 20


def test_sampling_leaves_train_mode_alone_and_turns_dropout_off(tok):
    model = tiny_gpt(tok.vocab_size)
    model.transformer.drop.p = 0.9  # would scramble the logits if it were on
    model.train()
    s = Sampler(model, tok)
    out = s.generate("First", greedy(20))
    assert model.training
    model.eval()
    assert out == s.generate("First", greedy(20))


def test_a_call_that_cannot_fit_is_refused_before_allocating(
    model: GPT, tok: CharTokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A billion samples, or a trillion tokens, are refused in one line, at once (no 14 GB)."""
    import folio.memory as memory

    sampler = Sampler(model, tok)
    for cfg in (SamplingConfig(num_samples=10**9), SamplingConfig(max_new_tokens=10**12)):
        with pytest.raises(FolioError, match="needs about .* GiB .* --force"):
            sampler.generate("First", cfg)
        with pytest.raises(FolioError, match="needs about"):
            sampler.stream("First", cfg)
    monkeypatch.setattr(memory, "available_memory", lambda device: 1024)
    with pytest.raises(FolioError, match="0.0 GiB is available"):
        sampler.generate("First", greedy(5))
    unguarded = Sampler(model, tok, check_memory=False)  # the CLI's --force
    assert len(unguarded.generate("First", greedy(5))[0]) == 5


def test_a_draw_is_the_token_torch_multinomial_draws_for_the_same_seed() -> None:
    """choose_tokens writes out multinomial's CPU method: the same tokens, seed for seed."""
    from folio.sample.sampler import choose_tokens

    logits = torch.randn(3, 65, generator=torch.Generator().manual_seed(0)) * 3
    cfg = SamplingConfig(temperature=0.7, top_k=20)
    ours, theirs = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    probs = torch.softmax(
        filter_logits((logits - logits.amax(-1, keepdim=True)) / 0.7, 20, None), -1
    )
    for _ in range(2000):
        want = torch.multinomial(probs, 1, generator=theirs).squeeze(-1)
        assert torch.equal(choose_tokens(logits, cfg, ours), want)


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.3])
def test_the_decode_step_draws_what_choose_tokens_draws(temperature: float) -> None:
    """The static decoder chooses inside its step (`decode.choose`): for the same logits and
    the same variates it must pick choose_tokens' token, greedy and sampled."""
    from folio.sample.decode import choose
    from folio.sample.sampler import choose_tokens

    g = torch.Generator().manual_seed(1)
    cfg = SamplingConfig(temperature=temperature)
    t = torch.tensor([temperature])
    for _ in range(200):
        logits = torch.randn(4, 65, generator=g) * 3
        noise = torch.empty(4, 65).exponential_(1.0, generator=g)
        assert torch.equal(choose(logits, noise, t), choose_tokens(logits, cfg, g, noise))


def test_a_noise_stream_gives_the_variates_of_one_draw_per_step() -> None:
    """Drawn 64 steps at a time, the same numbers as a (B, V) draw per step: same seed, same text."""
    from folio.sample.sampler import NoiseStream

    stream = NoiseStream(torch.Generator().manual_seed(9), (2, 65), torch.device("cpu"))
    steps = torch.Generator().manual_seed(9)
    assert stream.chunk == 64
    for _ in range(150):  # across refills
        want = torch.empty(2, 65).exponential_(1.0, generator=steps)
        assert torch.equal(stream.next(), want)
    big = NoiseStream(torch.Generator(), (4, 50257), torch.device("cpu"))
    assert big.chunk == 1 and big.next().shape == (4, 50257)
