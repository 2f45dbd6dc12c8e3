"""The serving engine: many generation requests, one decode loop, token ids in and out.

Notation: B active sequences, T time, V vocabulary size, L cached positions.

Continuous batching (Yu et al. 2022, "Orca"). Requests wait in a bounded
queue; between two decode steps the engine admits waiting requests into the
batch (up to `max_batch`) and drops the finished and the cancelled ones, so a
request never waits for another to end. Each step:

1. the new sequences (and those whose window just slid) are prefilled: on the
   static paths all together, in one forward over their padded prompts, and
   each hears its first token at once, before the decode step runs;
2. every other sequence contributes its last token to one batched forward of
   shape (B, 1): the position-wise layers (embeddings, LayerNorm, the qkv and
   output projections, the MLP, the head) run once for the whole batch;
3. the tokens of the step are chosen in one call (`folio.sample.choice`), each
   row with its own temperature and the variates of its own `torch.Generator`,
   seeded from its `seed` (a row with top-k or top-p has its own call).

Decode paths (`decode=`, named as in `folio.sample.paths`). The static paths
keep every sequence in a slot of one static cache (`folio.sample.slots`);
"module" keeps a `KVCache` per sequence and runs the model's own forward,
prefilling one prompt at a time (the fallback for models the static decoder
does not cover: the list-of-heads GPT, the bigram model). "auto" takes
"static" for a float32 GPT, else "module". A request whose prompt starts
with tokens a free slot still holds (the last turn of the same chat, a shared
system prompt) takes that slot and prefills only the rest (prefix reuse).

The engine sees token ids only; text is encoded and decoded at the edges (the
HTTP server, the chat REPL), as in nanochat's engine.

Why a request's output does not depend on its neighbours. Two things could
make a sequence's floats differ between serving it alone and in a batch:

- Attention over sequences of different lengths. Padding them into one
  tensor changes the length of each softmax and of each weighted sum, so the
  float sums change. Here every sequence keeps its own KV cache of batch 1
  (`folio.models.kv_cache.CacheBatch`) and attention runs once per sequence,
  on exactly the keys it would see alone: no padding, no mask.
- The batched matrix multiplies. A BLAS picks a different kernel for 1 row,
  for a few rows and for many, and the kernels sum in different orders, so
  row 0 of a (16, C) @ (C, 4C) product differs in the last bits from the same
  row computed alone. The decode step therefore runs its linear layers inside
  `folio.models.invariant.batch_invariant()`: Folio's own operator sums every
  output in one fixed order whatever the number of rows, on every CPU. The
  other layers (embeddings, LayerNorm, activations, residual adds) work row
  by row already.

On the static exact path ("static", float32, the default) the same holds
for prefills: attention runs one query at a time over exactly its own keys,
so a prompt prefilled among others, a prompt prefilled after a reused prefix,
and the same tokens decoded one by one give the same bits
(`folio.sample.slots`).

With both, the logits of a sequence are bitwise the same alone or batched,
so greedy and seeded sampling give the same tokens, by construction rather
than by a library setting. `Engine.batch_invariant` says whether it holds:
it does for a float32 model on a CPU on the "module" and "static" paths.
Elsewhere (a CUDA device, bfloat16 weights, the compiled and low-precision
paths, or no C++ compiler to build the operator) the engine serves with
kernels whose sums depend on the batch, says why in `Engine.invariance_note`,
and outputs may differ between batch sizes in near ties.

Context policy, as in `folio.sample.Sampler`: when a sequence's window would
exceed block_size, it keeps its last `context_keep` tokens (default
block_size // 2) and is prefilled again from them.

Memory stays flat: KV caches are taken from a pool of at most `max_batch`
caches (or slots) and reused; a finished sequence keeps nothing but the keys
and values its slot holds for prefix reuse.

The file runs past 500 lines on purpose: the admit, prefill, choose, advance and
retire steps of one loop share the engine's state and its lock, and read best
in one place, top to bottom, as the order a request passes through them.
"""

from __future__ import annotations

import queue
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from folio.errors import FolioError
from folio.models import invariant
from folio.sample.backends import ModuleBackend, SlotBackend
from folio.sample.choice import NoiseStream, choose
from folio.sample.decode import supports_static_decoding
from folio.sample.paths import STATIC_HOWS, DecodePath, parse_decode_path
from folio.sample.sampler import SamplingConfig

