"""Tests for folio.sample.engine: continuous batching that changes no request's output."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
import torch
from serving import TEXT, random_gpt, request

from folio.errors import FolioError
from folio.models import BigramConfig, BigramLanguageModel
from folio.models.kv_cache import CacheBatch
from folio.sample import Sampler, SamplingConfig
from folio.sample.engine import Engine, EngineBusy, GenerationRequest, TokenEvent
from folio.tokenizers import CharTokenizer

BLOCK = 16


@pytest.fixture(scope="module")
def tok() -> CharTokenizer:
    return CharTokenizer.from_text(TEXT)


@pytest.fixture(scope="module")
def model(tok):
    return random_gpt(tok.vocab_size, BLOCK)


def run_alone(engine: Engine, req: GenerationRequest) -> list[TokenEvent]:
    return list(engine.stream(req))


def run_together(engine: Engine, reqs: list[GenerationRequest]) -> list[list[TokenEvent]]:
    """Submit all, then step until every request ended: they share every decode step."""
    outs: list[list[TokenEvent]] = [[] for _ in reqs]
    for out, req in zip(outs, reqs, strict=True):
        engine.submit(GenerationRequest(**{**vars(req), "listener": out.append}))
    while engine.step():
        pass
    return outs


def ids(events: list[TokenEvent]) -> list[int]:
    return [e.token_id for e in events if e.token_id is not None]


# --- the batched forward -----------------------------------------------------------------------


def test_cache_batch_decode_matches_each_sequence_alone(model):
    """Rows of different lengths stepped together give each row's own cached logits."""
    prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 10], [11, 12]]
    caches, alone = [], []
    with torch.no_grad():
        for p in prompts:
            cache = model.new_kv_cache(1)
            model(torch.tensor([p]), cache=cache)
            caches.append(cache)
            ref = model.new_kv_cache(1)
            logits, _ = model(torch.tensor([p + [7]]), cache=ref, last_only=True)
            alone.append(logits[0, -1])
        batched, _ = model(
            torch.tensor([[7]] * len(prompts)), cache=CacheBatch(caches), last_only=True
        )
    for row, ref in zip(batched[:, -1], alone, strict=True):
        torch.testing.assert_close(row, ref, atol=1e-5, rtol=1e-5)
    assert [c.length for c in caches] == [len(p) + 1 for p in prompts]


# --- one request: the same as the sampler ------------------------------------------------------


@pytest.mark.parametrize("seed", [None, 3])
def test_one_request_equals_the_sampler_across_window_slides(model, tok, seed):
    prompt = tok.encode("First")
    n = 45  # the window slides twice at block_size 16
    temperature = 0.0 if seed is None else 1.0
    want = Sampler(model, tok).generate_ids(
        prompt, SamplingConfig(max_new_tokens=n, temperature=temperature, seed=seed)
    )
    events = run_alone(Engine(model), request(prompt, n, temperature=temperature, seed=seed))
    assert ids(events) == [int(t) for t in want]
    assert events[-1].finish_reason == "length" and events[-1].completion_tokens == n


@pytest.mark.parametrize("kind", ["heads", "bigram"])
def test_models_without_a_cache_fall_back_and_match_the_sampler(tok, kind):
    if kind == "bigram":
        torch.manual_seed(0)
        m = BigramLanguageModel(BigramConfig(vocab_size=tok.vocab_size)).eval()
    else:
        m = random_gpt(tok.vocab_size, BLOCK, attention="heads")
    prompt = tok.encode("Fir")
    want = Sampler(m, tok).generate_ids(prompt, SamplingConfig(max_new_tokens=30, seed=2))
    assert ids(run_alone(Engine(m), request(prompt, 30, seed=2))) == [int(t) for t in want]


# --- many requests: each as if alone -------------------------------------------------------------


