"""What a request must be before the app sees it: headers of a bounded size, a Host we serve.

The Host allow-list is the defence against DNS rebinding: a web page the user visits can make
its own name resolve to 127.0.0.1 and then read this server's answers (photos, paths, captions)
as if they were its own, but the browser still sends the page's name in the Host header. Pure
ASGI, so it holds whatever server runs the app (uvicorn, TestClient, another).
"""

from __future__ import annotations

import socket
from collections.abc import Iterable

from starlette.responses import JSONResponse

MAX_HEADER_BYTES = 8 * 1024  # all names and values of a request's headers together
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARDS = frozenset({"", "0.0.0.0", "::"})


def allowed_hosts(bound_host: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """The names a server bound to `bound_host` answers: localhost's, the bound host itself,
    this machine's name when bound to every interface, and `extra` (--allowed-host)."""
    names = set(LOCAL_HOSTS) | {_normal(name) for name in extra}
    if bound_host in WILDCARDS:
        names |= {_normal(socket.gethostname()), _normal(socket.getfqdn())}
    else:
        names.add(_normal(bound_host))
    return frozenset(names - {""})


def host_of(header: str) -> str | None:
    """The host part of a Host header ("[::1]:8000" -> "::1"), lowercased; None if malformed."""
    value = header.strip()
    if value.startswith("["):
        host, bracket, port = value[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            return None
        port = port[1:]
    else:
        host, _, port = value.partition(":")
    if not host or (port and not port.isdigit()):
        return None
    return _normal(host)


class RequestGuard:
    """ASGI middleware: 431 when the headers are over `max_header_bytes`, 400 when the Host
    header names no allowed host; each with a JSON `detail` like the API's other errors."""

    def __init__(self, app, allowed: Iterable[str], max_header_bytes: int = MAX_HEADER_BYTES):
        self.app = app
        self.allowed = frozenset(_normal(name) for name in allowed)
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        status, detail = self._refusal(scope["headers"])
        if status is None:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008, "reason": detail})
        response = JSONResponse({"detail": detail}, status_code=status)
        await response(scope, receive, send)

    def _refusal(self, headers) -> tuple[int | None, str]:
        size = sum(len(name) + len(value) for name, value in headers)
        if size > self.max_header_bytes:
            return 431, (
                f"the request headers are {size:,} bytes; this server takes at most "
                f"{self.max_header_bytes:,} (names and values together)"
            )
        hosts = [value.decode("latin-1") for name, value in headers if name == b"host"]
        if not hosts:
            return 400, "the request has no Host header"
        for value in hosts:
            if host_of(value) not in self.allowed:
                return 400, (
                    f"this server does not answer requests for host {value[:100]!r}: use "
                    "http://localhost or a name it was started with (--allowed-host NAME)"
                )
        return None, ""


def _normal(name: str) -> str:
    name = name.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    return name[:-1] if name.endswith(".") else name