MAX_TOP_LOGPROBS = 20
FINISH_REASONS = ("stop", "length", "cancelled", "error")


def _invariance(model: nn.Module, device: torch.device) -> tuple[bool, str]:
    """Whether the batched forwards can run the batch-invariant operator, and if not, why."""
    if device.type != "cpu":
        return False, f"batch invariance holds on a CPU only, not on {device.type}"
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes - {torch.float32}:
        names = ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
        return False, f"batch invariance needs float32 weights, not {names}"
    try:
        invariant.load()
    except FolioError as e:
        return False, f"batch invariance does not hold: {e}"
    return True, "batch invariant: every row is summed in one fixed order"


def _not_invariant(path: DecodePath) -> str:
    """Why a fast path's outputs may depend on the batch."""
    padded = "its attention runs over the batch's padded rows, so its sums depend on the others"
    if path.how == "static" and path.weights == "w8a8":
        why = padded
    elif path.how == "static":
        why = (
            f"its {path.weights} products run the library's kernels, whose summation order "
            f"depends on the number of rows, and {padded}"
        )
    else:
        why = (
            "its compiled step is generated per batch size, and the products and attention "
            "it generates sum in orders that depend on the number of rows"
        )
    return (
        f"decode path '{path.name}' is not batch invariant: {why}; "
        "'static' (float32) gives the same output alone or among others"
    )


def resolve_path(model: nn.Module, decode: str | DecodePath, device: torch.device) -> DecodePath:
    """The path `decode` names for this model: 'auto' resolved, the impossible refused."""
    path = parse_decode_path(decode) if isinstance(decode, str) else decode
    static_ok = supports_static_decoding(model)
    if path.how == "auto":
        fp32 = all(p.dtype == torch.float32 for p in model.parameters())
        return DecodePath("static" if static_ok and fp32 else "module")
    if path.how in STATIC_HOWS and not static_ok:
        raise FolioError(
            f"decode path '{path.name}' needs a GPT with causal attention in the fused form; "
            "use the decode path 'module' or 'auto'"
        )
    if path.weights == "w8a8" and device.type != "cpu":
        raise FolioError(
            f"w8a8 weights run on a CPU only (this model is on {device.type}); "
            "use bfloat16 or int8 weights"
        )
    return path


class EngineBusy(FolioError):
    """The waiting queue is full: try again later (HTTP 429)."""


@dataclass
class TokenEvent:
    """What a request hears after each step: a new token, the end, or both."""

    token_id: int | None
    """The new token; None when the request ended without one (a stop token, cancel, error)."""
    logprob: float | None = None
    """Log-probability of the token under the model (temperature 1, no filters), if asked."""
    top_logprobs: list[tuple[int, float]] | None = None
    """The most likely tokens at this step with their log-probabilities, if asked."""
    finish_reason: str | None = None
    """Set on the last event: 'stop' (a stop token), 'length', 'cancelled' or 'error'."""
    error: str | None = None
    """One line saying what went wrong, with finish_reason 'error'."""
    completion_tokens: int = 0
    """Tokens generated so far, this step's included (a stop token too)."""
    stop_token_id: int | None = None
    """The stop token that ended the request (finish_reason 'stop'); `logprob` is its own."""


@dataclass
class GenerationRequest:
    """One completion to generate: a prompt of token ids and how to decode it."""

    prompt_ids: list[int]
    """The context, at least one id; longer than block_size keeps its last block_size ids."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """max_new_tokens, temperature, top_k, top_p and seed (stop strings belong to the edge;
    num_samples must be 1)."""
    stop_ids: frozenset[int] = frozenset()
    """Token ids that end the generation (e.g. `<|end|>`); the stop token is not emitted."""
    top_logprobs: int | None = None
    """None: no log-probabilities. 0..20: the chosen token's and this many alternatives."""
    listener: Callable[[TokenEvent], None] | None = None
    """Called from the engine's thread with each event; must not block."""


