"""A multi-turn conversation with a model, as `folio chat` holds it.

The session keeps the history as messages, renders it as a prompt on every
turn (`folio.serve.prompt`: the chat template, or a base model's plain
continuation) and streams the reply through the engine as text pieces.

The context is finite. Each turn the prompt may take at most
block_size - R tokens, where R = min(max_new_tokens, block_size // 2) is room
kept for the reply; when the history is longer, its oldest turns (a user
message and the reply after it) are dropped from the history, for good, until
it fits. A reply that outgrows the context anyway continues on a sliding
window, as `folio sample` does. A message that cannot fit even alone is
refused with an error and not added.

A reply cut short (Ctrl-C, which closes the generator) stays in the history
as far as it was shown.

Everything given at start-up is checked then, not at the first reply: the
seed's range, and the system message, which needs a chat model (a base model
has no system turn), must be text the vocabulary encodes, and must leave room
in the context for a user message.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from folio.errors import FolioError
from folio.inputs import SEED_LIMIT, check_seed, check_text
from folio.sample.engine import Engine, GenerationRequest
from folio.sample.sampler import SamplingConfig
from folio.serve.prompt import conversation_prompt, is_chat_model
from folio.tokenizers.chat import render_prompt
from folio.tokenizers.stream import TextStream, TokenBytes


@dataclass
class ChatSettings:
    """How replies are decoded; `/temperature` and `/top_k` change them mid-chat."""

    max_new_tokens: int = 256
    """Longest reply in tokens."""
    temperature: float = 0.8
    """0 is greedy."""
    top_k: int | None = 40
    """Sample among the k most likely tokens; None: all."""
    top_p: float | None = None
    """Nucleus threshold in (0, 1]; None: off."""
    seed: int | None = None
    """Turn n uses seed + n (modulo 2**63), so a whole chat can be replayed; None: fresh
    randomness."""
    system: str | None = None
    """A system message put first (chat models only)."""
    stop: list[str] = field(default_factory=list)
    """Stop strings that end a reply."""

    def sampling(self, turn: int) -> SamplingConfig:
        """The decoding config of reply number `turn` (checked: a FolioError if out of range)."""
        seed = check_seed(self.seed)
        return SamplingConfig(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            # Wrapped, so that a seed near the top of the range still has a next reply.
            seed=None if seed is None else (seed + turn) % SEED_LIMIT,
        )


class ChatSession:
    """History, settings and one engine: `reply(text)` streams the model's answer."""

    def __init__(self, engine: Engine, tokenizer: Any, settings: ChatSettings) -> None:
        self.engine, self.tokenizer, self.settings = engine, tokenizer, settings
        self.chat = is_chat_model(tokenizer)
        self.token_bytes = TokenBytes(tokenizer)
        self.history: list[dict[str, str]] = []
        self.turns = 0
        self.dropped = 0
        """Messages dropped from the history so far to fit the context."""
        self.finish_reason: str | None = None
        """Why the last reply ended: 'stop' (it ended itself), 'length' (cut at max_new_tokens)."""
        settings.sampling(0)  # check the settings now, not at the first reply
        self._check_system()

    @property
    def budget(self) -> int:
        """Tokens the prompt may take: the context minus room for the reply."""
        block = self.engine.block_size
        return max(1, block - min(self.settings.max_new_tokens, block // 2))

    def _check_system(self) -> None:
        """Refuse a system message that cannot be used, naming --system (see the module docstring)."""
        system = self.settings.system
        if not system:
            return
        if not self.chat:
            raise FolioError(
                "--system needs a chat model: this checkpoint has no chat template (no <|system|>, "
                "<|user|>, <|end|> tokens) and continues plain text; fine-tune it with `folio sft`"
            )
        check_text(system, "--system")
        least = [{"role": "system", "content": system}, {"role": "user", "content": ""}]
        try:  # the system message and an empty user turn: the least any prompt holds
            ids = render_prompt(self.tokenizer, least)
        except FolioError as e:
            raise FolioError(f"--system: {e}") from None
        if len(ids) >= self.budget:
            raise FolioError(
                f"--system: the system message takes {len(ids)} tokens of the {self.budget} this "
                f"model's context leaves for the prompt, so no message would fit after it; "
                f"shorten it (or lower --max-new-tokens)"
            )

    def reset(self) -> None:
        """Forget the conversation (settings stay)."""
        self.history = []

    def _messages(self) -> list[dict[str, str]]:
        system = self.settings.system
        return ([{"role": "system", "content": system}] if system and self.chat else []) + list(
            self.history
        )

    def reply(self, text: str) -> Iterator[str]:
        """Add a user message and stream the reply's text; the reply joins the history."""
        check_text(text, "the message")  # a lone surrogate cannot be encoded by any tokenizer
        cfg = self.settings.sampling(self.turns)
        messages = self._messages() + [{"role": "user", "content": text}]
        prompt = conversation_prompt(self.tokenizer, messages, self.budget, drop_oldest=True)
        if prompt.dropped:  # the oldest turns no longer fit: forget them
            self.history = self.history[prompt.dropped :]
            self.dropped += prompt.dropped
        self.history.append({"role": "user", "content": text})
        self.turns += 1
        self.finish_reason = None
        shown: list[str] = []
        stream = TextStream(self.token_bytes, self.settings.stop)
        events = self.engine.stream(GenerationRequest(prompt.ids, cfg, stop_ids=prompt.stop_ids))
        try:
            for event in events:
                if event.error:
                    raise FolioError(event.error)
                piece = stream.feed(event.token_id) if event.token_id is not None else ""
                if event.finish_reason is not None:
                    self.finish_reason = event.finish_reason
                if event.finish_reason is not None or stream.done:
                    piece += stream.finish()
                if piece:
                    shown.append(piece)
                    yield piece
                if stream.done:
                    break
        finally:
            events.close()  # cancels the generation if we stopped early
            self.history.append({"role": "assistant", "content": "".join(shown)})
