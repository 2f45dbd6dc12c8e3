"""The sampling engine: prompt -> token ids -> text, with a KV cache and decoding controls.

Notation: B batch (num_samples), T time, V vocabulary size.

The video samples by re-running the model on the last block_size tokens for
every new token (`GPT.generate`). Here the fused-attention GPT runs the prompt
once (prefill) and then one token per step, reusing the keys and values of
earlier positions from a `KVCache`. The teaching forms (the list-of-heads GPT
and the bigram model) have no cache and fall back to re-running the window.

Context policy beyond block_size. Learned position embeddings exist for
block_size positions only, so a cache cannot simply slide: every cached key
depends on its absolute position. When the window [start, n) that the next
logits condition on would exceed block_size, the engine slides it to the last
`context_keep` tokens (default block_size // 2) and re-prefills the cache from
them; decoding then continues one token at a time until the window is full
again. Every step therefore conditions on between context_keep and block_size
tokens. `use_cache=False` recomputes exactly the same windows without a cache,
so the two paths produce the same tokens (up to float rounding in the logits);
the tests hold this for 300 greedy tokens across many slides. The same window
applies to models without learned positions (they were trained on block_size
tokens) and to the fallback models. With
context_keep = block_size the engine conditions on the last block_size tokens
at every step, exactly like the video's loop, at the price of a full re-prefill
per token once the context is full.

Before anything is allocated, each call estimates the memory that
num_samples x (prompt + max_new_tokens) needs (the token buffer, the cache,
one forward pass, the logits and the text; `folio.memory`) and refuses
in one line when it exceeds what is available, unless told to try anyway.

Decode paths (`Sampler(decode=...)`). The cached step runs in one of two forms,
which compute the same function: "module", the model's own forward with a
`KVCache` (the readable form: every block a module call), and "static",
`folio.sample.decode.StaticDecoder`, the same stack flattened into one loop
over a preallocated cache of block_size positions, with fewer calls and no
per-token allocation of Python objects. "compiled" is "static" with its
one-token step compiled by `torch.compile` (fixed shapes, compiled once per
sampler and batch size; the first step pays the compile time). "aot" is
"static" with its step compiled ahead of time by AOTInductor into a library
kept on disk (`folio.sample.aot`): the fastest per token, since a call skips
dynamo's guards and Python wrapper; the first use of a model shape, weight
format and batch size pays 20-30 s, later ones, in any process, a few. "auto", the
default, takes "static" where the model supports it and the sampler computes
in float32, else "module". The static paths can also keep their weights in
bfloat16 or int8 (`weights=`): faster where the CPU multiplies them natively,
and approximate; `folio bench sample` reports how far they are from float32.
The slide policy above is the same on every path.

Tokens are chosen by `folio.sample.choice` (temperature, then top-k, then
top-p, then one draw from a private `torch.Generator`), the one choice every
path that generates shares, so a seed reproduces a sample and never touches
the global RNG. On the static paths the step itself makes the draw when there
is no top-k or top-p (`StaticDecoder.advance`: a compiled step returns its
token with no Python between the logits and the choice), from the same
variates (`NoiseStream`), so every path picks the same tokens for a seed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from folio.errors import FolioError
from folio.memory import check_sampling_memory
from folio.runtime import TORCH_DTYPES
from folio.sample.choice import (  # noqa: F401  (re-exported: the sampler's public names)
    NoiseStream,
    choose_tokens,
    filter_logits,
    sampling_logprobs,
)
from folio.sample.decode import WEIGHT_FORMATS, StaticDecoder, supports_static_decoding
from folio.tokenizers.stream import TextStream, TokenBytes


class Tokenizer(Protocol):
    """What the sampler needs from a tokenizer."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise FolioError(f"sampling config: {name} must be an integer >= {minimum}, got {value!r}")


def _check_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise FolioError(f"sampling config: {name} must be a finite number, got {value!r}")
    return float(value)


