"""Listening: sockets bound before the model loads, and uvicorn run with stated bounds.

`listen` resolves and binds the address first, so a bad --host or a busy port is one message at
once rather than a uvicorn log line after the model has loaded. `run` serves an app on those
sockets with uvicorn's h11 implementation (whatever else is installed), so the bounds below hold
on every machine: a request's head (request line and headers) must arrive within
`HEAD_TIMEOUT` seconds and fit in `MAX_REQUEST_HEAD_BYTES` (else 431), idle keep-alive
connections close after `KEEP_ALIVE_TIMEOUT`, and a request that comes while `MAX_CONNECTIONS`
connections are open is answered 503. The app itself caps the headers (guards.py).
"""

from __future__ import annotations

import errno
import socket

import h11
from uvicorn.protocols.http.h11_impl import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE, H11Protocol

from ..errors import InputError, ServeError

HEAD_TIMEOUT = 10.0  # seconds for a request's head, however slowly its bytes trickle in
MAX_REQUEST_HEAD_BYTES = 64 * 1024  # request line (a long ?q=) and headers, as buffered
KEEP_ALIVE_TIMEOUT = 5  # seconds an idle connection stays open after a response
MAX_CONNECTIONS = 100  # open at once; a request beyond them is answered 503


def listen(host: str, port: int) -> list[socket.socket]:
    """Sockets bound to every address `host` resolves to (not yet listening)."""
    try:
        addresses = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as error:
        raise InputError(
            f"--host {host}: no such address ({error.strerror}); give an IP address of this "
            "machine (127.0.0.1, 0.0.0.0 for every interface) or a name that resolves to one"
        ) from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(addresses):
            try:
                sockets.append(_bind(family, kind, proto, address))
            except OSError as error:
                if error.errno != errno.EADDRNOTAVAIL:  # as asyncio: that family is not enabled
                    raise _bind_error(error, host, port) from None
                unavailable = error
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    if not sockets:
        raise _bind_error(unavailable, host, port)
    return sockets


def _bind(family, kind, proto, address) -> socket.socket:
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:  # as asyncio does: "::" is IPv6 only, 0.0.0.0 is IPv4
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def _bind_error(error: OSError, host: str, port: int) -> Exception:
    if error.errno == errno.EADDRINUSE:
        return ServeError(
            f"port {port} on {host} is in use (another server?): stop it or give another --port"
        )
    if error.errno == errno.EADDRNOTAVAIL:
        return InputError(f"--host {host}: not an address of this machine ({error.strerror})")
    if error.errno == errno.EACCES:
        return ServeError(f"port {port}: permission denied; give a --port above 1023")
    return ServeError(f"cannot listen on {host} port {port}: {error.strerror or error}")


def run(app, sockets: list[socket.socket]) -> None:
    """Serve `app` on `sockets` until interrupted (Ctrl+C); uvicorn closes the sockets."""
    make_server(app).run(sockets=sockets)


def make_server(
    app,
    *,
    head_timeout: float = HEAD_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
    log_level: str = "warning",
):
    """A `uvicorn.Server` for `app` with the bounds above; `.run(sockets=...)` serves."""
    import uvicorn

    protocol = type("Protocol", (BoundedH11Protocol,), {"head_timeout": head_timeout})
    config = uvicorn.Config(
        app,
        http=protocol,
        ws="none",  # the app has no WebSocket routes
        h11_max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES,
        timeout_keep_alive=KEEP_ALIVE_TIMEOUT,
        limit_concurrency=max_connections,
        log_level=log_level,
    )
    return uvicorn.Server(config)


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's head (slowloris), and 431
    rather than 400 when a head outgrows h11's buffer."""

    head_timeout = HEAD_TIMEOUT

    def connection_made(self, transport) -> None:
        self._head_deadline = None
        super().connection_made(transport)
        self._follow_head()

    def connection_lost(self, exc) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        self._follow_head()

    def send_400_response(self, msg: str) -> None:
        limit = self.config.h11_max_incomplete_event_size or DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
        if len(self.conn.trailing_data[0]) <= limit:  # h11 refused the head for what it said
            return super().send_400_response(msg)
        body = f"the request line and headers are over {limit:,} bytes".encode()
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")]
        reason = b"Request Header Fields Too Large"
        for event in (
            h11.Response(status_code=431, headers=headers, reason=reason),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event))
        self.transport.close()

    def _follow_head(self) -> None:
        """A deadline runs while the connection waits for a request's head: from the moment it
        opens or finishes a request until the whole head is in (bytes arriving do not reset it)."""
        waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if waiting and self._head_deadline is None:
            self._head_deadline = self.loop.call_later(self.head_timeout, self._head_too_slow)
        elif not waiting:
            self._cancel_deadline()

    def _cancel_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def url_for(host: str, port: int) -> str:
    """The URL a browser on this machine opens for a server bound to `host`."""
    local = {"": "localhost", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{local}]:{port}/" if ":" in local else f"http://{local}:{port}/"
