"""The chat format: conversations -> token ids, with a mask of what the model learns to say.

The video's closing chapter turns a document completer into an assistant by
fine-tuning it on conversations. A conversation is JSON in the common form

    {"messages": [{"role": "system" | "user" | "assistant", "content": "..."}]}

and is rendered as one token sequence. Each message becomes

    ROLE_TOKEN  content tokens  END

with four special tokens that text never encodes to (`<|system|>`,
`<|user|>`, `<|assistant|>`, `<|end|>`), so a user who types "<|end|>" gets
ordinary characters and cannot forge a turn.

The mask is 1 exactly on what the assistant says: its content tokens and the
END that closes its turn (so the model learns when to stop). Role tokens, user
and system content and their ENDs are 0: the model reads them but is not
trained to produce them.

A system message is optional. If present it must come first; it is rendered
like any other message (`<|system|>...<|end|>`, mask 0), so a model trained
with one conditions on it and one trained without it never saw the token.
After it, turns alternate user, assistant, user, ... starting with the user,
and at least one assistant turn is required for training data.

`render_prompt` renders the messages so far and then `<|assistant|>`: the
model's next tokens are the reply, and generation stops at END.
"""

from __future__ import annotations

from typing import Any, Protocol

from folio.errors import FolioError

SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END = "<|end|>"
CHAT_TOKENS = (SYSTEM, USER, ASSISTANT, END)
ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}


class ChatTokenizer(Protocol):
    """What the chat format needs of a tokenizer (both Folio tokenizers have it)."""

    def encode(self, text: str) -> list[int]: ...

    def special_token_id(self, name: str) -> int | None: ...

    def with_tokens(self, *args: Any, **kwargs: Any) -> Any: ...


def with_chat_tokens(tokenizer: Any) -> Any:
    """`tokenizer` with the four chat tokens appended (the same object if it has them all)."""
    if has_chat_template(tokenizer):
        return tokenizer
    return tokenizer.with_tokens(specials=CHAT_TOKENS)


def has_chat_template(tokenizer: Any) -> bool:
    """Whether every chat token is a special token of this vocabulary."""
    lookup = getattr(tokenizer, "special_token_id", None)
    return lookup is not None and all(lookup(t) is not None for t in CHAT_TOKENS)


def _id(tokenizer: ChatTokenizer, name: str) -> int:
    i = tokenizer.special_token_id(name)
    if i is None:
        raise FolioError(
            f"the tokenizer has no {name} token: this model was not built for chat "
            f"(fine-tune it with `folio sft`, which adds the chat tokens)"
        )
    return i


def end_of_turn_id(tokenizer: ChatTokenizer) -> int:
    """The id of END, where an assistant's reply stops."""
    return _id(tokenizer, END)


def cut_at_turn_token(tokenizer: ChatTokenizer, ids: list[int]) -> tuple[list[int], bool]:
    """(a reply's ids up to its first chat token, whether one was cut off).

    A reply ends at END; a model that instead writes another turn token
    (<|user|>, say) has not answered properly, and decoding that token would
    put its name into the reply's text, which no tokenizer encodes back to it.
    """
    turn_ids = {tokenizer.special_token_id(t) for t in CHAT_TOKENS} - {None}
    for i, t in enumerate(ids):
        if t in turn_ids:
            return ids[:i], True
    return list(ids), False


def validate_conversation(obj: Any, where: str, *, needs_reply: bool = True) -> list[dict]:
    """The messages of one conversation, checked; a FolioError naming `where` otherwise.

    Rules: an object with a non-empty "messages" list; each message an object
    with a known "role" and string "content"; a system message only first;
    then user and assistant alternating, starting with the user; and, when
    `needs_reply` (training data), at least one assistant turn.
    """
    if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list):
        raise FolioError(f'{where}: expected an object with a "messages" list')
    messages = obj["messages"]
    if not messages:
        raise FolioError(f"{where}: the conversation is empty")
    for n, m in enumerate(messages, 1):
        if not isinstance(m, dict) or m.get("role") not in ROLE_TOKENS:
            raise FolioError(f'{where}: message {n} needs a "role" of system, user or assistant')
        if not isinstance(m.get("content"), str):
            raise FolioError(f'{where}: message {n} needs a string "content"')
    turns = messages[1:] if messages[0]["role"] == "system" else messages
    for n, m in enumerate(turns):
        expected = "user" if n % 2 == 0 else "assistant"
        if m["role"] != expected:
            place = n + 1 + (len(messages) - len(turns))
            raise FolioError(
                f"{where}: message {place} is {m['role']!r} but {expected!r} was expected "
                f"(an optional system message first, then user and assistant alternating)"
            )
    if needs_reply and not any(m["role"] == "assistant" for m in turns):
        raise FolioError(f"{where}: the conversation has no assistant turn to learn from")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def render_conversation(
    tokenizer: ChatTokenizer, messages: list[dict]
) -> tuple[list[int], list[int]]:
    """(ids, mask) of a whole conversation; mask 1 on assistant content and its END."""
    end = _id(tokenizer, END)
    ids: list[int] = []
    mask: list[int] = []
    for m in messages:
        content = tokenizer.encode(m["content"])
        learn = int(m["role"] == "assistant")
        ids += [_id(tokenizer, ROLE_TOKENS[m["role"]]), *content, end]
        mask += [0] + [learn] * (len(content) + 1)
    return ids, mask


def render_prompt(tokenizer: ChatTokenizer, messages: list[dict]) -> list[int]:
    """The ids of `messages` followed by `<|assistant|>`: what the model continues with a reply."""
    ids, _ = render_conversation(tokenizer, messages)
    return ids + [_id(tokenizer, ASSISTANT)]
