"""The OpenAI-compatible routes under /v1, each behind the API key.

    GET  /v1/models              the served checkpoints, each under its own id
    GET  /v1/models/{model_id}   one of them
    POST /v1/completions         text completion (stream or not)
    POST /v1/chat/completions    chat (stream or not); see folio/serve/prompt.py for the modes

A generation route turns its request into prompt ids here (text is encoded in
the server, never in the engine), starts a `Generation`, and hands it to
`responses.respond`, which answers both endpoints alike.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from folio.errors import FolioError
from folio.serve import protocol as P
from folio.serve.deps import (
    JSONBody,
    find_model,
    prompt_error,
    request_limits,
    require_api_key,
    served_models,
)
from folio.serve.generation import Generation
from folio.serve.prompt import conversation_prompt, text_prompt
from folio.serve.responses import ChatReply, CompletionReply, respond
from folio.serve.served import ServedModel
from folio.tokenizers.chat import validate_conversation

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])


def _prompt_budget(m: ServedModel, limits: P.Limits) -> int:
    """The longest prompt `m` takes: its context, or the server's cap if smaller."""
    cap = limits.max_prompt_tokens
    return min(m.engine.block_size, cap) if cap else m.engine.block_size


def _completion_prompt(m: ServedModel, prompt: str | list[int], budget: int) -> list[int]:
    """A completion's prompt ids, from text or from ids the client sent (checked in range)."""
    if isinstance(prompt, str):
        try:
            ids = text_prompt(m.tokenizer, prompt)
        except FolioError as e:
            raise prompt_error(m, e, "prompt", {"prompt": prompt}) from None
    else:
        ids = prompt
        if any(not 0 <= i < m.engine.vocab_size for i in ids):
            raise P.bad("prompt", f"token ids must be in [0, {m.engine.vocab_size})")
    if len(ids) > budget:
        raise P.bad(
            "prompt",
            f"the prompt is {len(ids)} tokens; this model takes at most {budget}",
            code="context_length_exceeded",
        )
    return ids


@router.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [m.info() for m in served_models(request).values()]}


@router.get("/models/{model_id}")
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    return find_model(request, model_id).info()


@router.post("/chat/completions")
async def chat_completions(request: Request, body: JSONBody) -> Response:
    limits = request_limits(request)
    params, messages = P.parse_chat(body, limits)
    m = find_model(request, params.model)
    if m.chat:  # a base model takes any messages: it only continues their text
        try:
            messages = validate_conversation({"messages": messages}, "messages", needs_reply=False)
        except FolioError as e:
            raise P.bad("messages", str(e)) from None
    try:
        prompt = conversation_prompt(m.tokenizer, messages, _prompt_budget(m, limits))
    except FolioError as e:
        texts = {f"messages[{n}].content": x["content"] for n, x in enumerate(messages)}
        raise prompt_error(m, e, "messages", texts) from None
    gen = Generation(m, prompt.ids, prompt.stop_ids, params, request, "messages")
    return await respond(ChatReply(gen))


@router.post("/completions")
async def completions(request: Request, body: JSONBody) -> Response:
    limits = request_limits(request)
    params, prompt = P.parse_completion(body, limits)
    m = find_model(request, params.model)
    ids = _completion_prompt(m, prompt, _prompt_budget(m, limits))
    gen = Generation(m, ids, m.stop_ids, params, request, "prompt")
    return await respond(CompletionReply(gen))
