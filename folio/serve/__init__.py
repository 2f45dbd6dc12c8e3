"""Serving: an OpenAI-compatible HTTP API and the playground page over the engine.

`folio.serve.app.create_app` builds the FastAPI application (it needs the
`serve` extra: fastapi and uvicorn) from two routers, `openai_routes` (/v1)
and `folio_routes` (the page, /health, the attention extension), with their
checks in `deps`; `generation` and `responses` carry a request from the
engine to the client, and `protocol` holds the wire format.
`folio.serve.prompt` turns messages into prompt ids and is shared with `folio chat`.
"""
