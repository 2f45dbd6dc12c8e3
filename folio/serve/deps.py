"""What the routes share: the app's state, and the checks they declare as dependencies.

`create_app` keeps the served models, the request limits and the API key in
`app.state`; the accessors here give them typed to a handler. The checks run
before a handler as FastAPI dependencies, in the order declared:

- `require_api_key` (401 without `Authorization: Bearer KEY`, when the server has a key);
- `JSONBody`, the request body parsed as JSON within `Limits.max_body_bytes` (413,
  400), by the same reader as every other input (`folio.inputs.parse_json`).

Both raise `APIError`, which the app answers in OpenAI's error shape, as does
`prompt_error` for a prompt a model cannot take.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, Request

from folio.errors import FolioError
from folio.inputs import InputError, parse_json
from folio.serve import protocol as P
from folio.serve.prompt import PromptTooLong, first_unknown_character
from folio.serve.served import ServedModel

MAX_CONTENT_LENGTH_DIGITS = 18
"""A Content-Length longer than this is past any body cap (and int() of thousands of digits is slow)."""


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


def prompt_error(m: ServedModel, e: FolioError, param: str, texts: dict[str, Any]) -> P.APIError:
    """The 400 for a prompt `m` could not encode (`e`), naming what the client should change.

    Too long: `context_length_exceeded`. A character outside the vocabulary:
    `unsupported_characters`, naming the first one and the field (among `texts`,
    field name -> text) that holds it. Anything else: `e`'s message, on `param`.
    """
    if isinstance(e, PromptTooLong):
        return P.bad(param, str(e), code="context_length_exceeded")
    for field, text in texts.items():
        found = first_unknown_character(m.tokenizer, text) if isinstance(text, str) else None
        if found:
            at, c = found
            return P.bad(
                field,
                f"{field} holds {c!r} (U+{ord(c):04X}) at character {at}, which is not in "
                f"the vocabulary of the model '{m.id}'",
                code="unsupported_characters",
            )
    return P.bad(param, str(e))


def api_key_bytes(key: str) -> bytes:
    """The key as the UTF-8 bytes a client sends; a FolioError for a key no client can send."""
    try:
        raw = key.encode("utf-8")
    except UnicodeEncodeError:  # a command-line argument that was not UTF-8
        raise FolioError("the API key is not UTF-8 text") from None
    # An HTTP header holds no control characters, and servers drop spaces at its ends.
    if not key or key != key.strip(" \t") or any(ord(c) < 32 or c == "\x7f" for c in key):
        raise FolioError(
            "the API key must be non-empty, with no spaces at its ends and no control "
            "characters, as it travels in an HTTP header"
        )
    return raw


def has_api_key(request: Request) -> bool:
    """Whether the request may use the API: the server has no key, or the request sends it."""
    key: bytes | None = request.app.state.api_key_bytes
    if key is None:
        return True
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    # Headers arrive as bytes, which Starlette decodes as Latin-1: encoding back gives
    # them exactly, so the key is compared as the UTF-8 bytes a client sends
    # (compare_digest refuses str with non-ASCII characters). Only ASCII blanks are
    # stripped: str.strip() would also take 0xA0, the last byte of a UTF-8 'à'.
    # compare_digest takes as long for a near miss as for a wild guess: no timing hints.
    given_bytes = given.strip(" \t").encode("latin-1")
    return scheme.lower() == "bearer" and hmac.compare_digest(given_bytes, key)


async def require_api_key(request: Request) -> None:
    """Refuse (401) a request without the server's key, when it has one."""
    if not has_api_key(request):
        raise P.APIError(
            401,
            "a valid API key is required: send 'Authorization: Bearer KEY'",
            code="invalid_api_key",
        )


async def json_body(request: Request) -> Any:
    """The request body as JSON, refusing more than `max_body_bytes` (413) and hostile JSON (400)."""
    limit = request_limits(request).max_body_bytes
    too_big = P.APIError(
        413, f"request body is larger than {limit} bytes", code="request_too_large"
    )
    length = request.headers.get("content-length")
    if length is not None and not (
        # isdigit() alone takes '²' (a Latin-1 byte), which int() refuses.
        length.isascii()
        and length.isdigit()
        and len(length) <= MAX_CONTENT_LENGTH_DIGITS
        and int(length) <= limit
    ):
        raise too_big
    # The declared length may be absent or false: count what arrives, and stop at the cap.
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    try:
        return parse_json(b"".join(chunks), "the request body")
    except InputError as e:
        raise P.APIError(400, str(e), code="invalid_json") from None


JSONBody = Annotated[Any, Depends(json_body)]
"""A handler parameter of this type receives the body read by `json_body`."""
