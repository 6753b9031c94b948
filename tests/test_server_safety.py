"""The server's bounds on the tiny checkpoint: the Host allow-list (DNS rebinding), the header
cap, slow clients and the connection limit, and `serve` failing in one line on a bad --host or
a busy port. Over the wire against a real `e5v-search serve` process where the server matters."""

import os
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from conftest import sample_engine
from fastapi.testclient import TestClient

from e5v_search.serving.app import create_app

FOREIGN = ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.evil.example"]
MALFORMED = ["::1", "[::1", "[::1]x", "localhost:http", ":8000", "localhost@evil.example", ""]


@pytest.fixture(scope="module")
def engine(tmp_path_factory, tiny_dir):
    engine, _ = sample_engine(tmp_path_factory.mktemp("safety"), tiny_dir)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def client(engine):
    """The app as `serve` makes it by default: localhost's names only."""
    app = create_app(engine)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield client
    app.state.worker.close()


@pytest.mark.parametrize("url", ["/api/search?q=a+dog", "/api/info", "/files/1"])
def test_a_foreign_host_is_refused_with_a_message(client, url):
    assert client.get(url).status_code == 200  # the same request, addressed to 127.0.0.1
    response = client.get(url, headers={"Host": "evil.example"})
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "evil.example" in detail and "--allowed-host" in detail
    assert "results" not in response.text and "source" not in response.text


@pytest.mark.parametrize("host", FOREIGN + MALFORMED)
def test_look_alike_and_malformed_hosts_are_refused(client, host):
    assert client.get("/api/info", headers={"Host": host}).status_code == 400, host


def test_the_bound_host_and_allowed_names_are_answered(engine):
    from e5v_search.serving.guards import allowed_hosts

    app = create_app(engine, allowed_hosts=allowed_hosts("192.168.7.7", ["Photos.LAN"]))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        answered = ["localhost", "LocalHost:8000", "127.0.0.1:8000", "[::1]:8000", "[::1]"]
        answered += ["localhost.", "192.168.7.7:8000", "photos.lan", "PHOTOS.lan.:8000"]
        for host in answered:
            assert client.get("/api/info", headers={"Host": host}).status_code == 200, host
        for host in ["evil.example", "192.168.7.8", "0.0.0.0", "photos.lan.evil.example"]:
            assert client.get("/api/info", headers={"Host": host}).status_code == 400, host
    app.state.worker.close()


def test_a_wildcard_binding_answers_this_machine_names_too():
    from e5v_search.serving.guards import allowed_hosts, host_of

    every = allowed_hosts("0.0.0.0")
    assert {"localhost", "127.0.0.1", "::1", socket.gethostname().lower()} <= every
    assert socket.getfqdn().lower() in every and "0.0.0.0" not in every
    assert "x.lan" in allowed_hosts("::", ["X.lan"]) and "::" not in allowed_hosts("::")
    assert allowed_hosts("10.1.2.3") == {"localhost", "127.0.0.1", "::1", "10.1.2.3"}
    parsed = [host_of(h) for h in ["[::1]:80", "A.b:1", "a.b.", "[::1]x", "a:b", ""]]
    assert parsed == ["::1", "a.b", "a.b", None, None, None]


def test_headers_over_8_kib_get_431(client):
    big = client.get("/api/info", headers={"X-Big": "a" * 40_000})
    assert big.status_code == 431 and "8,192" in big.json()["detail"]
    many = client.get("/api/info", headers={f"X-Part-{i}": "b" * 500 for i in range(20)})
    assert many.status_code == 431
    assert client.get("/api/info", headers={"X-Fits": "c" * 7_000}).status_code == 200


# A real `e5v-search serve` process


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _serve(*args, env):
    command = [sys.executable, "-m", "e5v_search.cli", "serve", *map(str, args)]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    return subprocess.Popen(command, env=env, text=True, **pipes)


@pytest.fixture(scope="module")
def env(tiny_dir):
    return dict(os.environ, E5V_MODEL=str(tiny_dir), E5V_DEVICE="cpu")


@pytest.fixture(scope="module")
def server(engine, env):
    port = _free_port()
    args = ["--index", engine.path, "--port", port, "--allowed-host", "photos.lan"]
    process = _serve(*args, "--allowed-host", "albums.lan", env=env)
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2):
                break
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"serve did not start: {process.communicate()}") from None
            time.sleep(0.2)
    yield port
    process.terminate()
    process.wait(10)


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _status(sock: socket.socket) -> int:
    reply = b""
    while b"\r\n" not in reply:
        chunk = sock.recv(4096)
        if not chunk:
            break
        reply += chunk
    return int(reply.split(b" ", 2)[1]) if reply else 0


