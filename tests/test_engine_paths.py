"""Tests for the serving engine's decode paths: batched prefill, slots, prefix reuse, claims.

The static exact path ("static", float32) is the engine's default for a GPT:
its prefills and steps give every request the same bits alone or among
others, and a prompt that starts with what a free slot holds prefills only the
rest, with the same bits as a fresh prefill. The approximate paths say that
they are not batch invariant, and why.
"""

from __future__ import annotations

import pytest
import torch
from serving import TEXT, random_gpt, request

from folio.errors import FolioError
from folio.models import BigramConfig, BigramLanguageModel
from folio.sample.engine import Engine, GenerationRequest, TokenEvent
from folio.sample.paths import PATH_NAMES, DecodePath, parse_decode_path
from folio.tokenizers import CharTokenizer

BLOCK = 32


@pytest.fixture(scope="module")
def tok() -> CharTokenizer:
    return CharTokenizer.from_text(TEXT)


@pytest.fixture(scope="module")
def model(tok):
    return random_gpt(tok.vocab_size, BLOCK)


def run_together(engine: Engine, reqs: list[GenerationRequest]) -> list[list[TokenEvent]]:
    outs: list[list[TokenEvent]] = [[] for _ in reqs]
    for out, req in zip(outs, reqs, strict=True):
        engine.submit(GenerationRequest(**{**vars(req), "listener": out.append}))
    while engine.step():
        pass
    return outs


def key(events: list[TokenEvent]) -> list[tuple]:
    """What a client sees, bit for bit: each token and its log-probabilities."""
    return [(e.token_id, e.logprob, e.top_logprobs, e.finish_reason) for e in events]


# --- names ---------------------------------------------------------------------------------------


def test_path_names_round_trip_and_a_bad_name_lists_the_good_ones():
    assert all(parse_decode_path(name).name == name for name in PATH_NAMES)
    assert parse_decode_path("aot-w8a8") == DecodePath("aot", "w8a8")
    for bad in ("fast", "module-w8a8", "static-fp8", "auto-int8", ""):
        with pytest.raises(FolioError, match="unknown decode path") as e:
            parse_decode_path(bad)
        assert "aot-w8a8" in str(e.value) and "\n" not in str(e.value)


def test_auto_takes_static_for_a_float32_gpt_and_module_for_the_others(model, tok):
    assert Engine(model).path == DecodePath("static")
    bigram = BigramLanguageModel(BigramConfig(vocab_size=tok.vocab_size))
    assert Engine(bigram).path == DecodePath("module")
    assert Engine(random_gpt(tok.vocab_size, BLOCK, attention="heads")).path.how == "module"
    with pytest.raises(FolioError, match="needs a GPT with causal attention"):
        Engine(bigram, decode="static")


# --- what each path claims ------------------------------------------------------------------------


@pytest.mark.parametrize("decode", ["static", "module"])
def test_the_exact_paths_are_batch_invariant_prefills_included(model, tok, decode):
    """Prompts of different lengths prefilled together, then decoded together, each equal to the
    same request alone: tokens and every log-probability, bit for bit."""
    engine = Engine(model, max_batch=12, decode=decode)
    assert engine.batch_invariant, engine.invariance_note
    reqs = [
        request(tok.encode(TEXT[i : i + 2 + 2 * i]), 6 + i, seed=i, top_logprobs=4)
        for i in range(12)
    ]
    alone = [key(run_together(engine, [r])[0]) for r in reqs]
    assert [key(out) for out in run_together(engine, reqs)] == alone


@pytest.mark.parametrize("decode", ["static-bf16", "static-int8", "static-w8a8"])
def test_an_approximate_path_says_it_is_not_batch_invariant_and_why(model, tok, decode):
    engine = Engine(model, max_batch=4, decode=decode)
    assert not engine.batch_invariant
    note = engine.invariance_note
    assert f"'{decode}' is not batch invariant" in note and "'static'" in note
    assert ("library's kernels" in note) == (decode != "static-w8a8")
    outs = run_together(engine, [request(tok.encode("First"), 5 + i, seed=i) for i in range(6)])
    assert [len(out) for out in outs] == [5 + i for i in range(6)]  # six requests, four slots
    assert all(out[-1].finish_reason == "length" for out in outs)


