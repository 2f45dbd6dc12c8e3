"""The HTTP server: an OpenAI-compatible API over the engine, the playground and /health.

Routes (all JSON; errors as OpenAI's `{"error": {"message", "type", "param", "code"}}`):

    GET  /                       the playground page (folio/serve/playground.html)
    GET  /health                 status, and the engines' queue sizes and counts
    GET  /v1/models              the served checkpoints, each under its own id
    POST /v1/completions         text completion (stream or not)
    POST /v1/chat/completions    chat (stream or not); see folio/serve/prompt.py for the modes
    POST /v1/folio/attention     Folio extension: the attention weights of a layer and head

Text is encoded here and decoded here: the engine (`folio.sample.engine`)
sees token ids only. Generation runs in the engine's thread, off the event
loop; each request hears its tokens through an asyncio queue fed with
`call_soon_threadsafe`. A client that disconnects cancels its generation: a
watcher task waits for the ASGI `http.disconnect` message.

Streams send Server-Sent Events, `data: {json}\\n\\n`. For chat: a first chunk
with the assistant role, content chunks, a chunk with an empty delta and the
finish_reason, a usage chunk if `stream_options.include_usage`, then
`data: [DONE]`. Text is released through `TextStream`, so a chunk never holds
half a UTF-8 character nor any part of a stop string.

Status codes: 400 bad field or value (FastAPI's 422 is replaced), 401 missing
or wrong API key, 404 unknown model or route, 413 body over the cap, 429 the
engine's queue is full (with Retry-After), 500 an error in the server (its
traceback goes to the server's log, never to the client).

## The attention extension

`POST /v1/folio/attention` with `{"model", "prompt": str}` or
`{"model", "messages": [...]}` (rendered as for chat; a last assistant
message is the reply so far), plus `"layer"` (default 0) and `"head"`
(default 0). It answers `{"model", "layer", "head", "n_layer", "n_head",
"tokens": [str], "weights": [[float]]}`: `weights[t][s]` is how much position
t attends to position s (the video's `wei`; row t sums to 1, zero above the
diagonal). The text is cut to its last block_size tokens.
"""

from __future__ import annotations

import asyncio
import codecs
import hmac
import json
import sys
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from folio.errors import FolioError
from folio.models.gpt import GPT
from folio.sample.engine import Engine, EngineBusy, GenerationRequest, TokenEvent
from folio.sample.sampler import SamplingConfig
from folio.serve import protocol as P
from folio.serve.prompt import conversation_prompt, is_chat_model, stop_ids_for, text_prompt
from folio.tokenizers.chat import ASSISTANT, render_conversation, validate_conversation
from folio.tokenizers.stream import TextStream, TokenBytes

RETRY_AFTER_S = 1


@dataclass
class ServedModel:
    """One checkpoint behind one model id, with its own engine."""

    id: str
    engine: Engine
    tokenizer: Any
    created: int = 0

    def __post_init__(self) -> None:
        self.token_bytes = TokenBytes(self.tokenizer)
        self.chat = is_chat_model(self.tokenizer)
        self.stop_ids = stop_ids_for(self.tokenizer)

    @property
    def config(self) -> Any:
        return self.engine.model.config

    def info(self) -> dict[str, Any]:
        """The /v1/models entry, with Folio's details under "folio"."""
        c = self.config
        return {
            "id": self.id,
            "object": "model",
            "created": self.created,
            "owned_by": "folio",
            "folio": {
                "mode": "chat" if self.chat else "completion",
                "block_size": self.engine.block_size,
                "vocab_size": c.vocab_size,
                "n_layer": getattr(c, "n_layer", 0),
                "n_head": getattr(c, "n_head", 0),
                "attention": isinstance(self.engine.model, GPT),
            },
        }


@dataclass
class Delta:
    """New text of one generation step, with its token's logprob entry and the end if reached."""

    text: str
    entry: dict[str, Any] | None
    finish_reason: str | None
    completion_tokens: int