def test_requests_batched_together_equal_each_served_alone(model, tok):
    engine = Engine(model, max_batch=8)
    reqs = [
        request(tok.encode(TEXT[i : i + 1 + i % 5]), 10 + 3 * i, seed=i, temperature=0.9)
        for i in range(8)
    ]
    alone = [ids(run_alone(engine, r)) for r in reqs]
    steps = engine.counts["steps"]
    together = [ids(out) for out in run_together(engine, reqs)]
    assert together == alone
    assert engine.counts["steps"] - steps == max(len(a) for a in alone)  # one shared loop


def test_requests_join_and_leave_between_steps(model, tok):
    engine = Engine(model, max_batch=4)
    a, b = request(tok.encode("First"), 30, seed=1), request(tok.encode("hear"), 8, seed=2)
    want_a, want_b = ids(run_alone(engine, a)), ids(run_alone(engine, b))
    got_a: list[TokenEvent] = []
    got_b: list[TokenEvent] = []
    engine.submit(GenerationRequest(**{**vars(a), "listener": got_a.append}))
    for _ in range(5):
        engine.step()
    engine.submit(GenerationRequest(**{**vars(b), "listener": got_b.append}))  # joins mid-way
    while engine.step():
        if got_b and got_b[-1].finish_reason:  # b has left; a goes on alone
            assert engine.stats()["active"] <= 1
    assert (ids(got_a), ids(got_b)) == (want_a, want_b)


def test_batch_invariance_gives_bitwise_equal_tokens_and_logprobs(model, tok):
    """32 seeded requests served together equal each served alone, bit for bit.

    It holds by construction on every CPU (the decode step's linear layers sum
    each output in one fixed order), with no library setting to rely on.
    """
    engine = Engine(model, max_batch=32)
    assert engine.batch_invariant, engine.invariance_note
    reqs = [
        request(tok.encode(TEXT[i : i + 1 + i % 7]), 20, seed=i, top_logprobs=3) for i in range(32)
    ]

    def key(evs):
        return [(e.token_id, e.logprob, e.top_logprobs) for e in evs]

    alone = [key(run_alone(engine, r)) for r in reqs]
    together = [key(evs) for evs in run_together(engine, reqs)]
    assert sum(a == b for a, b in zip(alone, together, strict=True)) == 32


def test_the_batched_decode_step_equals_each_row_alone_bit_for_bit(model):
    """The module path's decode forward of a (B, 1) batch: each row bitwise equal to the row
    at batch 1."""
    prompts = [[1 + i % 9, 2 + i % 5, 3] for i in range(33)]
    engine = Engine(model, max_batch=33, decode="module")
    with torch.no_grad():
        seqs = []
        for p in prompts:
            cache = model.new_kv_cache(1)
            model(torch.tensor([p]), cache=cache)
            seqs.append(SimpleNamespace(tokens=p + [4], slot=cache, cached=len(p)))
        together = engine._backend.decode(seqs)  # (B, V)
        for i, seq in enumerate(seqs):
            rewind(seq.slot)
            assert torch.equal(engine._backend.decode([seq])[0], together[i]), i


def rewind(cache) -> None:
    """Forget the last cached position (the step just taken)."""
    for layer in cache.layers:
        layer.length -= 1


def test_a_bfloat16_model_says_why_it_is_not_batch_invariant(tok):
    engine = Engine(random_gpt(tok.vocab_size, BLOCK).to(torch.bfloat16))
    assert not engine.batch_invariant
    assert "float32" in engine.invariance_note


# --- stopping, cancelling, limits ----------------------------------------------------------------


def test_a_stop_token_ends_the_request_and_is_not_emitted(model, tok):
    engine = Engine(model)
    prompt = tok.encode("First")
    free = ids(run_alone(engine, request(prompt, 20, temperature=0.0)))
    stop = free[6]
    events = run_alone(engine, request(prompt, 20, temperature=0.0, stop_ids=frozenset({stop})))
    assert ids(events) == free[: free.index(stop)]
    assert events[-1].finish_reason == "stop" and events[-1].token_id is None


