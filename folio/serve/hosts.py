"""Refusing DNS rebinding: a keyless server on a loopback address answers loopback names only.

A server on 127.0.0.1 without an API key trusts whoever reaches it, meant to
be the people and programs on this machine. A web page elsewhere can reach it
all the same: its own domain, pointed by its DNS at 127.0.0.1 once the page
has loaded ("DNS rebinding"), makes the browser send the page's requests here
as same-origin ones, which CORS never stops. Such requests carry the page's
domain in their Host header, where requests meant for this server carry
`localhost`, a 127.x.y.z address or `[::1]`. `LoopbackHostOnly` refuses the
others (400, in OpenAI's error shape) before any route runs.
"""

from __future__ import annotations

import ipaddress

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from folio.serve import protocol as P


def is_loopback_host(host: str) -> bool:
    """Whether a Host header names this machine: localhost, 127.0.0.0/8 or [::1], any port."""
    host = host.strip().lower()
    if host.startswith("["):  # [IPv6] or [IPv6]:port
        address, _, rest = host[1:].partition("]")
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return False
    else:
        address, _, port = host.partition(":")
        if port and not port.isdigit():
            return False
        if address.removesuffix(".") == "localhost":
            return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class LoopbackHostOnly:
    """ASGI middleware: a 400 for any request whose Host is not a loopback name or address."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            hosts = [v.decode("latin-1") for k, v in scope["headers"] if k == b"host"]
            if len(hosts) != 1 or not is_loopback_host(hosts[0]):
                shown = repr(hosts[0][:100]) if hosts else "missing"
                err = P.APIError(
                    400,
                    f"this server answers requests for localhost, 127.0.0.1 or [::1] only "
                    f"(the Host header is {shown}): it has no API key, so a web page that "
                    f"points another name at this machine must not reach it",
                    code="invalid_host",
                )
                await JSONResponse(err.body(), status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)
