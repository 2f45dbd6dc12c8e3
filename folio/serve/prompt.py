"""Messages -> prompt token ids, for `folio chat` and `/v1/chat/completions`.

Two modes, chosen by the checkpoint's tokenizer:

- **chat**: the tokenizer has the chat tokens (`has_chat_template`). The
  messages are rendered with `render_prompt` (each message
  `ROLE content <|end|>`, then `<|assistant|>`), and the reply stops at
  `<|end|>` (or at any other chat token: it would open a new turn).
- **continuation**: a base model, which knows no turns. The prompt is the
  messages' contents joined by a newline, roles dropped, and the reply simply
  continues that text (it stops at max tokens, a stop string, or the BPE
  `<|endoftext|>`). An empty text starts from the sampler's default token
  (`<|endoftext|>` for BPE, else a newline).

History that outgrows the context. `conversation_prompt(..., drop_oldest=True)`
(the chat REPL) drops the oldest turns whole, a user message and the reply
after it at a time, keeping a system message, until the prompt fits in
`budget` tokens; the server instead refuses an over-long prompt (400), as
OpenAI's API does. A last message that does not fit on its own is an error
in both (`PromptTooLong`, which the server answers `context_length_exceeded`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from folio.errors import FolioError
from folio.sample.sampler import default_start_id
from folio.tokenizers.chat import CHAT_TOKENS, has_chat_template, render_prompt

MESSAGE_ROLES = ("system", "user", "assistant")


class PromptTooLong(FolioError):
    """A prompt over its token budget (the server answers `context_length_exceeded`)."""


@dataclass
class Prompt:
    """Prompt ids with what ends the reply."""

    ids: list[int]
    """The token ids the model continues."""
    stop_ids: frozenset[int]
    """Tokens that end the reply: the chat tokens in chat mode, `<|endoftext|>` where the vocabulary has it."""
    dropped: int = 0
    """Oldest messages dropped to fit the budget."""


def is_chat_model(tokenizer: Any) -> bool:
    """Whether replies use the chat template (else a base model's plain continuation)."""
    return has_chat_template(tokenizer)


def stop_ids_for(tokenizer: Any) -> frozenset[int]:
    """The token ids at which a reply ends for this tokenizer."""
    ids = set()
    if is_chat_model(tokenizer):
        # The reply ends at <|end|>; a role token would open another turn, so it ends there too.
        ids.update(tokenizer.special_token_id(t) for t in CHAT_TOKENS)
    eot = getattr(tokenizer, "eot_id", None)
    if isinstance(eot, int):
        ids.add(eot)
    return frozenset(ids)


def text_prompt(tokenizer: Any, text: str) -> list[int]:
    """A completion prompt's ids; an empty text starts from the default start token."""
    ids = tokenizer.encode(text)
    return ids if ids else [default_start_id(tokenizer)]


def first_unknown_character(tokenizer: Any, text: str) -> tuple[int, str] | None:
    """(position, character) of the first character of `text` the tokenizer cannot encode, if any.

    Each distinct character is encoded once (for a character vocabulary, at
    most its size plus one): it is meant for after an encode has failed.
    """
    seen: set[str] = set()
    for i, c in enumerate(text):
        if c in seen:
            continue
        seen.add(c)
        try:
            tokenizer.encode(c)
        except FolioError:
            return i, c
    return None


def _render(tokenizer: Any, messages: list[dict]) -> list[int]:
    if is_chat_model(tokenizer):
        return render_prompt(tokenizer, messages)
    return text_prompt(tokenizer, "\n".join(m["content"] for m in messages))


def conversation_prompt(
    tokenizer: Any, messages: list[dict], budget: int, drop_oldest: bool = False
) -> Prompt:
    """The prompt for `messages` (role and string content each), at most `budget` tokens.

    With `drop_oldest`, the oldest turns are dropped until it fits; otherwise a
    prompt over budget is a FolioError.
    """
    if not messages:
        raise FolioError("messages must hold at least one message")
    system = messages[:1] if messages[0]["role"] == "system" else []
    turns = list(messages[len(system) :])
    dropped = 0
    while True:
        ids = _render(tokenizer, system + turns)
        if len(ids) <= budget:
            return Prompt(ids, stop_ids_for(tokenizer), dropped)
        if not drop_oldest:
            raise PromptTooLong(
                f"the prompt is {len(ids)} tokens; this model takes at most {budget}: "
                f"send fewer or shorter messages"
            )
        if len(turns) <= 1:
            raise PromptTooLong(
                f"the last message alone is {len(ids)} tokens, more than the {budget} "
                f"this model's context leaves for it"
            )
        # Drop whole turns: a user message and the reply after it, so roles still alternate.
        cut = 2 if len(turns) > 2 and turns[1]["role"] != turns[0]["role"] else 1
        turns = turns[cut:]
        dropped += cut
