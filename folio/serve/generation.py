"""One request in flight on a served model's engine: engine events in, text deltas out.

Text is encoded and decoded in the server: the engine (`folio.sample.engine`)
sees token ids only. Generation runs in the engine's thread, off the event
loop; each request hears its tokens through an asyncio queue fed with
`call_soon_threadsafe`. A client that disconnects cancels its generation: a
watcher task waits for the ASGI `http.disconnect` message. Text is released
through `TextStream`, so a delta never holds half a UTF-8 character nor any
part of a stop string.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from folio.errors import FolioError
from folio.sample.engine import EngineBusy, GenerationRequest, TokenEvent
from folio.sample.sampler import SamplingConfig
from folio.serve import protocol as P
from folio.serve.served import ServedModel
from folio.tokenizers.stream import TextStream

RETRY_AFTER_S = 1


@dataclass
class Delta:
    """New text of one generation step, with its token's logprob entry and the end if reached."""

    text: str
    entry: dict[str, Any] | None
    finish_reason: str | None
    completion_tokens: int


class Generation:
    """One request in flight: engine events in, text deltas out.

    Submitting happens in the constructor, so a full queue (429) or a request the
    engine refuses (400, naming `param`) is an error before any response starts.
    """

    def __init__(
        self,
        served: ServedModel,
        prompt_ids: list[int],
        stop_ids: frozenset[int],
        params: P.GenerationParams,
        request: Request,
        param: str,
    ) -> None:
        self.served, self.params, self.request = served, params, request
        self.prompt_tokens = len(prompt_ids)
        self.events: asyncio.Queue[TokenEvent | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def listen(event: TokenEvent) -> None:  # called in the engine's thread
            loop.call_soon_threadsafe(self.events.put_nowait, event)

        try:
            sampling = SamplingConfig(
                max_new_tokens=params.max_tokens,
                temperature=params.temperature,
                top_k=params.top_k,
                top_p=params.top_p,
                seed=params.seed,
            )
            self.handle = served.engine.submit(
                GenerationRequest(
                    prompt_ids,
                    sampling,
                    stop_ids=stop_ids,
                    top_logprobs=params.top_logprobs if params.logprobs else None,
                    listener=listen,
                )
            )
        except EngineBusy as e:
            raise P.APIError(
                429,
                str(e),
                type="rate_limit_exceeded",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from None
        except FolioError as e:
            raise P.bad(param, str(e)) from None
        self.text = TextStream(served.token_bytes, params.stop)
        self.watcher = asyncio.create_task(self._watch_disconnect())

    async def _watch_disconnect(self) -> None:
        while (await self.request.receive())["type"] != "http.disconnect":
            pass  # the rest of a body, or nothing: only a disconnect matters here
        self.handle.cancel()
        self.events.put_nowait(None)

    def _entry(self, event: TokenEvent) -> dict[str, Any] | None:
        token = event.token_id
        if token is None and self.params.include_stop_token:
            token = event.stop_token_id  # the stop token's entry, asked for by the stream
        if not self.params.logprobs or token is None or event.logprob is None:
            return None
        tb = self.served.token_bytes
        alternatives = [(tb(i), lp) for i, lp in event.top_logprobs or []]
        return P.chat_logprob_entry(tb(token), event.logprob, alternatives)

    async def deltas(self) -> AsyncIterator[Delta]:
        """Text pieces until the end; cancels the generation if the consumer stops early."""
        try:
            while True:
                event = await self.events.get()
                if event is None:  # the client went away
                    return
                if event.finish_reason == "error":
                    raise P.APIError(500, f"generation failed: {event.error}", type="server_error")
                piece = self.text.feed(event.token_id) if event.token_id is not None else ""
                finish = event.finish_reason
                if self.text.done:  # a stop string: end here
                    finish = "stop"
                    self.handle.cancel()
                elif finish is not None:
                    piece += self.text.finish()
                if finish == "cancelled":  # only a shutdown cancels from the engine side
                    finish = "stop"
                yield Delta(piece, self._entry(event), finish, event.completion_tokens)
                if finish is not None:
                    return
        finally:
            self.handle.cancel()
            self.watcher.cancel()
