"""The HTTP server: an OpenAI-compatible API over the engine, the playground and /health.

`create_app` only wires the application together: it keeps the served
models, the request limits and the API key in `app.state`, starts and stops
the engines with the app, answers every error in OpenAI's shape, and includes
two routers:

- `folio.serve.openai_routes`: /v1/models, /v1/models/{model_id},
  /v1/completions and /v1/chat/completions, all behind the API key;
- `folio.serve.folio_routes`: the playground page at /, /health, and the
  attention extension /v1/folio/attention (behind the key).

A keyless server on a loopback address also refuses requests addressed to any
other name (`folio.serve.hosts`, against DNS rebinding).

The checks they share are dependencies in `folio.serve.deps`; the responses
of both generation endpoints are built in `folio.serve.responses`.

Errors are JSON as OpenAI's `{"error": {"message", "type", "param", "code"}}`.
Status codes: 400 a bad field, value, body or Host name (FastAPI's 422 is
replaced), 401 missing or wrong API key, 404 unknown model or route, 405 wrong
method, 413 body over the cap, 429 the engine's queue is full (with
Retry-After), 500 an error in the server (its traceback goes to the server's
log, never to the client).
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from folio.errors import FolioError
from folio.serve import folio_routes, openai_routes
from folio.serve import protocol as P
from folio.serve.deps import api_key_bytes
from folio.serve.hosts import LoopbackHostOnly
from folio.serve.served import ServedModel, load_served_model

__all__ = ["ServedModel", "create_app", "load_served_model"]


async def _api_error(request: Request, e: P.APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
    err = P.APIError(e.status_code, str(e.detail), code=code)
    return JSONResponse(err.body(), status_code=e.status_code)


async def _validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
    return JSONResponse(P.APIError(400, "invalid request").body(), status_code=400)


async def _internal_error(request: Request, e: Exception) -> JSONResponse:
    traceback.print_exc(file=sys.stderr)
    err = P.APIError(500, "internal server error", type="server_error")
    return JSONResponse(err.body(), status_code=500)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The engines' threads run while the app does."""
    models = list(app.state.models.values())
    for m in models:
        m.engine.start()
    try:
        yield
    finally:
        for m in models:
            m.engine.close()


def create_app(
    models: list[ServedModel],
    *,
    api_key: str | None = None,
    cors_origins: list[str] | None = None,
    limits: P.Limits | None = None,
    loopback_only: bool = False,
) -> FastAPI:
    """The FastAPI application serving `models`; their engines start and stop with it.

    `loopback_only` refuses requests whose Host header is not localhost, 127.x.y.z
    or [::1]: `folio serve` sets it for a server on a loopback address without a key.
    """
    served = {m.id: m for m in models}
    if len(served) != len(models):
        raise FolioError("two served checkpoints have the same model id; name them apart")
    app = FastAPI(
        title="Folio",
        lifespan=_lifespan,
        docs_url=None,  # no CDN-loaded pages: the server works offline
        redoc_url=None,
        openapi_url=None,
    )
    app.state.models = served
    app.state.limits = limits or P.Limits()
    app.state.api_key_bytes = None if api_key is None else api_key_bytes(api_key)
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    if loopback_only:  # added last, so it runs first: before CORS and every route
        app.add_middleware(LoopbackHostOnly)
    app.add_exception_handler(P.APIError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)
    app.include_router(folio_routes.router)
    app.include_router(openai_routes.router)
    return app
