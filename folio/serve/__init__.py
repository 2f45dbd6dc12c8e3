"""Serving: an OpenAI-compatible HTTP API and the playground page over the engine.

`folio.serve.app.create_app` builds the FastAPI application (it needs the
`serve` extra: fastapi and uvicorn); `folio.serve.prompt` turns messages into
prompt ids and is shared with `folio chat`.
"""