def _ask(port: int, head: bytes, pieces: int = 1) -> int:
    """The status the server answers a request `head`, sent in `pieces` a moment apart (no more
    once it has answered: it closes the connection after a refusal)."""
    with _connect(port) as sock:
        size = -(-len(head) // pieces)
        for start in range(0, len(head), size):
            if select.select([sock], [], [], 0.05 if start else 0)[0]:
                break
            sock.sendall(head[start : start + size])
        return _status(sock)


def _get(path: str, host: str, extra: bytes = b"") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n".encode() + extra + b"\r\n"


def test_over_the_wire_hosts_and_header_sizes(server):
    port = server
    assert _ask(server, _get("/api/info", f"127.0.0.1:{port}")) == 200
    assert _ask(server, _get("/api/info", f"localhost:{port}")) == 200
    for name in ("photos.lan", "albums.lan"):  # --allowed-host, twice
        assert _ask(server, _get("/api/info", f"{name}:{port}")) == 200
    assert _ask(server, _get("/api/search?q=x", f"evil.example:{port}")) == 400
    assert _ask(server, _get("/files/1", "evil.example")) == 400
    big = b"X-Big: " + b"a" * 40_000 + b"\r\n"
    assert _ask(server, _get("/api/info", "localhost", big)) == 431  # all at once: the app
    huge = b"X-Huge: " + b"a" * 100_000 + b"\r\n"
    assert _ask(server, _get("/api/info", "localhost", huge), pieces=20) == 431  # the protocol
    assert _ask(server, _get("/api/info", "localhost")) == 200  # still up


def test_a_slow_client_does_not_hold_up_others(server):
    """Slowloris: one client sends its request head a byte at a time; others are answered."""
    head = _get("/api/info", "localhost", b"X-Slow: " + b"s" * 40 + b"\r\n")
    slow = _connect(server)
    took = []
    try:
        for i, byte in enumerate(head[:-4]):  # never the blank line that ends the head
            slow.sendall(bytes([byte]))
            time.sleep(0.02)
            if i % 10 == 0:
                started = time.perf_counter()
                assert _ask(server, _get(f"/api/search?q=slow+{i}", "localhost")) == 200
                took.append(time.perf_counter() - started)
    finally:
        slow.close()
    assert len(took) >= 5 and max(took) < 2, took


@pytest.fixture(scope="module")
def bounded(engine):
    """The app on uvicorn in a thread with `serve`'s protocol, a 1 s head deadline and room
    for 4 connections, so the bounds show in a second rather than ten."""
    from e5v_search.serving.listener import listen, make_server

    app = create_app(engine)
    sockets = listen("127.0.0.1", 0)
    server = make_server(app, head_timeout=1.0, max_connections=4)
    thread = threading.Thread(target=server.run, kwargs={"sockets": sockets}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield sockets[0].getsockname()[1]
    server.should_exit = True
    thread.join(10)
    app.state.worker.close()


def _seconds_until_closed(sock: socket.socket, trickle: bytes = b"", limit: float = 5) -> float:
    """How long the server keeps `sock` open while `trickle` goes out a byte every 0.1 s."""
    started, sent = time.perf_counter(), 0
    sock.settimeout(0.1)
    while time.perf_counter() - started < limit:
        try:
            if sent < len(trickle):
                sock.sendall(trickle[sent : sent + 1])
                sent += 1
            if sock.recv(1024) == b"":
                break
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            break
    return time.perf_counter() - started


def test_a_head_that_trickles_in_is_cut_at_the_deadline(bounded):
    head = _get("/api/info", "localhost", b"X-Slow: " + b"s" * 200 + b"\r\n")
    with _connect(bounded) as slow:
        assert 0.9 < _seconds_until_closed(slow, head) < 2.5
    with _connect(bounded) as idle:  # nothing sent at all
        assert 0.9 < _seconds_until_closed(idle) < 2.5
    with _connect(bounded) as kept:  # a request answered, then a trickle on the same connection
        kept.sendall(_get("/api/info", "localhost"))
        assert _status(kept) == 200
        assert _seconds_until_closed(kept, head) < 2.5


def test_requests_beyond_the_connection_limit_get_503(bounded):
    idle = [_connect(bounded) for _ in range(4)]
    try:
        time.sleep(0.2)
        assert _ask(bounded, _get("/api/health", "localhost")) == 503
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.2)
    assert _ask(bounded, _get("/api/health", "localhost")) == 200


# `serve` refusing at once, in one line


def _error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr and "ERROR:" not in stderr, stderr  # no uvicorn log line
    return [line for line in stderr.splitlines() if line.startswith("Error:")]


def test_serve_on_a_host_that_does_not_resolve_says_so_in_one_line(tmp_path, env):
    process = _serve("--host", "no-such-host.invalid", "--index", tmp_path / "none", env=env)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2, err
    (line,) = _error_lines(err)
    assert "--host no-such-host.invalid" in line and "IP address" in line
    assert not (tmp_path / "none").exists()  # refused before the index or the model


def test_serve_on_a_busy_port_says_so_in_one_line(engine, env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = _serve("--port", port, "--index", engine.path, env=env)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 1, err
    assert err.splitlines() == [
        f"Error: port {port} on 127.0.0.1 is in use (another server?): stop it or give "
        "another --port"
    ]