class _Generation:
    """One request in flight: engine events in, text deltas out."""

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
        if not self.params.logprobs or event.token_id is None or event.logprob is None:
            return None
        tb = self.served.token_bytes
        alternatives = [(tb(i), lp) for i, lp in event.top_logprobs or []]
        return P.chat_logprob_entry(tb(event.token_id), event.logprob, alternatives)

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


def _sse(obj: Any) -> bytes:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n".encode()


_DONE = b"data: [DONE]\n\n"


def _check_api_key(request: Request, api_key: str | None) -> None:
    if api_key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), api_key):
        raise P.APIError(
            401,
            "a valid API key is required: send 'Authorization: Bearer KEY'",
            code="invalid_api_key",
        )


async def _read_json(request: Request, limit: int) -> Any:
    """The request body as JSON, refusing more than `limit` bytes (413)."""
    too_big = P.APIError(
        413, f"request body is larger than {limit} bytes", code="request_too_large"
    )
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise P.APIError(400, "the request body is not valid JSON", code="invalid_json") from None


def _attention_tokens(served: ServedModel, ids: list[int]) -> list[str]:
    """Each token's text for display; a partial UTF-8 character shows on the token completing it."""
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    return [utf8.decode(served.token_bytes(i)) for i in ids]


# The routes are closures over this app's models, engine and limits, so they are
# defined inside create_app; each route below is its own function.
def create_app(
    models: list[ServedModel],
    *,
    api_key: str | None = None,
    cors_origins: list[str] | None = None,
    limits: P.Limits | None = None,
) -> FastAPI:
    """The FastAPI application serving `models`; their engines start and stop with it."""
    limits = limits or P.Limits()
    served = {m.id: m for m in models}
    if len(served) != len(models):
        raise FolioError("two served checkpoints have the same model id; name them apart")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for m in models:
            m.engine.start()
        try:
            yield
        finally:
            for m in models:
                m.engine.close()

    app = FastAPI(
        title="Folio",
        lifespan=lifespan,
        docs_url=None,  # no CDN-loaded pages: the server works offline
        redoc_url=None,
        openapi_url=None,
    )
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )

    # --- errors in OpenAI's shape ----------------------------------------------------------

    @app.exception_handler(P.APIError)
    async def api_error(request: Request, e: P.APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        err = P.APIError(e.status_code, str(e.detail), code=code)
        return JSONResponse(err.body(), status_code=e.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        return JSONResponse(P.APIError(400, "invalid request").body(), status_code=400)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception) -> JSONResponse:
        traceback.print_exc(file=sys.stderr)
        err = P.APIError(500, "internal server error", type="server_error")
        return JSONResponse(err.body(), status_code=500)

    def lookup(model_id: str) -> ServedModel:
        if model_id not in served:
            raise P.APIError(
                404,
                f"the model '{model_id}' does not exist; served: {', '.join(served)}",
                param="model",
                code="model_not_found",
            )
        return served[model_id]

    # --- pages and status ------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    async def playground() -> HTMLResponse:
        page = resources.files("folio.serve").joinpath("playground.html").read_text("utf-8")
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "models": {
                m.id: {**m.engine.stats(), "batch_invariant": m.engine.batch_invariant}
                for m in models
            },
        }

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        _check_api_key(request, api_key)
        return {"object": "list", "data": [m.info() for m in models]}

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str, request: Request) -> dict[str, Any]:
        _check_api_key(request, api_key)
        return lookup(model_id).info()

    # --- completions -------------------------------------------------------------------------

    def prompt_budget(m: ServedModel) -> int:
        cap = limits.max_prompt_tokens
        return min(m.engine.block_size, cap) if cap else m.engine.block_size

    def too_long(e: FolioError, param: str) -> P.APIError:
        return P.bad(param, str(e), code="context_length_exceeded")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        _check_api_key(request, api_key)
        params, messages = P.parse_chat(await _read_json(request, limits.max_body_bytes), limits)
        m = lookup(params.model)
        if m.chat:
            try:
                messages = validate_conversation(
                    {"messages": messages}, "messages", needs_reply=False
                )
            except FolioError as e:
                raise P.bad("messages", str(e)) from None
        try:
            prompt = conversation_prompt(m.tokenizer, messages, prompt_budget(m))
        except FolioError as e:
            raise too_long(e, "messages") from None
        gen = _Generation(m, prompt.ids, prompt.stop_ids, params, request, "messages")
        rid, created = P.new_id("chatcmpl"), P.now()

        def chunk(delta: dict, finish: str | None, entry: dict | None = None) -> dict[str, Any]:
            choice = {
                "index": 0,
                "delta": delta,
                "logprobs": {"content": [entry]} if entry else None,
                "finish_reason": finish,
            }
            body = {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": m.id,
                "choices": [choice],
            }
            if params.include_usage:
                body["usage"] = None
            return body

        if params.stream:

            async def events() -> AsyncIterator[bytes]:
                yield _sse(chunk({"role": "assistant", "content": ""}, None))
                tokens = 0
                try:
                    async for d in gen.deltas():
                        tokens = d.completion_tokens
                        if d.text or d.entry:
                            yield _sse(chunk({"content": d.text}, None, d.entry))
                        if d.finish_reason:
                            yield _sse(chunk({}, d.finish_reason))
                except P.APIError as e:
                    yield _sse(e.body())
                if params.include_usage:
                    yield _sse(
                        {
                            "id": rid,
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": m.id,
                            "choices": [],
                            "usage": P.usage(gen.prompt_tokens, tokens),
                        }
                    )
                yield _DONE

            return _stream(events())

        text, entries, finish, tokens = [], [], "stop", 0
        async for d in gen.deltas():
            text.append(d.text)
            if d.entry:
                entries.append(d.entry)
            finish, tokens = d.finish_reason or finish, d.completion_tokens
        return JSONResponse(
            {
                "id": rid,
                "object": "chat.completion",
                "created": created,
                "model": m.id,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(text)},
                        "logprobs": {"content": entries} if params.logprobs else None,
                        "finish_reason": finish,
                    }
                ],
                "usage": P.usage(gen.prompt_tokens, tokens),
            }
        )

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        _check_api_key(request, api_key)
        params, prompt = P.parse_completion(
            await _read_json(request, limits.max_body_bytes), limits
        )
        m = lookup(params.model)
        if isinstance(prompt, str):
            try:
                ids = text_prompt(m.tokenizer, prompt)
            except FolioError as e:
                raise P.bad("prompt", str(e)) from None
        else:
            ids = prompt
            if any(not 0 <= i < m.engine.vocab_size for i in ids):
                raise P.bad("prompt", f"token ids must be in [0, {m.engine.vocab_size})")
        if len(ids) > prompt_budget(m):
            raise too_long(
                FolioError(
                    f"the prompt is {len(ids)} tokens; this model takes at most {prompt_budget(m)}"
                ),
                "prompt",
            )
        gen = _Generation(m, ids, m.stop_ids, params, request, "prompt")
        rid, created = P.new_id("cmpl"), P.now()

        def choice(text: str, entries: list[dict], finish: str | None, offset: int) -> dict:
            logprobs = P.completion_logprobs(entries, offset) if params.logprobs else None
            return {"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish}

        def body(choices: list[dict], **extra: Any) -> dict[str, Any]:
            return {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": m.id,
                "choices": choices,
                **extra,
            }

        if params.stream:

            async def events() -> AsyncIterator[bytes]:
                tokens, offset = 0, 0
                try:
                    async for d in gen.deltas():
                        tokens = d.completion_tokens
                        entries = [d.entry] if d.entry else []
                        if d.text or entries or d.finish_reason:
                            extra = {"usage": None} if params.include_usage else {}
                            yield _sse(
                                body([choice(d.text, entries, d.finish_reason, offset)], **extra)
                            )
                        offset += len(d.text)
                except P.APIError as e:
                    yield _sse(e.body())
                if params.include_usage:
                    yield _sse(body([], usage=P.usage(gen.prompt_tokens, tokens)))
                yield _DONE

            return _stream(events())

        text, entries, finish, tokens = [], [], "stop", 0
        async for d in gen.deltas():
            text.append(d.text)
            if d.entry:
                entries.append(d.entry)
            finish, tokens = d.finish_reason or finish, d.completion_tokens
        return JSONResponse(
            body(
                [choice("".join(text), entries, finish, 0)],
                usage=P.usage(gen.prompt_tokens, tokens),
            )
        )

    # --- the attention extension ---------------------------------------------------------------

    @app.post("/v1/folio/attention")
    async def attention(request: Request) -> dict[str, Any]:
        _check_api_key(request, api_key)
        body = await _read_json(request, limits.max_body_bytes)
        if not isinstance(body, dict):
            raise P.APIError(400, "the request body must be a JSON object", code="invalid_json")
        m = lookup(body.get("model") if isinstance(body.get("model"), str) else "")
        model = m.engine.model
        if not isinstance(model, GPT):
            raise P.bad("model", f"'{m.id}' has no attention layers (a bigram model)")
        c = model.config
        layer = P._opt_int(body, "layer", 0, c.n_layer - 1) or 0
        head = P._opt_int(body, "head", 0, c.n_head - 1) or 0
        ids = _attention_prompt(m, body)[-m.engine.block_size :]

        def compute() -> list[list[float]]:
            idx = torch.tensor([ids], device=m.engine.device)  # (1, T)
            wei = model.attention_maps(idx, layer)[0, head]  # (1, nh, T, T) -> (T, T)
            return [[round(float(w), 4) for w in row[: t + 1]] for t, row in enumerate(wei.cpu())]

        weights = await asyncio.to_thread(compute)
        return {
            "model": m.id,
            "layer": layer,
            "head": head,
            "n_layer": c.n_layer,
            "n_head": c.n_head,
            "tokens": _attention_tokens(m, ids),
            "weights": weights,
        }

    return app


def _attention_prompt(m: ServedModel, body: dict) -> list[int]:
    """The ids whose attention is shown: a prompt, or messages with the reply so far."""
    try:
        if "messages" in body:
            _, messages = P.parse_chat({**body, "model": m.id}, P.Limits())
            if not m.chat:
                return text_prompt(m.tokenizer, "\n".join(x["content"] for x in messages))
            reply = messages.pop()["content"] if messages[-1]["role"] == "assistant" else None
            ids, _ = render_conversation(m.tokenizer, messages)
            if reply is not None:
                ids += [m.tokenizer.special_token_id(ASSISTANT), *m.tokenizer.encode(reply)]
            return ids
        prompt = body.get("prompt", "")
        if not isinstance(prompt, str):
            raise P.bad("prompt", "'prompt' must be a string")
        return text_prompt(m.tokenizer, prompt)
    except FolioError as e:
        raise P.bad("prompt", str(e)) from None


def _stream(events: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def load_served_model(
    spec: str,
    *,
    device: torch.device | str = "cpu",
    max_batch: int = 32,
    max_queue: int = 64,
    which: str = "latest",
) -> ServedModel:
    """A checkpoint to serve from `PATH` or `ID=PATH` (the id defaults to the run's folder name)."""
    from folio.checkpoint import load_checkpoint

    model_id, sep, path = spec.partition("=")
    if not sep:
        model_id, path = "", spec
    ck = load_checkpoint(path, which, device)
    if not model_id:
        p = Path(path).resolve()
        model_id = (p.parent.parent.name if p.parent.name == "checkpoints" else p.name) or "folio"
    engine = Engine(ck.model, max_batch=max_batch, max_queue=max_queue, device=device)
    created = int((ck.path / "model.safetensors").stat().st_mtime)
    return ServedModel(model_id, engine, ck.tokenizer, created)
