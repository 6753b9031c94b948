"""The HTTP API with the real encoder on the tiny checkpoint: search, thumbnails, safety, bursts."""

import io
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import sample_engine
from fastapi.testclient import TestClient
from PIL import Image

from e5v_search.config import DUPLICATE_COSINE
from e5v_search.serving.app import create_app


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_dir):
    engine, corpus = sample_engine(tmp_path_factory.mktemp("served"), tiny_dir)
    app = create_app(engine, max_upload_bytes=200_000)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield client, engine, corpus
    app.state.worker.close()
    engine.close()


def _png(size=(80, 60), color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_search_by_text_finds_its_own_caption_first(served):
    client, _, _ = served
    body = client.get(
        "/api/search", params={"q": "A red circle on a grey background.", "type": "text", "k": 3}
    ).json()
    top = body["results"][0]
    assert top["text"] == "A red circle on a grey background." and top["score"] == pytest.approx(
        1, abs=1e-4
    )
    assert len(body["results"]) == 3 and body["took_ms"] >= 0
    images = client.get("/api/search", params={"q": "a dog", "k": 5}).json()["results"]
    assert {r["modality"] for r in images} == {"image"}
    assert all(r["thumbnail"] == f"/thumbs/{r['id']}.jpg" for r in images)
    greens = client.get(
        "/api/search", params={"q": "x", "type": "text", "meta": "color=green", "k": 50}
    )
    assert {r["metadata"]["color"] for r in greens.json()["results"]} == {"green"}


def test_search_by_upload_composed_and_like(served):
    client, _, corpus = served
    stored = (corpus["images"] / "grey" / "red-circle-grey.png").read_bytes()
    body = client.post(
        "/api/search/image", files={"file": ("q.png", stored)}, data={"type": "image"}
    )
    assert body.status_code == 200, body.text
    top = body.json()["results"][0]
    assert top["source"].endswith("red-circle-grey.png") and top["score"] == pytest.approx(
        1, abs=1e-4
    )
    composed = client.post(
        "/api/search/image",
        files={"file": ("q.png", stored)},
        data={"text": "make it blue", "type": "image"},
    ).json()["results"]
    assert composed[0]["score"] < 0.9999  # the text moved the query off the image itself
    like = client.get("/api/search", params={"like": top["id"], "k": 4}).json()["results"]
    assert len(like) == 4 and top["id"] not in [r["id"] for r in like]
    assert {r["modality"] for r in like} == {"image"}


def test_items_info_health_and_openapi(served):
    client, engine, _ = served
    item = client.get("/api/items/1").json()
    assert item["id"] == 1 and "metadata" in item and "vector" not in item
    assert client.get("/api/info").json()["counts"] == {"image": 48, "text": 48}
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["device"] == "cpu"
    paths = client.get("/openapi.json").json()["paths"]
    assert {
        "/api/search",
        "/api/search/image",
        "/api/items/{item_id}",
        "/api/info",
        "/api/health",
    } <= set(paths)
    page = client.get("/")
    assert page.status_code == 200 and 'id="q"' in page.text
    assert client.get("/static/app.js").status_code == 200


def test_thumbnails_are_small_and_cached(served):
    client, engine, _ = served
    image_id = int(engine.store.catalog.ids("image")[0])
    first = client.get(f"/thumbs/{image_id}.jpg", params={"size": 128})
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(first.content))
    assert max(thumb.size) <= 128
    cached = list((engine.store.path / "thumbnails").glob(f"{image_id}-128-*.jpg"))
    assert len(cached) == 1
    assert client.get(f"/thumbs/{image_id}.jpg", params={"size": 128}).content == first.content
    assert client.get(f"/thumbs/{image_id}.jpg", params={"size": 999}).status_code == 400
    text_id = int(engine.store.catalog.ids("text")[0])
    assert client.get(f"/thumbs/{text_id}.jpg").status_code == 404


@pytest.mark.parametrize(
    "url",
    [
        "/thumbs/..%2F..%2Fetc%2Fpasswd.jpg",
        "/thumbs/../../etc/passwd",
        "/files/..%2F..%2Fetc%2Fpasswd",
        "/files/999999",
        "/files/-1",
        "/static/..%2F..%2F..%2Fetc%2Fpasswd",
        "/static/../app.py",
        "/api/items/abc",
    ],
)
def test_path_traversal_is_refused(served, url):
    client, _, _ = served
    response = client.get(url)
    assert response.status_code in (400, 404, 422)
    assert b"root:" not in response.content and b"def create_app" not in response.content


def test_bad_requests_get_a_4xx_and_a_message(served):
    client, _, _ = served

    def upload(name, data):
        return client.post("/api/search/image", files={"file": (name, data)})

    cases = [
        (client.get("/api/search"), 400, "exactly one of q"),
        (client.get("/api/search", params={"q": "  "}), 400, "empty"),
        (client.get("/api/search", params={"q": "x", "k": 0}), 422, ""),
        (client.get("/api/search", params={"q": "x", "type": "video"}), 422, ""),
        (client.get("/api/search", params={"q": "x", "meta": "novalue"}), 400, "KEY=VALUE"),
        (client.get("/api/search", params={"like": 10**9}), 404, "no item"),
        (upload("a.png", b"not an image"), 415, "not an image"),
        (upload("a.png", b""), 400, "empty"),
        (upload("big.png", _png() + b"0" * 300_000), 413, "over"),
        (upload("cut.png", _png()[:70]), 400, "cannot be decoded"),
    ]
    for response, status, message in cases:
        assert response.status_code == status, (response.request.url, response.text)
        assert message in response.json()["detail"] if message else True
    assert client.get("/api/health").status_code == 200  # still up