class Handle:
    """A submitted request: cancel it at any time (it leaves the batch before the next step)."""

    def __init__(self, engine: Engine, request: GenerationRequest) -> None:
        self.request = request
        self._engine = engine
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop generating; the listener hears a final 'cancelled' event unless it already ended."""
        self._cancelled.set()
        self._engine._wake_up()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


@dataclass
class _Sequence:
    handle: Handle
    tokens: list[int]  # prompt then generated ids
    start: int  # the next logits condition on tokens[start:]
    noise: NoiseStream | None  # the draws' variates, from the request's own generator
    slot: Any = None  # the backend's handle on this sequence's cache
    cached: int = 0  # the cache holds tokens[start : start + cached]
    generated: int = 0
    finished: bool = False


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


class Engine:
    """Continuous batching over one model; see the module docstring.

    Use it from one thread with `stream()` (the chat REPL), or call `start()`
    to run the decode loop in a background thread and `submit()` from any
    thread (the server). `decode`: the decode path, a name of
    `folio.sample.paths` ('auto': 'static' for a float32 GPT, else 'module').
    `batch_invariant=False` keeps PyTorch's own kernels in the batched forwards
    (what benchmarks/engine_invariance.py compares against).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        max_batch: int = 32,
        max_queue: int = 64,
        context_keep: int | None = None,
        device: torch.device | str | None = None,
        batch_invariant: bool = True,
        decode: str | DecodePath = "auto",
    ) -> None:
        for name, value in (("max_batch", max_batch), ("max_queue", max_queue)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FolioError(f"engine: {name} must be an integer >= 1, got {value!r}")
        self.device = torch.device(device) if device is not None else _model_device(model)
        self.model = model.to(self.device).eval()
        self.vocab_size: int = model.config.vocab_size
        self.block_size: int = model.context_size
        self.context_keep = min(context_keep or max(1, self.block_size // 2), self.block_size)
        self.max_batch, self.max_queue = max_batch, max_queue
        self.path = resolve_path(self.model, decode, self.device)
        """The decode path this engine runs (never 'auto')."""
        if not batch_invariant:
            self.batch_invariant, self.invariance_note = (
                False,
                "batch invariance turned off: PyTorch's own kernels",
            )
        elif self.path.how in ("module", "static") and self.path.exact:
            self.batch_invariant, self.invariance_note = _invariance(self.model, self.device)
        else:
            self.batch_invariant, self.invariance_note = False, _not_invariant(self.path)
        if self.path.how in STATIC_HOWS:
            exact = self.path == DecodePath("static") and self.batch_invariant
            self._backend: ModuleBackend | SlotBackend = SlotBackend(
                self.model, max_batch, self.path, exact
            )
        else:
            self._backend = ModuleBackend(self.model, self.batch_invariant)
        self.supports_cache: bool = self._backend.supports_cache
        self._waiting: deque[Handle] = deque()
        self._active: list[_Sequence] = []
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.counts = {
            "completed": 0,
            "cancelled": 0,
            "errors": 0,
            "steps": 0,
            "prefill_tokens": 0,
            "reused_tokens": 0,
        }
        """Totals since start; prefill_tokens were computed, reused_tokens came from a slot."""

    def warm_up(self) -> None:
        """Compile the decode steps now (compiled paths), so that no request waits for it."""
        if isinstance(self._backend, SlotBackend):
            self._backend.warm_up()

    # --- submitting --------------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> Handle:
        """Queue a request; raises EngineBusy when `max_queue` requests already wait."""
        ids = [int(i) for i in request.prompt_ids]
        if not ids:
            raise FolioError("the prompt is empty: give at least one token")
        if any(not 0 <= i < self.vocab_size for i in ids):
            raise FolioError(f"prompt has token ids outside the vocabulary of {self.vocab_size}")
        if request.sampling.num_samples != 1:
            raise FolioError("the engine generates one sample per request (num_samples 1)")
        top = request.top_logprobs
        if top is not None and (isinstance(top, bool) or not 0 <= top <= MAX_TOP_LOGPROBS):
            raise FolioError(f"top_logprobs must be an integer in [0, {MAX_TOP_LOGPROBS}]")
        handle = Handle(self, replace(request, prompt_ids=ids[-self.block_size :]))
        with self._lock:
            if self._stopping:
                raise FolioError("the engine is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise EngineBusy(
                    f"server busy: {len(self._waiting)} requests are already waiting; retry shortly"
                )
            self._waiting.append(handle)
            self._lock.notify_all()
        return handle

    def stream(self, request: GenerationRequest) -> Iterator[TokenEvent]:
        """Submit and yield the request's events until its last one.

        Without a background thread the steps run here, in the caller's thread.
        Closing the iterator early (or Ctrl-C while it runs) cancels the request.
        """
        events: queue.SimpleQueue[TokenEvent] = queue.SimpleQueue()
        outer = request.listener

        def listen(event: TokenEvent) -> None:
            events.put(event)
            if outer is not None:
                outer(event)

        handle = self.submit(replace(request, listener=listen))
        finished = False
        try:
            while not finished:
                if self._thread is None:
                    while events.empty():
                        if not self.step() and events.empty():
                            raise RuntimeError("the engine has nothing to run for this request")
                event = events.get()
                finished = event.finish_reason is not None
                yield event
        finally:
            if not finished:
                handle.cancel()
                if self._thread is None:
                    self._reap()

    def stats(self) -> dict[str, int]:
        """Requests active and waiting, and totals since start."""
        with self._lock:
            return {"active": len(self._active), "waiting": len(self._waiting), **self.counts}

    # --- the decode loop ---------------------------------------------------------------

    def start(self) -> None:
        """Run the decode loop in a background thread until `close()`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="folio-engine", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the loop; requests still running or waiting end as 'cancelled'."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for handle in list(self._waiting):
            handle.cancel()
        for seq in self._active:
            seq.handle.cancel()
        self._reap()

    def _wake_up(self) -> None:
        with self._lock:
            self._lock.notify_all()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self._waiting and not self._active:
                    self._lock.wait()
                if self._stopping:
                    return
            try:
                self.step()
            except Exception as e:  # a bug must not kill the server: end the batch, go on
                traceback.print_exc(file=sys.stderr)
                self._fail_all(f"internal error in the decode loop ({type(e).__name__})")

    def step(self) -> bool:
        """Admit, drop the finished, prefill the new, run one forward for every other active
        sequence.

        Returns False when there was nothing to do.
        """
        self._reap()
        self._admit()
        if not self._active:
            return False
        self.counts["steps"] += 1
        with torch.no_grad():
            fresh = [s for s in self._active if self._needs_prefill(s)]
            if fresh:
                logits, computed = self._backend.prefill(fresh)  # (F, V)
                window = sum(len(s.tokens) - s.start for s in fresh)
                self.counts["prefill_tokens"] += computed
                self.counts["reused_tokens"] += window - computed
                self._choose(fresh, logits)  # first tokens go out before the decode step
            seen = {id(s) for s in fresh}
            rest = [s for s in self._active if id(s) not in seen and not s.finished]
            if rest:
                self._choose(rest, self._backend.decode(rest))  # (B, V)
        self._reap()
        return True

    def _admit(self) -> None:
        with self._lock:
            while self._waiting and len(self._active) < self.max_batch:
                handle = self._waiting.popleft()
                if handle.cancelled:
                    self._finish_quietly(handle, "cancelled", 0)
                    continue
                if handle.request.sampling.max_new_tokens == 0:
                    self.counts["completed"] += 1
                    self._tell(handle, TokenEvent(None, finish_reason="length"))
                    continue
                seq = self._new_sequence(handle)
                self._backend.admit(seq)
                self._active.append(seq)

    def _new_sequence(self, handle: Handle) -> _Sequence:
        sampling = handle.request.sampling
        noise = None
        if sampling.temperature > 0:
            generator = torch.Generator(device=self.device)
            if sampling.seed is None:
                generator.seed()  # fresh entropy, never the global RNG
            else:
                generator.manual_seed(sampling.seed)
            noise = NoiseStream(generator, (1, self.vocab_size), self.device)
        return _Sequence(handle, list(handle.request.prompt_ids), 0, noise)

    def _reap(self) -> None:
        """Drop finished and cancelled sequences, returning their caches to the pool."""
        with self._lock:
            keep = []
            for seq in self._active:
                if seq.handle.cancelled and not seq.finished:
                    self._finish_quietly(seq.handle, "cancelled", seq.generated)
                    seq.finished = True
                if seq.finished:
                    self._backend.release(seq)
                else:
                    keep.append(seq)
            self._active = keep
            if self._stopping and self._thread is None:
                while self._waiting:
                    self._finish_quietly(self._waiting.popleft(), "cancelled", 0)

    def _needs_prefill(self, seq: _Sequence) -> bool:
        n = len(seq.tokens)
        if n - seq.start > self.block_size:  # slide: keep the last tokens, prefill again
            seq.start = n - self.context_keep
            seq.cached = 0
        # The cache holds tokens[start : start + cached]; one missing token is a decode.
        return seq.slot is None or seq.cached != n - seq.start - 1

    def _choose(self, seqs: list[_Sequence], logits: torch.Tensor) -> None:
        """Pick each sequence's token from its row of logits (B, V), in one call where the
        rows need no filter, and tell each sequence's listener."""
        finite = torch.isfinite(logits).all(dim=-1).tolist()
        configs = [s.handle.request.sampling for s in seqs]
        noise = torch.ones_like(logits)  # greedy rows: unused
        for b, seq in enumerate(seqs):
            if seq.noise is not None and finite[b]:
                noise[b] = seq.noise.next()[0]
        temperature = torch.tensor([c.temperature for c in configs], device=logits.device)
        tokens = choose(logits, noise, temperature).tolist()  # (B,)
        for b, cfg in enumerate(configs):
            if cfg.top_k is not None or cfg.top_p is not None:
                rows = slice(b, b + 1)
                tokens[b] = int(
                    choose(logits[rows], noise[rows], temperature[rows], cfg.top_k, cfg.top_p)
                )
        for b, seq in enumerate(seqs):
            self._advance(seq, logits[b], tokens[b], finite[b])

    def _advance(self, seq: _Sequence, logits: torch.Tensor, token: int, finite: bool) -> None:
        request = seq.handle.request
        cfg = request.sampling
        if not finite:
            self.counts["errors"] += 1
            self._emit(
                seq,
                TokenEvent(
                    None,
                    finish_reason="error",
                    error="the model produced non-finite logits (NaN or inf); "
                    "the weights may be corrupt",
                    completion_tokens=seq.generated,
                ),
            )
            return
        seq.generated += 1
        event = TokenEvent(token, completion_tokens=seq.generated)
        if request.top_logprobs is not None:
            logprobs = F.log_softmax(logits, dim=-1)  # (V,)
            event.logprob = float(logprobs[token])
            if request.top_logprobs > 0:
                values, ids = torch.topk(logprobs, min(request.top_logprobs, self.vocab_size))
                event.top_logprobs = list(zip(ids.tolist(), values.tolist(), strict=True))
        if token in request.stop_ids:
            event.token_id, event.stop_token_id, event.finish_reason = None, token, "stop"
        elif seq.generated >= cfg.max_new_tokens:
            event.finish_reason = "length"
        else:
            seq.tokens.append(token)
        self._emit(seq, event)

    def _emit(self, seq: _Sequence, event: TokenEvent) -> None:
        if event.finish_reason is not None:
            if event.finish_reason != "error":
                self.counts["completed"] += 1
            seq.finished = True  # reaped after this step
        self._tell(seq.handle, event)

    def _finish_quietly(self, handle: Handle, reason: str, generated: int) -> None:
        if reason == "cancelled":
            self.counts["cancelled"] += 1
        self._tell(handle, TokenEvent(None, finish_reason=reason, completion_tokens=generated))

    @staticmethod
    def _tell(handle: Handle, event: TokenEvent) -> None:
        listener = handle.request.listener
        if listener is None:
            return
        try:
            listener(event)
        except Exception:  # a listener's bug ends only its own request
            traceback.print_exc(file=sys.stderr)
            handle._cancelled.set()

    def _fail_all(self, message: str) -> None:
        with self._lock:
            active, self._active = self._active, []
        for seq in active:
            self.counts["errors"] += 1
            self._tell(
                seq.handle,
                TokenEvent(
                    None, finish_reason="error", error=message, completion_tokens=seq.generated
                ),
            )
        self._backend.reset(active)  # after an internal error: every cache free and empty