def test_cancel_drops_a_request_between_steps_and_returns_its_cache(model, tok):
    engine = Engine(model, max_batch=2)
    events: list[TokenEvent] = []
    handle = engine.submit(request(tok.encode("F"), 1000, listener=events.append))
    for _ in range(3):
        engine.step()
    handle.cancel()
    engine.step()
    assert events[-1].finish_reason == "cancelled" and len(ids(events)) == 3
    assert engine.stats()["active"] == 0 and engine._backend.rows == []  # its slot is free
    stream = engine.stream(request(tok.encode("F"), 1000))
    next(stream)
    stream.close()  # closing a stream early cancels it too
    assert engine.stats()["active"] == 0 and engine.counts["cancelled"] == 2


def test_the_queue_is_bounded(model, tok):
    engine = Engine(model, max_batch=1, max_queue=2)
    for _ in range(2):
        engine.submit(request(tok.encode("F"), 5))
    with pytest.raises(EngineBusy, match="busy"):
        engine.submit(request(tok.encode("F"), 5))
    engine.step()  # one is admitted to the batch: the queue has room again
    engine.submit(request(tok.encode("F"), 5))


@pytest.mark.parametrize("decode", ["static", "module"])
def test_thousands_of_requests_reuse_at_most_max_batch_caches(model, tok, decode):
    engine = Engine(model, max_batch=4, max_queue=2000, decode=decode)
    done = []
    for i in range(1000):
        engine.submit(request(tok.encode("F"), 2, seed=i, listener=done.append))
    while engine.step():
        pass
    assert sum(e.finish_reason == "length" for e in done) == 1000
    assert engine.stats()["active"] == 0
    if decode == "module":
        assert engine._backend.made == 4 and len(engine._backend.free) == 4
    else:  # four slots, made once, all free again
        assert engine._backend.rows == [] and engine._backend.decoder.decoder.k[0].shape[0] == 4


def test_logprobs_are_the_model_distribution(model, tok):
    prompt = tok.encode("First")
    events = run_alone(Engine(model), request(prompt, 3, temperature=0.0, top_logprobs=5))
    with torch.no_grad():
        logits, _ = model(torch.tensor([prompt]))
    logprobs = torch.log_softmax(logits[0, -1], -1)
    first = events[0]
    assert first.logprob == pytest.approx(float(logprobs.max()), abs=1e-5)
    assert [i for i, _ in first.top_logprobs] == logprobs.topk(5).indices.tolist()
    assert first.top_logprobs[0][0] == first.token_id  # greedy picks the most likely


@pytest.mark.parametrize("decode", ["static", "module"])
def test_bad_requests_are_folio_errors_and_non_finite_logits_end_one_request(tok, decode):
    m = random_gpt(tok.vocab_size, BLOCK)
    engine = Engine(m, decode=decode)
    for bad in ([], [tok.vocab_size]):
        with pytest.raises(FolioError):
            engine.submit(request(bad, 3))
    with pytest.raises(FolioError):
        engine.submit(request([1], 3, top_logprobs=21))
    head = m.lm_head.weight
    saved = head.detach().clone()
    with torch.no_grad():
        head[3] = float("nan")  # corrupt weights, read in place by both paths
    events = run_alone(engine, request([1, 2], 3))
    assert events[-1].finish_reason == "error" and "non-finite" in events[-1].error
    with torch.no_grad():
        head.copy_(saved)
    assert len(ids(run_alone(engine, request([1, 2], 3)))) == 3  # the engine goes on


def test_background_loop_serves_threads_at_once(model, tok):
    engine = Engine(model, max_batch=8)
    reqs = [request(tok.encode("Fir"), 12, seed=i) for i in range(6)]
    want = [ids(run_alone(engine, r)) for r in reqs]
    engine.start()
    got: list[list[int] | None] = [None] * len(reqs)

    def client(i: int) -> None:
        got[i] = ids(engine.stream(reqs[i]))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(reqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    engine.close()
    assert got == want
    with pytest.raises(FolioError, match="shutting down"):
        engine.submit(reqs[0])