@dataclass
class SamplingConfig:
    """How to decode: length, randomness, filters, stop strings, batch and cache."""

    max_new_tokens: int = 500
    """Tokens to generate per sample (0 generates nothing)."""
    temperature: float = 1.0
    """Divides the logits before sampling: below 1 sharper, above 1 flatter; 0 is greedy (argmax)."""
    top_k: int | None = None
    """Sample only among the k most likely tokens; larger than the vocabulary means all of them."""
    top_p: float | None = None
    """Nucleus sampling, in (0, 1]: keep the smallest set of most likely tokens whose
    probabilities sum to at least top_p (the most likely token is always kept)."""
    seed: int | None = None
    """Seed of this call's private random generator; the same seed gives the same text. None: fresh."""
    stop: list[str] = field(default_factory=list)
    """Stop a sample when its text contains one of these strings; the output ends just before it."""
    num_samples: int = 1
    """Independent samples of the same prompt, decoded together as one batch."""
    use_cache: bool = True
    """Use the KV cache where the model supports it (fused-attention GPT); same tokens either way."""
    context_keep: int | None = None
    """Tokens kept when the context outgrows block_size and the window slides (then the cache is
    re-filled from them). None: block_size // 2. block_size: the video's 'last block_size tokens'
    at every step, exact but slow. Values above block_size are clamped to it."""

    def __post_init__(self) -> None:
        _check_int("max_new_tokens", self.max_new_tokens, 0)
        self.temperature = _check_number("temperature", self.temperature)
        if self.temperature < 0:
            raise FolioError(
                f"sampling config: temperature must be >= 0 (0 is greedy), got {self.temperature!r}"
            )
        if self.top_k is not None:
            _check_int("top_k", self.top_k, 1)
        if self.top_p is not None:
            self.top_p = _check_number("top_p", self.top_p)
            if not 0.0 < self.top_p <= 1.0:
                raise FolioError(f"sampling config: top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None:
            _check_int("seed", self.seed, 0)
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if not isinstance(self.stop, list | tuple) or not all(
            isinstance(s, str) and s for s in self.stop
        ):
            raise FolioError(
                f"sampling config: stop must be a list of non-empty strings, got {self.stop!r}"
            )
        self.stop = list(self.stop)
        _check_int("num_samples", self.num_samples, 1)
        if not isinstance(self.use_cache, bool):
            raise FolioError(
                f"sampling config: use_cache must be true or false, got {self.use_cache!r}"
            )
        if self.context_keep is not None:
            _check_int("context_keep", self.context_keep, 1)


@dataclass
class Step:
    """One decoding step: the logits the tokens were chosen from, and the tokens."""

    logits: torch.Tensor
    """(B, V) float32 logits of the last position, before temperature and filters."""
    ids: torch.Tensor
    """(B,) the token chosen for each sample."""


DECODE_PATHS = ("auto", "module", "static", "compiled", "aot")
"""How the cached step runs: see the module docstring."""


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def default_start_id(tokenizer: Tokenizer | None) -> int:
    """End-of-text (a BPE document boundary), else newline if it is one token, else token 0.

    A BPE dataset puts `<|endoftext|>` before every document but the first, so
    starting from it samples the opening of a document, as GPT-2 does.
    """
    if tokenizer is None:
        return 0
    eot = getattr(tokenizer, "eot_id", None)
    if isinstance(eot, int):
        return eot
    try:
        ids = tokenizer.encode("\n")
    except FolioError:
        return 0
    return ids[0] if len(ids) == 1 else 0


class Sampler:
    """Generates text from a model: token ids step by step, streamed text, or whole completions.

    An empty prompt starts from a default token, `start_id`: a BPE tokenizer's
    `<|endoftext|>`, else the tokenizer's newline when it is a single token (the first token of a Shakespeare
    character vocabulary, as in the video), else token 0. The start token is
    context only and not part of the completion. A prompt longer than the
    context keeps its last block_size tokens, with a warning.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Tokenizer | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        check_memory: bool = True,
        decode: str = "auto",
        weights: str = "float32",
    ) -> None:
        """`dtype`: autocast dtype (bfloat16 or float16); None or float32 computes in fp32.

        `decode`: the path of cached steps, one of `DECODE_PATHS` (module
        docstring). `weights`: float32, bfloat16 or int8 weights for the static
        paths ("static", "compiled", "aot"; float32 only otherwise). The static paths
        compute in float32 (with bfloat16 or int8 weights, the activations meet
        them in bfloat16 or float32 by kernel), so they take no autocast dtype.

        The model is moved to `device` (default: where it already is). Dropout is
        off while a step runs; the model's train/eval mode is left as it was.
        `check_memory`: before each call allocates anything, estimate what
        num_samples x (prompt + max_new_tokens) needs and refuse (FolioError)
        when it exceeds the memory available (`check_sampling_memory`); False
        tries anyway (the CLI's --force).
        """
        if isinstance(dtype, str):
            if dtype not in TORCH_DTYPES:
                raise FolioError(
                    f"unknown sampling dtype {dtype!r} (known: {', '.join(TORCH_DTYPES)})"
                )
            dtype = TORCH_DTYPES[dtype]
        if dtype == torch.float32:
            dtype = None
        if dtype not in (None, torch.bfloat16, torch.float16):
            raise FolioError(f"sampling dtype must be float32, bfloat16 or float16, got {dtype}")
        self.device = torch.device(device) if device is not None else _model_device(model)
        self.model = model.to(self.device)
        self.tokenizer = tokenizer
        self.dtype = dtype
        self.vocab_size: int = model.config.vocab_size
        # The window the next token depends on: the bigram model reads only the
        # last token, so for it a long prompt loses nothing.
        self.block_size: int = model.context_size
        self.supports_cache: bool = model.supports_kv_cache
        self.start_id = default_start_id(tokenizer)
        self.check_memory = check_memory
        if decode not in DECODE_PATHS:
            raise FolioError(f"unknown decode path {decode!r} (known: {', '.join(DECODE_PATHS)})")
        if weights not in WEIGHT_FORMATS:
            raise FolioError(
                f"unknown sampling weights {weights!r} (known: {', '.join(WEIGHT_FORMATS)})"
            )
        static_ok = supports_static_decoding(model)
        if decode == "auto":
            decode = "static" if static_ok and dtype is None else "module"
        if decode in ("static", "compiled", "aot"):
            if not static_ok:
                raise FolioError(
                    f"decode path {decode!r} needs a GPT with causal attention in the fused form; "
                    "use decode 'module' or 'auto'"
                )
            if dtype is not None:
                raise FolioError(
                    f"decode path {decode!r} computes in float32; for lower precision choose "
                    "its weights (bfloat16 or int8) instead of an autocast dtype"
                )
        elif weights != "float32":
            raise FolioError(
                f"{weights} weights need the decode path 'static', 'compiled' or 'aot'"
            )
        if weights == "w8a8" and self.device.type != "cpu":
            raise FolioError(
                f"w8a8 weights run on a CPU only (this model is on {self.device.type}); "
                "use bfloat16 or int8 weights"
            )
        self.decode, self.weights = decode, weights
        self._decoders: dict[int, tuple[StaticDecoder, list[int]]] = {}

    def path(self, use_cache: bool = True) -> str:
        """The path a call takes, in words: e.g. 'static-kv compiled int8' or 'uncached'."""
        if not (use_cache and self.supports_cache):
            return "uncached"
        if self.decode == "module":
            if self.dtype is None:
                return "module-kv float32"
            return f"module-kv autocast {str(self.dtype).removeprefix('torch.')}"
        how = {"compiled": "compiled", "aot": "aot-compiled"}.get(self.decode, "eager")
        return f"static-kv {how} {self.weights}"

    def static_decoder(self, batch: int) -> StaticDecoder:
        """The static decoder for `batch` sequences, built (and compiled) once per sampler.

        A float32 decoder reads the model's own parameters; a bfloat16 or int8
        one holds copies, rebuilt when the parameters have changed since. An
        eager sampler keeps the last batch size's decoder only (its cache is
        batch x block_size positions); a compiled one keeps one per batch size.
        """
        params = list(self.model.parameters())
        versions = [p._version for p in params] if self.weights != "float32" else []
        held = self._decoders.get(batch)
        if held is None or held[1] != versions:
            if self.decode == "static":
                self._decoders.clear()  # free the old cache before allocating the new one
            decoder = StaticDecoder(self.model, batch, self.weights)
            if self.decode in ("compiled", "aot"):
                decoder.compile(ahead_of_time=self.decode == "aot")
            self._decoders[batch] = held = (decoder, versions)
        return held[0]

    @contextmanager
    def _compute(self) -> Iterator[None]:
        # Entered around each step's work only, so that no_grad, autocast and
        # eval mode never leak into the caller's code between yields (a trainer
        # may sample between optimizer steps and keep its dropout).
        autocast = torch.autocast(
            self.device.type, dtype=self.dtype, enabled=self.dtype is not None
        )
        was_training = self.model.training
        if was_training:
            self.model.eval()
        try:
            with torch.no_grad(), autocast:
                yield
        finally:
            if was_training:
                self.model.train()

    def _prompt(self, prompt_ids: Iterable[int]) -> list[int]:
        ids = [int(i) for i in prompt_ids]
        if any(not 0 <= i < self.vocab_size for i in ids):
            raise FolioError(f"prompt has token ids outside the vocabulary of {self.vocab_size}")
        if not ids:
            return [self.start_id]
        if len(ids) > self.block_size:
            if self.block_size > 1:
                warnings.warn(
                    f"prompt of {len(ids)} tokens is longer than block_size {self.block_size}; "
                    f"keeping its last {self.block_size} tokens",
                    stacklevel=3,
                )
            ids = ids[-self.block_size :]
        return ids

    def decode_steps(
        self, prompt_ids: Iterable[int], cfg: SamplingConfig | None = None
    ) -> Iterator[Step]:
        """Yield a `Step` (logits and chosen ids) for each new token; checks the prompt now."""
        cfg = cfg if cfg is not None else SamplingConfig()
        ids = self._prompt(prompt_ids)
        self.memory_estimate(len(ids), cfg, refuse=self.check_memory)
        return self._steps(ids, cfg)

    def memory_estimate(
        self, prompt_tokens: int, cfg: SamplingConfig, refuse: bool = True
    ) -> dict[str, object]:
        """What decoding `cfg` after a prompt of `prompt_tokens` needs, by part (bytes).

        With `refuse`, raises FolioError when it exceeds the memory available.
        """
        weights = next(self.model.parameters(), None)
        cache_dtype = self.dtype or (weights.dtype if weights is not None else torch.float32)
        return check_sampling_memory(
            self.model.config,
            cfg.num_samples,
            prompt_tokens + cfg.max_new_tokens,
            self.device,
            cache=cfg.use_cache and self.supports_cache,
            cache_bytes_per_value=torch.empty((), dtype=cache_dtype).element_size(),
            force=not refuse,
        )

    def _steps(self, ids: list[int], cfg: SamplingConfig) -> Iterator[Step]:
        B, window = cfg.num_samples, self.block_size
        keep = min(cfg.context_keep or max(1, window // 2), window)
        generator = torch.Generator(device=self.device)
        if cfg.seed is None:
            generator.seed()  # fresh entropy, still without the global RNG
        else:
            generator.manual_seed(cfg.seed)
        cache, decoder = None, None
        try:  # forced past the memory guard, an allocation may still fail: one line
            tokens = torch.empty(
                B, len(ids) + cfg.max_new_tokens, dtype=torch.long, device=self.device
            )
            if cfg.use_cache and self.supports_cache:
                if self.decode == "module":
                    cache = self.model.new_kv_cache(B, max_len=window, dtype=self.dtype)
                else:
                    decoder = self.static_decoder(B)
        except (RuntimeError, MemoryError) as e:  # torch.OutOfMemoryError is a RuntimeError
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise FolioError(
                f"cannot allocate memory for {B:,} sample(s) of {len(ids) + cfg.max_new_tokens:,} "
                f"tokens on {self.device.type} ({why}); lower num_samples or max_new_tokens"
            ) from None
        tokens[:, : len(ids)] = torch.tensor(ids, device=self.device)
        n, start = len(ids), 0  # the next logits condition on tokens[:, start:n]
        filled = False  # whether the static decoder holds tokens[:, start : n - 1]
        draws = NoiseStream(generator, (B, self.vocab_size), self.device)
        sampled = cfg.temperature > 0
        # The static decoder's step makes the plain draw itself (`StaticDecoder.advance`);
        # with top-k or top-p the choice is made here, from the same variates.
        in_step = cfg.top_k is None and cfg.top_p is None
        temperature = torch.tensor([cfg.temperature], device=self.device)
        for step in range(cfg.max_new_tokens):
            with self._compute():
                if n - start > window:  # slide: keep the last `keep` tokens, re-prefill
                    start = n - keep
                    filled = False
                    if cache is not None:
                        cache.reset()
                noise = draws.next() if sampled else None
                if decoder is not None and filled:
                    logits, next_ids, finite = decoder.advance(noise, temperature)  # (B, V), (B,)
                    if not in_step:
                        next_ids = choose_tokens(logits, cfg, generator, noise)
                        decoder.token.copy_(next_ids[:, None])
                else:
                    if decoder is not None:  # (re)fill the static cache from the window
                        logits = decoder.prefill(tokens[:, start:n])  # (B, V)
                        filled = True
                    elif cache is not None:  # it holds tokens[:, start : start + cache.length]
                        logits, _ = self.model(
                            tokens[:, start + cache.length : n], cache=cache, last_only=True
                        )
                        logits = logits[:, -1, :]
                    else:
                        logits = self.model(tokens[:, start:n], last_only=True)[0][:, -1, :]
                    logits = logits.float()  # (B, V)
                    finite = torch.isfinite(logits).all()
                    next_ids = choose_tokens(logits, cfg, generator, noise)  # (B,)
                    if decoder is not None:
                        decoder.token.copy_(next_ids[:, None])  # the next step's input
                if not finite:
                    raise FolioError(
                        f"model produced non-finite logits at step {step} (NaN or inf); "
                        "the weights may be corrupt or training may have diverged"
                    )
                tokens[:, n] = next_ids
                n += 1
            yield Step(logits, next_ids)

    def generate_ids(
        self, prompt_ids: Iterable[int], cfg: SamplingConfig | None = None
    ) -> Iterator[torch.Tensor]:
        """Yield the (num_samples,) new token ids of each step; checks the prompt now."""
        steps = self.decode_steps(prompt_ids, cfg)
        return (step.ids for step in steps)

    def _tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise FolioError("this sampler has no tokenizer, so it can only generate token ids")
        return self.tokenizer

    def stream(self, prompt: str, cfg: SamplingConfig | None = None) -> Iterator[list[str]]:
        """Yield new text as it is decoded: one piece per sample (possibly ''), prompt excluded.

        A sample stops at its first stop string, which is never shown; decoding
        ends when every sample has stopped or after max_new_tokens.
        """
        cfg = cfg if cfg is not None else SamplingConfig()
        tokenizer = self._tokenizer()
        ids = self.generate_ids(tokenizer.encode(prompt), cfg)
        pieces = TokenBytes(tokenizer)  # each token's bytes, looked up once per call
        return self._stream(ids, [TextStream(pieces, cfg.stop) for _ in range(cfg.num_samples)])

    @staticmethod
    def _stream(steps: Iterator[torch.Tensor], texts: list[TextStream]) -> Iterator[list[str]]:
        try:
            for next_ids in steps:
                pieces = [t.feed(i) for t, i in zip(texts, next_ids.tolist(), strict=True)]
                if any(pieces):
                    yield pieces
                if all(t.done for t in texts):
                    return
        finally:
            steps.close()
        tail = [t.finish() for t in texts]
        if any(tail):
            yield tail

    def generate(self, prompt: str, cfg: SamplingConfig | None = None) -> list[str]:
        """The full completion of each sample (prompt excluded), cut before any stop string."""
        cfg = cfg if cfg is not None else SamplingConfig()
        stream = self.stream(prompt, cfg)  # checks the prompt and the memory first
        parts: list[list[str]] = [[] for _ in range(cfg.num_samples)]
        for pieces in stream:
            for part, piece in zip(parts, pieces, strict=True):
                part.append(piece)
        return ["".join(part) for part in parts]
