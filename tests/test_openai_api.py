"""The OpenAI-compatible routes (/v1) over a real port, called by the real clients: the openai
SDK, LangChain's OpenAIEmbeddings and LlamaIndex's OpenAILikeEmbedding. Every vector a client
receives is the encoder's own; every bad request is a 4xx in OpenAI's error shape; CORS and
remote image fetching are off unless `serve` is told, as a real `e5v-search serve` shows."""

import base64
import http.server
import io
import os
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import openai
import pytest
from conftest import TEXTS, on_a_port, sample_engine
from fastapi.testclient import TestClient
from langchain_openai import OpenAIEmbeddings
from llama_index.embeddings.openai_like import OpenAILikeEmbedding
from openai.types import CreateEmbeddingResponse
from PIL import Image

from e5v_search.model import prompts
from e5v_search.serving.app import create_app
from e5v_search.serving.listener import listen

UPLOAD_LIMIT = 200_000
FRONT = "https://front.example"


@pytest.fixture(scope="module")
def engine(tmp_path_factory, tiny_dir):
    engine, corpus = sample_engine(tmp_path_factory.mktemp("openai"), tiny_dir)
    yield engine, corpus
    engine.close()


@pytest.fixture(scope="module")
def served(engine):
    """The app as `serve` makes it by default (no CORS origin, no remote images), on uvicorn
    in a thread with `serve`'s protocol, on a free port of 127.0.0.1."""
    app = create_app(engine[0], max_upload_bytes=UPLOAD_LIMIT)
    with on_a_port(app) as base:
        yield base, app


@pytest.fixture(scope="module")
def model(tiny_dir):
    return str(tiny_dir)


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served[0] + "/v1", api_key="x", max_retries=0)


def assert_same(received, expected):
    """Each received vector is the encoder's (cosine >= 0.9999), in order."""
    received = np.asarray(received, dtype=np.float32)
    assert received.shape == expected.shape
    cosines = (received * expected).sum(1) / np.linalg.norm(received, axis=1)
    assert cosines.min() >= 0.9999, cosines