def test_turning_invariance_off_says_so(model):
    engine = Engine(model, batch_invariant=False)
    assert not engine.batch_invariant and "turned off" in engine.invariance_note


# --- batched prefill ------------------------------------------------------------------------------


def test_new_prompts_are_prefilled_in_one_forward_and_hear_their_first_token_in_that_step(
    model, tok, monkeypatch
):
    engine = Engine(model, max_batch=8)
    decoder = engine._backend.decoder.decoder
    calls = []
    forward = decoder._forward
    monkeypatch.setattr(
        decoder, "_forward", lambda *a, **k: calls.append(a[0].shape) or forward(*a, **k)
    )
    prompts = [tok.encode(TEXT[i : i + 2 + 3 * i]) for i in range(8)]  # a 1-token one is a step
    outs: list[list[TokenEvent]] = [[] for _ in prompts]
    for out, p in zip(outs, prompts, strict=True):
        engine.submit(request(p, 5, listener=out.append))
    assert engine.step()
    assert calls == [torch.Size([8, max(len(p) for p in prompts)])]  # one padded prefill
    assert [len(out) for out in outs] == [1] * 8
    assert engine.counts["prefill_tokens"] == sum(len(p) for p in prompts)
    engine.step()
    assert calls[1] == torch.Size([8, 1])  # then one decode step for all eight


# --- slots: cancelling, reuse --------------------------------------------------------------------


def test_cancelled_requests_free_their_slots_for_the_waiting_ones(model, tok):
    engine = Engine(model, max_batch=2)
    long = [engine.submit(request(tok.encode("First"), 1000, seed=i)) for i in range(2)]
    waiting = [request(tok.encode(w), 6, seed=3, top_logprobs=2) for w in ("hear", "Speak")]
    outs: list[list[TokenEvent]] = [[], []]
    for out, r in zip(outs, waiting, strict=True):
        engine.submit(GenerationRequest(**{**vars(r), "listener": out.append}))
    for _ in range(3):
        engine.step()
    assert engine.stats()["active"] == 2 and engine.stats()["waiting"] == 2
    for handle in long:
        handle.cancel()
    engine.step()
    assert engine.stats()["active"] == 2 and engine.stats()["waiting"] == 0
    while engine.step():
        pass
    fresh = Engine(model, max_batch=2)
    assert [key(o) for o in outs] == [key(run_together(fresh, [r])[0]) for r in waiting]
    assert engine.counts["cancelled"] == 2 and engine._backend.rows == []


def test_a_prompt_that_extends_what_a_free_slot_holds_prefills_only_the_rest_bit_for_bit(
    model, tok
):
    """A chat's next turn: the history is unchanged, so only the new tokens are prefilled, and
    the reply equals a fresh prefill of the whole history, every log-probability included."""
    engine = Engine(model, max_batch=4)
    first = tok.encode("First Citizen:")
    reply = [e.token_id for e in run_together(engine, [request(first, 8, temperature=0.0)])[0]]
    history = first + reply + tok.encode("\nAll:")
    before = dict(engine.counts)
    second = request(history, 6, seed=4, top_logprobs=20)
    reused = key(run_together(engine, [second])[0])
    # The slot holds the prompt and the reply but its last token (never fed back).
    assert engine.counts["reused_tokens"] - before["reused_tokens"] == len(first) + 7
    assert (
        engine.counts["prefill_tokens"] - before["prefill_tokens"] == len(history) - len(first) - 7
    )
    fresh = Engine(model, max_batch=4)
    assert key(run_together(fresh, [second])[0]) == reused
    assert fresh.counts["reused_tokens"] == 0
