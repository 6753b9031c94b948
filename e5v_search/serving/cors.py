"""CORS for the read routes, opt-in: `serve --cors-origin ORIGIN` lets pages of that origin (a
hosted clip-front, a notebook, an app) call the API from a browser; no origin is allowed unless
named.

Only the routes that read are covered, by path, for the whole app (so routes added later under
these paths are covered too, and a route elsewhere, such as one that changed state, is not):
GET and POST, any request header, no credentials (the server has no cookies). A page of another
origin still gets its answers only as the browser's same-origin rule allows, and the Host
allow-list (guards.py) still holds for every request.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable

from starlette.middleware.cors import CORSMiddleware

from ..errors import InputError

READ_PATHS = frozenset(
    {"/api/search", "/api/info", "/api/recent", "/knn-service", "/metadata", "/indices-list"}
)
READ_PREFIXES = ("/v1/", "/api/search/", "/api/items/", "/thumbs/", "/files/")


def is_read_path(path: str) -> bool:
    return path in READ_PATHS or path.startswith(READ_PREFIXES)


def origin(value: str) -> str:
    """An origin as browsers send it ("https://front.example", "http://localhost:3000"), or
    "*" (every origin); InputError for anything else (a path, another scheme)."""
    text = value.strip().rstrip("/")
    if text == "*":
        return text
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path:
        raise InputError(
            f"{value!r} is not an origin: give a scheme and a host (and port) only, such as "
            "https://rom1504.github.io or http://localhost:3000"
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise InputError(f"{value!r} is not an origin: it has no query, fragment or user")
    return text.lower()


class ReadRoutesCORS:
    """ASGI middleware: Starlette's CORSMiddleware for the read paths, nothing elsewhere."""

    def __init__(self, app, origins: Iterable[str]):
        self.app = app
        self.cors = CORSMiddleware(
            app,
            allow_origins=[origin(value) for value in origins],
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
            max_age=600,
        )

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and is_read_path(scope["path"]):
            return await self.cors(scope, receive, send)
        return await self.app(scope, receive, send)