def data_uri(data: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64," + base64.b64encode(data).decode()


def image_message(url: str | None = None, text: str | None = None) -> list[dict]:
    content = [{"type": "image_url", "image_url": {"url": url}}] if url else []
    content += [{"type": "text", "text": text}] if text is not None else []
    return user(content)


def user(content) -> list[dict]:
    return [{"role": "user", "content": content}]


def cors_origin(response: httpx.Response) -> str | None:
    return response.headers.get("access-control-allow-origin")


def text_tokens(encoder, texts) -> int:
    return sum(len(encoder.tokenizer(prompts.text_prompt(t)).input_ids) for t in texts)


@pytest.fixture(scope="module")
def picture(engine):
    return engine[1]["images"] / "grey" / "red-circle-grey.png"


# The clients


def test_the_sdk_embeds_texts_in_its_default_base64_and_in_float(client, encoder, model):
    expected = encoder.embed_texts(TEXTS)
    raw = client.embeddings.with_raw_response.create(input=TEXTS, model=model)
    assert b'"encoding_format":"base64"' in raw.http_request.content  # the SDK's default
    assert all(isinstance(d["embedding"], str) for d in raw.http_response.json()["data"])
    for response in (
        raw.parse(),
        client.embeddings.create(input=TEXTS, model=model, encoding_format="float"),
    ):
        assert [d.index for d in response.data] == list(range(len(TEXTS)))
        assert_same([d.embedding for d in response.data], expected)
        assert response.model == model and response.object == "list"
        assert response.usage.prompt_tokens == response.usage.total_tokens
        assert response.usage.prompt_tokens == text_tokens(encoder, TEXTS)
    one = client.embeddings.create(input="A dog sitting in the grass.", model=model)
    assert_same([one.data[0].embedding], expected[:1])
    full = client.embeddings.create(input="red", model=model, dimensions=encoder.dim)
    assert_same([full.data[0].embedding], expected[2:3])


def test_the_sdk_lists_and_retrieves_the_model(client, model):
    (card,) = client.models.list().data
    assert card.id == model and card.object == "model" and card.owned_by == "e5v-search"
    assert abs(card.created - time.time()) < 3600
    assert client.models.retrieve(model).id == model
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.models.retrieve("text-embedding-3-small")


def test_an_image_and_a_composed_query_as_vllm_takes_them(client, encoder, picture, model):
    url = data_uri(picture.read_bytes())

    def post(messages) -> CreateEmbeddingResponse:
        body = {"model": model, "encoding_format": "float", "messages": messages}
        return client.post("/embeddings", cast_to=CreateEmbeddingResponse, body=body)

    image = post(image_message(url))
    assert_same([image.data[0].embedding], encoder.embed_images([picture]))
    size = Image.open(picture).size[::-1]
    image_prompt = len(encoder.tokenizer(prompts.IMAGE_PROMPT).input_ids) - 1  # less <image>
    image_tokens = encoder.count_image_tokens([size])[0]
    assert image.usage.prompt_tokens == image_prompt + image_tokens
    composed = post(image_message(url, "make it blue"))
    assert_same([composed.data[0].embedding], encoder.embed_composed([picture], ["make it blue"]))
    composed_prompt = encoder.tokenizer(prompts.composed_prompt("make it blue")).input_ids
    assert composed.usage.prompt_tokens == len(composed_prompt) - 1 + image_tokens
    text = post([{"role": "user", "content": "A cat standing in the snow."}])
    assert_same([text.data[0].embedding], encoder.embed_texts(["A cat standing in the snow."]))
    parts = post(image_message(None, "A cat standing"))  # text parts alone: the text prompt
    assert_same([parts.data[0].embedding], encoder.embed_texts(["A cat standing"]))


def test_an_image_sent_sideways_is_embedded_upright(client, encoder, tmp_path, model):
    """The EXIF rule of files on disk: a phone photo tagged 'rotate 90' gets the same vector
    whether the encoder reads the file or a client sends its bytes."""
    photo = Image.new("RGB", (120, 60), (200, 40, 40))
    photo.paste((20, 20, 220), (0, 0, 40, 60))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "sideways.jpg"
    photo.save(path, format="JPEG", exif=exif, quality=95)
    body = {"model": model, "encoding_format": "float"}
    body["messages"] = image_message(data_uri(path.read_bytes(), "jpeg"))
    got = client.post("/embeddings", cast_to=CreateEmbeddingResponse, body=body)
    assert_same([got.data[0].embedding], encoder.embed_images([path]))
    stored = Image.fromarray(np.asarray(Image.open(path)))  # the pixels as stored, no tag
    with pytest.raises(AssertionError):  # so: sideways, another vector
        assert_same([got.data[0].embedding], encoder.embed_images([stored]))


def test_langchain_embeds_documents_and_queries(served, encoder, model):
    embeddings = OpenAIEmbeddings(
        base_url=served[0] + "/v1", api_key="x", model=model, check_embedding_ctx_length=False
    )
    assert_same(embeddings.embed_documents(TEXTS), encoder.embed_texts(TEXTS))
    assert_same([embeddings.embed_query("a red circle")], encoder.embed_texts(["a red circle"]))


def test_llamaindex_embeds_a_text_and_a_batch(served, encoder, model):
    embedding = OpenAILikeEmbedding(model_name=model, api_base=served[0] + "/v1", api_key="fake")
    assert_same(
        [embedding.get_text_embedding("a blue square")], encoder.embed_texts(["a blue square"])
    )
    texts = [f"A {c} shape on a grey background." for c in ("red", "green", "blue")] * 5
    assert_same(embedding.get_text_embedding_batch(texts), encoder.embed_texts(texts))


def test_a_full_batch_goes_through_the_model_thread_in_micro_batches(
    client, served, encoder, model
):
    """OpenAI's own limit, 2,048 texts, is accepted and embedded by the one model thread in
    batches (not one round trip a text); one more is a 400 that states the limit."""
    worker = served[1].state.worker
    texts = [f"a caption numbered {i}" for i in range(2048)]
    before = len(worker.batches)
    response = client.embeddings.create(input=texts, model=model, encoding_format="float")
    sample = [0, 1, 777, 2047]
    assert_same(
        [response.data[i].embedding for i in sample],
        encoder.embed_texts([texts[i] for i in sample]),
    )
    assert [d.index for d in response.data] == list(range(2048))
    batches = worker.batches[before:]
    assert sum(batches) == 2048 and max(batches) == worker.max_batch
    with pytest.raises(openai.BadRequestError, match="at most 2,048"):
        client.embeddings.create(input=texts + ["one more"], model=model)


# Bad requests: a 4xx in OpenAI's shape, the message in the SDK's exception


def test_the_sdk_raises_with_the_servers_message(client, model):
    with pytest.raises(openai.NotFoundError) as wrong:
        client.embeddings.create(input="x", model="text-embedding-ada-002")
    assert f"this server serves `{model}`" in str(wrong.value)
    assert wrong.value.code == "model_not_found" and wrong.value.param == "model"
    with pytest.raises(openai.BadRequestError, match="check_embedding_ctx_length=False"):
        client.embeddings.create(input=[[1820, 25, 3]], model=model)  # what LangChain sends
    with pytest.raises(openai.BadRequestError, match="not a Matryoshka model"):
        client.embeddings.create(input="x", model=model, dimensions=8)


def _png(size=(80, 60)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def bad_requests(model):
    big = _png() + b"0" * (UPLOAD_LIMIT + 1000)
    (image,) = image_message(data_uri(_png()))[0]["content"]
    return [
        ({"model": "nope", "input": "x"}, 404, "this server serves"),
        ({"model": model, "input": [1820, 25]}, 400, "check_embedding_ctx_length=False"),
        ({"model": model, "input": [[1820], [25]]}, 400, "check_embedding_ctx_length=False"),
        ({"model": model, "input": []}, 400, "empty list"),
        ({"model": model, "input": ""}, 400, "empty string"),
        ({"model": model, "input": ["a", ""]}, 400, "input[1]"),
        ({"model": model, "input": ["a", 1.5]}, 400, "input[1] is a float"),
        ({"model": model, "input": {"text": "a"}}, 400, "a string or a list of strings"),
        ({"model": model}, 400, "give input"),
        ({"model": model, "input": "x", "messages": image_message(None, "y")}, 400, "not both"),
        ({"model": model, "input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
        ({"model": model, "input": "x", "dimensions": 4096 * 8}, 400, "Matryoshka"),
        ({"model": model, "input": "x", "dimensions": "many"}, 400, "dimensions"),
        ({"messages": image_message("http://127.0.0.1:9/x.png")}, 400, "--allow-remote-images"),
        ({"messages": image_message("file:///etc/passwd")}, 400, "data: URI"),
        ({"messages": image_message("data:image/png;base64,@@@")}, 400, "not valid base64"),
        ({"messages": image_message("data:image/png;base64")}, 400, "no comma"),
        ({"messages": image_message(data_uri(b"hello"))}, 415, "not an image"),
        ({"messages": image_message(data_uri(_png()[:70]))}, 400, "cannot be decoded"),
        ({"messages": image_message(data_uri(big))}, 413, "over 200,000 bytes"),
        ({"messages": image_message(data_uri(_png())) * 2}, 400, "one user turn"),
        ({"messages": [{"role": "system", "content": "x"}]}, 400, "one user turn"),
        ({"messages": []}, 400, "one user turn"),
        ({"messages": user([])}, 400, "no text and no image"),
        ({"messages": image_message(None, "  ")}, 400, "no text and no image"),
        ({"messages": user([{"type": "input_audio"}])}, 400, "image_url parts"),
        ({"messages": user([{"type": "text"}])}, 400, "no text"),
        ({"messages": [{"role": "user"}]}, 400, "messages.0.content"),
        ({"messages": user([image] * 2)}, 400, "one image a query"),
    ]


def test_bad_requests_get_a_4xx_in_openais_shape(served, model):
    base, _ = served
    cases = [
        (f"{base}/v1/embeddings", "POST", {"json": body}, s, m)
        for body, s, m in bad_requests(model)
    ]
    cases += [
        (f"{base}/v1/embeddings", "POST", {"content": b"{"}, 400, "not valid JSON"),
        (f"{base}/v1/embeddings", "POST", {}, 400, "no body"),
        (f"{base}/v1/embeddings", "POST", {"json": ["x"]}, 400, "body"),
        (f"{base}/v1/embeddings", "GET", {}, 405, "POST /v1/embeddings"),
        (f"{base}/v1/chat/completions", "POST", {"json": {}}, 404, "no route"),
        (f"{base}/v1/models/nope", "GET", {}, 404, "does not exist"),
    ]
    for url, method, options, status, message in cases:
        headers = {"content-type": "application/json"}
        response = httpx.request(method, url, headers=headers, timeout=30, **options)
        assert response.status_code == status, (options, response.text)
        error = response.json()["error"]
        assert message in error["message"], (options, error)
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error"
    ok = httpx.post(f"{base}/v1/embeddings", json={"input": "x"}, timeout=30)  # model: optional
    assert ok.status_code == 200 and ok.json()["model"] == model
    assert httpx.get(f"{base}/api/health").status_code == 200  # still up


def test_a_body_over_the_limit_is_refused_before_it_is_read(engine):
    app = create_app(engine[0], max_upload_bytes=UPLOAD_LIMIT)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        body = {"input": ["x" * 1000] * 2000}  # 2 MB of JSON: over the 1.3 MB the limit allows
        response = client.post("/v1/embeddings", json=body)
        assert response.status_code == 413 and "request body" in response.json()["error"]["message"]
        assert client.app.state.worker.batches == []  # nothing reached the model
    app.state.worker.close()


# Off unless told: remote images (SSRF) and CORS


class _Images(http.server.BaseHTTPRequestHandler):
    files: dict = {}
    asked: list = []

    def do_GET(self):
        self.asked.append(self.path)
        data = self.files.get(self.path)
        time.sleep(2 if self.path == "/slow" else 0)
        self.send_response(302 if self.path == "/to-ftp" else 200 if data is not None else 404)
        self.send_header("Location", "ftp://127.0.0.1/etc/passwd")
        self.send_header("Content-Length", str(len(data or b"")))
        self.end_headers()
        try:
            self.wfile.write(data or b"")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server under test stopped reading: what the test wants

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def remote(picture):
    """An http server on 127.0.0.1 with a picture, a file over 1 MiB, and a log of requests."""
    _Images.files = {"/picture.png": picture.read_bytes(), "/big.png": _png() + b"0" * 2**21}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Images.asked
    server.shutdown()


def test_by_default_no_url_is_fetched_and_no_origin_gets_cors(served, remote, model):
    base, _ = served
    url, asked = remote
    response = httpx.post(
        f"{base}/v1/embeddings", json={"messages": image_message(url + "/picture.png")}
    )
    assert response.status_code == 400 and "--allow-remote-images" in response.text
    assert asked == []  # the server never tried
    preflight = {"Origin": FRONT, "Access-Control-Request-Method": "POST"}
    answer = httpx.options(f"{base}/v1/embeddings", headers=preflight)
    assert cors_origin(answer) is None
    assert cors_origin(httpx.get(f"{base}/v1/models", headers={"Origin": FRONT})) is None


@pytest.fixture(scope="module")
def flagged(engine, tiny_dir, tmp_path_factory):
    """A real `e5v-search serve` with --cors-origin, --allow-remote-images and a 1 MiB limit."""
    sockets = listen("127.0.0.1", 0)
    port = sockets[0].getsockname()[1]
    sockets[0].close()
    env = dict(os.environ, E5V_MODEL=str(tiny_dir), E5V_DEVICE="cpu")
    args = ["serve", "--index", engine[0].path, "--port", port, "--max-upload-mb", 1]
    args += ["--cors-origin", FRONT + "/", "--allow-remote-images"]  # the origin as written
    command = [sys.executable, "-m", "e5v_search.cli", *map(str, args)]
    log = tmp_path_factory.mktemp("flagged") / "stderr"
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            httpx.get(base + "/api/health", timeout=2)
            break
        except httpx.TransportError:
            if process.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"serve did not start: {log.read_text()}") from None
            time.sleep(0.2)
    yield base
    process.terminate()
    process.wait(10)


def test_serve_allow_remote_images_fetches_within_the_limit(
    flagged, remote, encoder, picture, model
):
    url, asked = remote
    client = openai.OpenAI(base_url=flagged + "/v1", api_key="x", max_retries=0)
    messages = image_message(url + "/picture.png", "make it blue")
    body = {"model": model, "encoding_format": "float", "messages": messages}
    got = client.post("/embeddings", cast_to=CreateEmbeddingResponse, body=body)
    assert_same([got.data[0].embedding], encoder.embed_composed([picture], ["make it blue"]))
    assert "/picture.png" in asked
    for path, status, message in [("/big.png", 413, "over 1 MiB"), ("/x", 400, "answered 404")]:
        response = httpx.post(
            flagged + "/v1/embeddings", json={"messages": image_message(url + path)}
        )
        assert response.status_code == status and message in response.json()["error"]["message"]


def test_a_remote_fetch_keeps_to_its_deadline_and_to_http(remote):
    from fastapi import HTTPException

    from e5v_search.serving.uploads import fetch

    with pytest.raises(HTTPException, match="timed out"):
        fetch(remote[0] + "/slow", UPLOAD_LIMIT, timeout=0.5)
    with pytest.raises(HTTPException, match="not http"):
        fetch(remote[0] + "/to-ftp", UPLOAD_LIMIT)


def test_serve_cors_origin_answers_that_origin_on_the_read_routes_only(flagged):
    def preflight(path, origin, method="POST"):
        headers = {
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os",
        }
        return httpx.options(flagged + path, headers=headers)

    allowed = preflight("/v1/embeddings", FRONT)
    assert allowed.status_code == 200 and cors_origin(allowed) == FRONT
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert "x-stainless-os" in allowed.headers["access-control-allow-headers"].lower()
    assert cors_origin(preflight("/v1/embeddings", "https://evil.example")) is None
    for path in ("/api/search", "/api/info", "/v1/models", "/thumbs/1.jpg", "/knn-service"):
        assert cors_origin(preflight(path, FRONT, "GET")) == FRONT, path
    for path in ("/docs", "/", "/api/searches"):  # not read routes of the API
        assert cors_origin(preflight(path, FRONT, "GET")) is None, path
    answer = httpx.post(flagged + "/v1/embeddings", json={"input": "x"}, headers={"Origin": FRONT})
    assert answer.status_code == 200 and cors_origin(answer) == FRONT
    search = httpx.get(flagged + "/api/search", params={"q": "x"}, headers={"Origin": FRONT})
    assert cors_origin(search) == FRONT
    foreign = httpx.get(flagged + "/api/info", headers={"Origin": FRONT, "Host": "evil.example"})
    assert foreign.status_code == 400  # the Host allow-list holds for CORS requests too


def test_serve_refuses_an_origin_that_is_not_one(tmp_path):
    from click.testing import CliRunner

    from e5v_search.cli import cli

    for value in ("https://front.example/app", "ftp://front.example", "front.example"):
        result = CliRunner().invoke(
            cli, ["serve", "--cors-origin", value, "--index", str(tmp_path / "x")]
        )
        assert result.exit_code == 2 and "is not an origin" in result.output, result.output
    assert not (tmp_path / "x").exists()
