"""Folio's own routes: the playground page, /health and the attention extension.

    GET  /                       the playground page (folio/serve/playground.html)
    GET  /health                 status; with the API key, the models and their engines' counts
    POST /v1/folio/attention     the attention weights of a layer and head (needs the API key)

The page and /health are open, so a browser and a load balancer reach them
without the key; HEAD answers them as GET does, without the body. Without the
key, /health says only `{"status": "ok"}`: the model ids and the traffic
counts are for those who may use the API.

## The attention extension

`POST /v1/folio/attention` with `{"model", "prompt": str}` or
`{"model", "messages": [...]}` (rendered as for chat; a last assistant
message is the reply so far), plus `"layer"` (default 0) and `"head"`
(default 0). It answers `{"model", "layer", "head", "n_layer", "n_head",
"tokens": [str], "weights": [[float]], "offset"}`: `weights[t][s]` is how much
position t attends to position s (the video's `wei`; row t sums to 1, zero above
the diagonal). The model reads at most block_size tokens, so a longer text is
cut to its last block_size: `offset` is how many tokens were cut from its start
(0 when the whole text is shown), and `tokens[0]` is the text's token `offset`.
"""

from __future__ import annotations

import asyncio
import codecs
from importlib import resources
from typing import Any

import torch
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from folio.errors import FolioError
from folio.models.gpt import GPT
from folio.serve import protocol as P
from folio.serve.deps import (
    JSONBody,
    find_model,
    has_api_key,
    prompt_error,
    require_api_key,
    served_models,
)
from folio.serve.prompt import text_prompt
from folio.serve.served import ServedModel
from folio.tokenizers.chat import ASSISTANT, render_conversation

router = APIRouter()


def _conversation_ids(m: ServedModel, messages: list[dict]) -> list[int]:
    """Messages as the model reads them, a last assistant message being the reply so far."""
    if not m.chat:
        return text_prompt(m.tokenizer, "\n".join(x["content"] for x in messages))
    reply = messages[-1]["content"] if messages[-1]["role"] == "assistant" else None
    ids, _ = render_conversation(m.tokenizer, messages if reply is None else messages[:-1])
    if reply is not None:
        ids += [m.tokenizer.special_token_id(ASSISTANT), *m.tokenizer.encode(reply)]
    return ids


def _attention_prompt(m: ServedModel, body: dict) -> list[int]:
    """The ids whose attention is shown: a prompt, or messages with the reply so far."""
    messages = None
    if "messages" in body:
        _, messages = P.parse_chat({**body, "model": m.id}, P.Limits())
        param = "messages"
        texts = {f"messages[{n}].content": x["content"] for n, x in enumerate(messages)}
    else:
        prompt = body.get("prompt", "")
        if not isinstance(prompt, str):
            raise P.bad("prompt", "'prompt' must be a string")
        param, texts = "prompt", {"prompt": prompt}
    try:
        if messages is not None:
            return _conversation_ids(m, messages)
        return text_prompt(m.tokenizer, prompt)
    except FolioError as e:
        raise prompt_error(m, e, param, texts) from None


def _attention_tokens(m: ServedModel, ids: list[int]) -> list[str]:
    """Each token's text for display; a partial UTF-8 character shows on the token completing it."""
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    return [utf8.decode(m.token_bytes(i)) for i in ids]


def _attention_weights(m: ServedModel, ids: list[int], layer: int, head: int) -> list[list[float]]:
    """Row t of the head's attention over positions 0..t (those above the diagonal are zero)."""
    idx = torch.tensor([ids], device=m.engine.device)  # (1, T)
    wei = m.engine.model.attention_maps(idx, layer)[0, head]  # (1, nh, T, T) -> (T, T)
    return [[round(float(w), 4) for w in row[: t + 1]] for t, row in enumerate(wei.cpu())]


@router.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse)
async def playground() -> HTMLResponse:
    page = resources.files("folio.serve").joinpath("playground.html").read_text("utf-8")
    return HTMLResponse(page)


@router.api_route("/health", methods=["GET", "HEAD"])
async def health(request: Request) -> dict[str, Any]:
    if not has_api_key(request):
        return {"status": "ok"}
    return {
        "status": "ok",
        "models": {
            m.id: {**m.engine.stats(), "batch_invariant": m.engine.batch_invariant}
            for m in served_models(request).values()
        },
    }


@router.post("/v1/folio/attention", dependencies=[Depends(require_api_key)])
async def attention(request: Request, body: JSONBody) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise P.APIError(400, "the request body must be a JSON object", code="invalid_json")
    m = find_model(request, body.get("model") if isinstance(body.get("model"), str) else "")
    if not isinstance(m.engine.model, GPT):
        raise P.bad("model", f"'{m.id}' has no attention layers (a bigram model)")
    c = m.engine.model.config
    layer = P.opt_int(body, "layer", 0, c.n_layer - 1) or 0
    head = P.opt_int(body, "head", 0, c.n_head - 1) or 0
    ids = _attention_prompt(m, body)
    window = ids[-m.engine.block_size :]
    # The forward pass runs in a worker thread, so the event loop keeps serving meanwhile.
    weights = await asyncio.to_thread(_attention_weights, m, window, layer, head)
    return {
        "model": m.id,
        "layer": layer,
        "head": head,
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "tokens": _attention_tokens(m, window),
        "weights": weights,
        "offset": len(ids) - len(window),
    }
