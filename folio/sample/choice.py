"""The one token choice: logits -> the next token, with temperature, top-k and top-p.

Notation: B rows (sequences), V vocabulary size.

Every path that generates picks its tokens here: the sampler (`folio sample`),
the static decoder's step (which makes the choice inside a compiled step), the
serving engine (one call for the whole batch, each row with its own
temperature) and task evaluation. The order is the usual one: temperature,
then top-k, then top-p (the nucleus of Holtzman et al., 2019, "The Curious
Case of Neural Text Degeneration"), then one draw.

The draw is argmax(softmax(filtered (logits - max) / T) / E) with E a (B, V)
tensor of Exp(1) variates: token v wins with probability softmax(...)[v],
exactly as `torch.multinomial` draws on a CPU, from the same variates for a
seed, and without its input checks (over half its time at batch 1). The
variates come from each caller's private `torch.Generator` (`NoiseStream`
draws many steps at a time), so a seed reproduces a sample and the global RNG
is never touched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from folio.sample.sampler import SamplingConfig


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Set to -inf every logit outside the top-k, then outside the top-p nucleus. (B, V) -> (B, V)."""
    V = logits.shape[-1]
    if top_k is not None and top_k < V:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V) each
        probs = F.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p; the
        # first token has nothing above it, so it always stays.
        mass_before = probs.cumsum(dim=-1) - probs  # (B, V)
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def choose(
    logits: torch.Tensor,
    noise: torch.Tensor,
    temperature: torch.Tensor,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """The next token of each row of (B, V) float32 logits: argmax where the temperature is 0,
    else a draw (module docstring) from the variates `noise` (B, V).

    `temperature` is a tensor, (1,) for every row or (B,) one per row, so that a
    compiled step takes it as data; `top_k` and `top_p` apply to every row.
    Returns (B,) token ids.
    """
    greedy = logits.argmax(dim=-1)  # (B,)
    t = temperature[..., None]  # (1, 1) or (B, 1)
    divisor = torch.where(t > 0, t, torch.ones_like(t))
    # Subtracting the max first keeps a tiny temperature from overflowing to inf.
    scaled = (logits - logits.amax(dim=-1, keepdim=True)) / divisor  # (B, V)
    probs = F.softmax(filter_logits(scaled, top_k, top_p), dim=-1)  # (B, V)
    drawn = (probs / noise).argmax(dim=-1)  # (B,)
    return torch.where(temperature > 0, drawn, greedy)


def choose_tokens(
    logits: torch.Tensor,
    cfg: SamplingConfig,
    generator: torch.Generator,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """`choose` with one `SamplingConfig` for every row of (B, V) float32 logits.

    `noise`: the draw's (B, V) Exp(1) variates, when the caller drew them
    already (`NoiseStream`); None draws them from `generator`. A greedy choice
    (temperature 0) draws nothing.
    """
    if cfg.temperature == 0:
        return logits.argmax(dim=-1)  # (B,)
    if noise is None:
        noise = torch.empty(logits.shape, device=logits.device)
        noise.exponential_(1.0, generator=generator)  # (B, V)
    temperature = torch.tensor([cfg.temperature], device=logits.device)
    return choose(logits, noise, temperature, cfg.top_k, cfg.top_p)


class NoiseStream:
    """The Exp(1) variates of successive draws, (B, V) per step, drawn many steps at a time.

    On a CPU, torch's generator fills a tensor in order, so one (S, B, V) draw
    holds the same numbers as S draws of (B, V): a seed gives the same tokens,
    for a fraction of the calls. Elsewhere (CUDA's generator draws in blocks)
    it draws one step at a time. Buffers stay under about 1 MB.
    """

    def __init__(
        self, generator: torch.Generator, shape: tuple[int, int], device: torch.device
    ) -> None:
        self.generator, self.shape, self.device = generator, shape, device
        per_step = shape[0] * shape[1]
        self.chunk = max(1, min(64, 262_144 // per_step)) if device.type == "cpu" else 1
        self.buffer = torch.empty(0, *shape, device=device)
        self.used = 0

    def next(self) -> torch.Tensor:
        """The next step's (B, V) variates."""
        if self.used == len(self.buffer):
            self.buffer = torch.empty(self.chunk, *self.shape, device=self.device)
            self.buffer.exponential_(1.0, generator=self.generator)
            self.used = 0
        self.used += 1
        return self.buffer[self.used - 1]


def sampling_logprobs(
    logits: torch.Tensor, temperature: float, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Log-probabilities of the distribution `choose` draws from, for logits (..., V).

    log p(v) = log_softmax(filter((logits - max) / temperature))[v], and -inf
    outside the top-k / top-p set: the same steps, in the same order, as a
    draw. RL scores its samples with it, so the loss sees exactly the
    distribution the samples came from. Float32, differentiable; temperature > 0.
    """
    if temperature <= 0:
        raise ValueError(f"sampling log-probabilities need a temperature > 0, got {temperature}")
    V = logits.shape[-1]
    flat = logits.reshape(-1, V).float()  # (N, V)
    scaled = (flat - flat.amax(dim=-1, keepdim=True)) / temperature
    return F.log_softmax(filter_logits(scaled, top_k, top_p), dim=-1).reshape(logits.shape)