def test_a_burst_of_concurrent_requests_is_answered_correctly_then_from_the_cache(served):
    client, engine, _ = served
    texts = [r for r in engine.items(range(1, 200)) if r["modality"] == "text"]
    captions = [r["text"] for r in texts][:24]

    def ask(text):
        return client.get("/api/search", params={"q": text, "type": "text", "k": 1}).json()

    worker = client.app.state.worker
    for burst in range(2):
        before = len(worker.batches)
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(ask, captions))
        for text, body in zip(captions, answers, strict=True):
            assert body["results"][0]["text"] == text
        if burst == 1:  # every text of the second burst is in the cache: the model never ran
            assert worker.batches[before:] == []


def test_the_model_worker_batches_waiting_texts_and_caches_repeats():
    """One thread owns the model: texts queued while it is busy go in one batch."""
    import threading
    import time

    import numpy as np

    from e5v_search.serving.worker import ModelWorker

    gate, calls = threading.Event(), []

    class SlowEncoder:  # a stand-in below the encoder: only the call pattern matters here
        def embed_counted(self, texts, progress=False):
            calls.append(list(texts))
            gate.wait(10)
            return np.stack([np.full(4, len(t), dtype=np.float32) for t in texts]), [1] * len(texts)

    worker = ModelWorker(SlowEncoder(), max_batch=8)
    with ThreadPoolExecutor(6) as pool:
        first = pool.submit(worker.embed_text, "first")
        while not calls:
            time.sleep(0.001)
        rest = [pool.submit(worker.embed_text, "x" * n) for n in range(1, 6)]
        while worker._jobs.qsize() < 5:
            time.sleep(0.001)
        gate.set()
        assert first.result()[0] == 5 and [f.result()[0] for f in rest] == [1, 2, 3, 4, 5]
    assert [len(c) for c in calls] == [1, 5] and worker.batches == [1, 5]
    worker.embed_text("xx")
    assert len(calls) == 2  # from the cache
    worker.close()


def test_the_servers_own_state_is_a_503_and_the_requests_fault_a_400(served):
    """A damaged index is the server's state, not the request's: 503 with what mends it."""
    from e5v_search.errors import (
        E5VSearchError,
        IndexBusyError,
        IndexDamagedError,
        InputError,
        ModelLoadError,
    )
    from e5v_search.serving.app import status_of

    assert status_of(InputError("x")) == 400
    assert status_of(IndexDamagedError("x")) == status_of(IndexBusyError("x")) == 503
    assert status_of(ModelLoadError("x")) == 503 and status_of(E5VSearchError("x")) == 500
    client, engine, _ = served
    engine.store.damaged["image"] = "image.s9.faiss is damaged: `e5v-search rebuild` mends it"
    try:
        answer = client.get("/api/search", params={"q": "a dog", "type": "image"})
    finally:
        del engine.store.damaged["image"]
    assert answer.status_code == 503 and "e5v-search rebuild" in answer.json()["detail"]
    assert client.get("/api/search", params={"q": " "}).status_code == 400


def test_bad_collapse_values_and_unknown_fields(served):
    client, _, corpus = served
    bad = client.get("/api/search", params={"q": "x", "collapse": "sometimes"})
    assert bad.status_code == 422 and "collapse" in bad.text
    # What the page sends with a photo: a threshold and collapse with the vector mode; a
    # hybrid search needs words, so a photo alone is a 400 that says so
    picture = (corpus["images"] / "grey" / "red-circle-grey.png").read_bytes()
    files = {"file": ("q.png", picture)}
    body = client.post("/api/search/image", files=files, data={"min_score": "0.3", "collapse": "1"})
    assert body.status_code == 200 and "cut" in body.json()
    hybrid = client.post("/api/search/image", files=files, data={"mode": "hybrid"})
    assert hybrid.status_code == 400 and "text" in hybrid.json()["detail"]
    assert client.get("/api/search", params={"q": "x", "mode": "hybrid"}).status_code == 200


def test_recent_items_favicon_and_local_docs(served):
    client, _, _ = served
    recent = client.get("/api/recent", params={"k": 3}).json()["items"]
    assert len(recent) == 3 and recent[0]["id"] > recent[1]["id"] > recent[2]["id"]
    assert all(r["modality"] == "image" and r["thumbnail"] for r in recent)
    texts = client.get("/api/recent", params={"type": "text"}).json()["items"]
    assert len(texts) == 12 and all(r["modality"] == "text" for r in texts)
    assert client.get("/api/recent", params={"k": 0}).status_code == 422
    assert client.get("/api/recent", params={"type": "video"}).status_code == 422
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    docs = client.get("/docs").text
    assert "/docs-assets/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    assert client.get("/redoc").status_code == 404
    schema = client.get("/openapi.json").json()
    names = [p["name"] for p in schema["paths"]["/api/search"]["get"]["parameters"]]
    assert "collapse" in names and "/api/recent" in schema["paths"]


def test_collapse_answers_k_groups_each_with_its_copies(served):
    client, engine, _ = served
    params = {"q": "a dog", "k": 5, "type": "any"}
    body = client.get("/api/search", params={**params, "collapse": "true"}).json()["results"]
    assert len(body) == 5
    shown = [r["id"] for r in body] + [c for r in body for c in r["copies"]]
    assert len(shown) == len(set(shown))  # an item is shown, or under one result, once
    for result in body:  # each copy is near-identical to its result
        if result["copies"]:
            vectors = engine.vectors([result["id"], *result["copies"]])
            assert min(vectors[1:] @ vectors[0]) >= DUPLICATE_COSINE
    assert all(
        r["copies"] == [] for r in client.get("/api/search", params=params).json()["results"]
    )
