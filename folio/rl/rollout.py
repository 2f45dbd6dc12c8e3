"""Rollouts: a group of sampled replies per chat prompt, with what the RL losses need.

Notation: P prompts, G replies per prompt (a group), B = P * G rows, T positions.

The policy samples G replies to each prompt with the KV cache, at a
temperature and top-k, through the same decoder `folio eval tasks` uses
(`folio.eval.tasks.generate_replies`). Each row is laid out for one forward
pass of the loss:

    tokens  = prompt, reply (its END included when it ended), padding
    inputs  = tokens[:, :-1], targets = tokens[:, 1:]
    mask[t] = 1 exactly when targets[t] is a reply token (END included)

Padding goes on the right, so causal attention keeps it out of every reply
position's logits, and each row keeps the positions it was sampled at.
`logprobs[t]` is log pi(targets[t]) under the very distribution the token was
drawn from, recorded while sampling: the "old" log-probs of the clipped
ratio. The loss recomputes them with the same temperature and top-k
(`reply_logprobs`), so before any update the ratio is 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from folio.errors import FolioError
from folio.eval.tasks import generate_replies
from folio.rl.estimators import token_logprobs


@dataclass
class Rollout:
    """B = P * G sampled replies, the G replies of each prompt in consecutive rows."""

    tokens: torch.Tensor
    """(B, T) int64: prompt, reply (END included when it ended), padding."""
    mask: torch.Tensor
    """(B, T - 1) float32: 1 where the target tokens[:, t + 1] is a reply token."""
    logprobs: torch.Tensor
    """(B, T - 1) float32: log-prob of each reply target under the sampling distribution; 0 off
    the mask."""
    ended: torch.Tensor
    """(B,) bool: whether the reply ended with END within the token limit."""
    replies: list[list[int]]
    """Each reply's token ids, END excluded (for decoding and scoring)."""
    group_size: int
    """G, the replies sampled per prompt."""

    @property
    def reply_lengths(self) -> torch.Tensor:
        """(B,) reply tokens, END included."""
        return self.mask.sum(dim=1)


def device_generator(generator: torch.Generator, device: torch.device) -> torch.Generator:
    """A generator on `device` seeded from a draw of `generator`, so the stream stays reproducible."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


@torch.no_grad()
def sample_rollout(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    group_size: int,
    end_id: int,
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    generator: torch.Generator,
    pad_id: int = 0,
    dtype: torch.dtype | None = None,
) -> Rollout:
    """Sample `group_size` replies to each prompt (token ids ending with the assistant token).

    The draws come from `generator` only (a CPU generator is fine: a device
    one is seeded from it). A prompt whose reply could outrun the model's
    context is a FolioError. The model is in eval mode while it samples.
    """
    block = model.context_size
    for p in prompts:
        if len(p) + max_new_tokens > block:
            raise FolioError(
                f"a prompt of {len(p)} tokens and a reply of up to {max_new_tokens} do not fit "
                f"the model's context of {block}; lower max_new_tokens"
            )
    device = next(model.parameters()).device
    replies = generate_replies(
        model, prompts, end_id, max_new_tokens=max_new_tokens, temperature=temperature,
        num_samples=group_size, top_k=top_k, generator=device_generator(generator, device),
        logprobs=True, dtype=dtype, batch_size=max(1, len(prompts) * group_size),
    )  # fmt: skip
    rows: list[tuple[list[int], int, list[float], bool, list[int]]] = []
    for prompt, group in zip(prompts, replies, strict=True):
        for r in group:
            reply = r.ids + ([end_id] if r.ended else [])
            rows.append((list(prompt) + reply, len(prompt), r.logprobs or [], r.ended, r.ids))
    T = max(len(ids) for ids, *_ in rows)
    B = len(rows)
    tokens = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros(B, T - 1)
    logprobs = torch.zeros(B, T - 1)
    for b, (ids, n_prompt, lps, _, _) in enumerate(rows):
        tokens[b, : len(ids)] = torch.tensor(ids)
        span = slice(n_prompt - 1, len(ids) - 1)  # targets ids[n_prompt:], at positions - 1
        mask[b, span] = 1.0
        logprobs[b, span] = torch.tensor(lps)
    return Rollout(
        tokens=tokens,
        mask=mask,
        logprobs=logprobs,
        ended=torch.tensor([row[3] for row in rows], dtype=torch.bool),
        replies=[row[4] for row in rows],
        group_size=group_size,
    )


def reply_logprobs(
    model: nn.Module,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    temperature: float,
    top_k: int | None,
) -> torch.Tensor:
    """log pi(targets) of each row under `model` at the sampling temperature and top-k: (B, T - 1).

    Positions off the mask are 0 (they may be -inf under top-k, and would turn
    the losses' masked sums into NaN).
    """
    logits, _ = model(tokens[:, :-1])  # (B, T - 1, V)
    logprobs = token_logprobs(logits, tokens[:, 1:], temperature, top_k)  # (B, T - 1)
    return logprobs.masked_fill(mask == 0, 0.0)


class RolloutBuffer:
    """The rollout being learned from, served as minibatches: `epochs` passes over its rows, each
    in its own shuffled order, `minibatches` steps a pass; then it asks for a new rollout.

    The buffer is what an on-policy objective saves with a checkpoint (`state_dict`), so a run
    resumed in the middle of a rollout continues it exactly.
    """

    def __init__(self, keys: Sequence[str], epochs: int, minibatches: int) -> None:
        self.keys, self.epochs, self.minibatches = tuple(keys), epochs, minibatches
        self.data: dict[str, torch.Tensor] | None = None
        self.cursor = 0

    @property
    def steps(self) -> int:
        """Minibatches served from one rollout."""
        return self.epochs * self.minibatches

    def next(
        self, refill: Callable[[], dict[str, torch.Tensor]], generator: torch.Generator
    ) -> tuple[torch.Tensor, ...]:
        """The next minibatch (the tensors of `keys`, in order); `refill()` makes a new rollout
        (its tensors' first dimension are rows) once the current one is used up."""
        if self.data is None or self.cursor >= self.steps:
            rollout = refill()
            rows = len(rollout[self.keys[0]])
            if rows % self.minibatches:
                raise ValueError(f"{rows} rows do not split into {self.minibatches} minibatches")
            order = torch.stack(
                [torch.randperm(rows, generator=generator) for _ in range(self.epochs)]
            ).view(self.steps, rows // self.minibatches)
            self.data = {k: rollout[k] for k in self.keys} | {"order": order}
            self.cursor = 0
        rows = self.data["order"][self.cursor]
        self.cursor += 1
        return tuple(self.data[k][rows] for k in self.keys)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The rollout and the next minibatch's index (empty before the first rollout)."""
        if self.data is None:
            return {}
        return {**self.data, "cursor": torch.tensor([self.cursor])}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if not state:
            self.data, self.cursor = None, 0
            return
        missing = [k for k in (*self.keys, "order", "cursor") if k not in state]
        if missing:
            raise FolioError(f"the checkpoint's rollout state lacks {', '.join(missing)}")
        self.data = {k: state[k] for k in (*self.keys, "order")}
        self.cursor = int(state["cursor"][0])
