"""The server's bounds on the tiny checkpoint: the Host allow-list (DNS rebinding) and the
header cap."""

import socket

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
