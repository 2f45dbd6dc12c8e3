"""What the routes share: the app's state, and the checks they declare as dependencies.

`create_app` keeps the served models, the request limits and the API key in
`app.state`; the accessors here give them typed to a handler. The checks run
before a handler as FastAPI dependencies, in the order declared:

- `require_api_key` (401 without `Authorization: Bearer KEY`, when the server has a key);
- `JSONBody`, the request body parsed as JSON within `Limits.max_body_bytes` (413, 400).

Both raise `APIError`, which the app answers in OpenAI's error shape.
"""

from __future__ import annotations

import hmac
import json
from typing import Annotated, Any

from fastapi import Depends, Request

from folio.serve import protocol as P
from folio.serve.served import ServedModel


def served_models(request: Request) -> dict[str, ServedModel]:
    """The served models by id, in the order they were given."""
    return request.app.state.models


def request_limits(request: Request) -> P.Limits:
    """What one request may ask of this server."""
    return request.app.state.limits


def find_model(request: Request, model_id: str) -> ServedModel:
    """The served model `model_id`, or a 404 listing those there are."""
    models = served_models(request)
    if model_id not in models:
        raise P.APIError(
            404,
            f"the model '{model_id}' does not exist; served: {', '.join(models)}",
            param="model",
            code="model_not_found",
        )
    return models[model_id]


async def require_api_key(request: Request) -> None:
    """Refuse (401) a request without the server's key, when it has one."""
    api_key: str | None = request.app.state.api_key
    if api_key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    # compare_digest takes as long for a near miss as for a wild guess: no timing hints.
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), api_key):
        raise P.APIError(
            401,
            "a valid API key is required: send 'Authorization: Bearer KEY'",
            code="invalid_api_key",
        )


async def json_body(request: Request) -> Any:
    """The request body as JSON, refusing more than `max_body_bytes` (413)."""
    limit = request_limits(request).max_body_bytes
    too_big = P.APIError(
        413, f"request body is larger than {limit} bytes", code="request_too_large"
    )
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise too_big
    # The declared length may be absent or false: count what arrives, and stop at the cap.
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


JSONBody = Annotated[Any, Depends(json_body)]
"""A handler parameter of this type receives the body read by `json_body`."""
