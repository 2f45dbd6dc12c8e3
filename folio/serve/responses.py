"""The responses of both generation endpoints, streamed or whole, built in one place.

`/v1/completions` and `/v1/chat/completions` answer alike: the same envelope
(`id`, `object`, `created`, `model`, `choices`, `usage`), the same stream and
the same collection of a whole reply; only the shape of a choice differs. A
`Reply` subclass per endpoint gives those shapes, and `respond` does the rest.

Streams send Server-Sent Events, `data: {json}\\n\\n`: the endpoint's opening
chunks (for chat, one with the assistant role), a chunk per piece of text,
the finish_reason, a usage chunk if `stream_options.include_usage`, then
`data: [DONE]`. An error during a stream arrives as an error body in the
stream, as the status line has been sent.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, ClassVar

from fastapi.responses import JSONResponse, Response, StreamingResponse

from folio.serve import protocol as P
from folio.serve.generation import Delta, Generation

DONE = b"data: [DONE]\n\n"


def sse(obj: Any) -> bytes:
    """One Server-Sent Event holding `obj` as compact JSON."""
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n".encode()


@dataclass
class Collected:
    """A whole reply, gathered from its deltas."""

    text: str
    entries: list[dict[str, Any]]
    finish_reason: str
    completion_tokens: int


async def collect(gen: Generation) -> Collected:
    """Every delta of `gen` joined into one reply."""
    text, entries, finish, tokens = [], [], "stop", 0
    async for d in gen.deltas():
        text.append(d.text)
        if d.entry:
            entries.append(d.entry)
        finish, tokens = d.finish_reason or finish, d.completion_tokens
    return Collected("".join(text), entries, finish, tokens)


class Reply(ABC):
    """The response to one generation, in the shape of the endpoint that asked for it."""

    id_prefix: ClassVar[str]
    object: ClassVar[str]
    """The "object" of a whole response."""
    chunk_object: ClassVar[str]
    """The "object" of a stream chunk."""

    def __init__(self, gen: Generation) -> None:
        self.gen, self.params = gen, gen.params
        self.id, self.created = P.new_id(self.id_prefix), P.now()

    def body(self, object_name: str, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        """The envelope both endpoints share, stream chunks and whole responses alike."""
        return {
            "id": self.id,
            "object": object_name,
            "created": self.created,
            "model": self.gen.served.id,
            "choices": choices,
            **extra,
        }

    def chunk(self, choice: dict[str, Any]) -> dict[str, Any]:
        """A stream chunk of one choice; with include_usage, OpenAI sends `usage: null` in each."""
        extra = {"usage": None} if self.params.include_usage else {}
        return self.body(self.chunk_object, [choice], **extra)

    def usage(self, completion_tokens: int) -> dict[str, int]:
        return P.usage(self.gen.prompt_tokens, completion_tokens)

    def opening(self) -> list[dict[str, Any]]:
        """The chunks a stream starts with, before any text."""
        return []

    @abstractmethod
    def chunks(self, d: Delta) -> list[dict[str, Any]]:
        """The stream chunks of one delta (none when it carries nothing to send)."""

    @abstractmethod
    def choice(self, reply: Collected) -> dict[str, Any]:
        """The choice of a whole response."""


class ChatReply(Reply):
    """A /v1/chat/completions response: an assistant message, or its deltas."""

    id_prefix, object, chunk_object = "chatcmpl", "chat.completion", "chat.completion.chunk"

    def _delta(
        self, delta: dict[str, Any], finish: str | None, entry: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return self.chunk(
            {
                "index": 0,
                "delta": delta,
                "logprobs": {"content": [entry]} if entry else None,
                "finish_reason": finish,
            }
        )

    def opening(self) -> list[dict[str, Any]]:
        return [self._delta({"role": "assistant", "content": ""}, None)]

    def chunks(self, d: Delta) -> list[dict[str, Any]]:
        out = []
        if d.text or d.entry:
            out.append(self._delta({"content": d.text}, None, d.entry))
        if d.finish_reason:  # OpenAI ends with its own chunk, an empty delta and the reason
            out.append(self._delta({}, d.finish_reason))
        return out

    def choice(self, reply: Collected) -> dict[str, Any]:
        return {
            "index": 0,
            "message": {"role": "assistant", "content": reply.text},
            "logprobs": {"content": reply.entries} if self.params.logprobs else None,
            "finish_reason": reply.finish_reason,
        }


class CompletionReply(Reply):
    """A /v1/completions response: text, or its pieces, with legacy-style logprobs."""

    id_prefix, object, chunk_object = "cmpl", "text_completion", "text_completion"

    def __init__(self, gen: Generation) -> None:
        super().__init__(gen)
        self.offset = 0  # characters streamed so far: logprobs' text_offset counts from here

    def _choice(
        self, text: str, entries: list[dict[str, Any]], finish: str | None, offset: int
    ) -> dict[str, Any]:
        logprobs = P.completion_logprobs(entries, offset) if self.params.logprobs else None
        return {"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish}

    def chunks(self, d: Delta) -> list[dict[str, Any]]:
        entries = [d.entry] if d.entry else []
        out = []
        if d.text or entries or d.finish_reason:
            out.append(self.chunk(self._choice(d.text, entries, d.finish_reason, self.offset)))
        self.offset += len(d.text)
        return out

    def choice(self, reply: Collected) -> dict[str, Any]:
        return self._choice(reply.text, reply.entries, reply.finish_reason, 0)


async def _events(reply: Reply) -> AsyncIterator[bytes]:
    for chunk in reply.opening():
        yield sse(chunk)
    tokens = 0
    try:
        async for d in reply.gen.deltas():
            tokens = d.completion_tokens
            for chunk in reply.chunks(d):
                yield sse(chunk)
    except P.APIError as e:
        yield sse(e.body())
    if reply.params.include_usage:
        yield sse(reply.body(reply.chunk_object, [], usage=reply.usage(tokens)))
    yield DONE


async def respond(reply: Reply) -> Response:
    """The reply as the request asked: a stream of events, or one JSON body once generated."""
    if reply.params.stream:
        return StreamingResponse(
            _events(reply),
            media_type="text/event-stream",
            # No caching, and no buffering by a proxy such as nginx: each event goes out at once.
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    whole = await collect(reply.gen)
    return JSONResponse(
        reply.body(reply.object, [reply.choice(whole)], usage=reply.usage(whole.completion_tokens))
    )
