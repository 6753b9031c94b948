"""clip-retrieval's back-end routes (/knn-service, /metadata, /indices-list) over a real port, two
indexes on one model, called by clip-retrieval 2.45.0's own ClipClient (loaded by file path: the
package's __init__ imports torch and flask) and its built clip-front page, served from another
origin and driven in Chromium. Every similarity a client receives is the encoder's; every bad
request is a 4xx with a message."""

import base64
import functools
import http.server
import importlib.util
import io
import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import on_a_port, sample_engine
from PIL import Image

from e5v_search.config import DUPLICATE_COSINE
from e5v_search.engine import Engine
from e5v_search.serving.app import create_app
from e5v_search.serving.listener import listen
from e5v_search.testing import draw_shape

UPLOAD_LIMIT = 200_000
RED_CIRCLE = "A red circle on a pale background."


def clip_retrieval_folder() -> Path:
    found = importlib.util.find_spec("clip_retrieval")  # finds it without running its __init__
    assert found, "clip-retrieval is missing: make test installs it (pip install --no-deps)"
    return Path(found.submodule_search_locations[0])


def load_clip_client():
    path = clip_retrieval_folder() / "clip_client.py"
    spec = importlib.util.spec_from_file_location("clip_client", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    sockets = listen("127.0.0.1", 0)
    port = sockets[0].getsockname()[1]
    for sock in sockets:
        sock.close()
    return port


@pytest.fixture(scope="module")
def engines(tmp_path_factory, trained_dir):
    root = tmp_path_factory.mktemp("clip")
    first, corpus = sample_engine(root, trained_dir)
    photos = root / "copies-photos"
    photos.mkdir()
    original = draw_shape("red", "circle", "pale")
    original.save(photos / "circle.png")
    original.save(photos / "circle-again.jpg", quality=92)  # the same picture, re-encoded
    draw_shape("blue", "square", "grey").save(photos / "square.png")
    # one model for both, as `serve --index ix --index copies` has it
    second = Engine.open(root / "copies", create=True, encoder=first.encoder)
    second.ingest([photos], progress=False)
    yield first, second, corpus, photos
    second.close()
    first.close()


@pytest.fixture(scope="module")
def front_origin():
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def backend(engines, front_origin):
    """The app as `serve --index ix --index copies --cors-origin FRONT` makes it."""
    first, second, *_ = engines
    app = create_app(
        first, others=[second], max_upload_bytes=UPLOAD_LIMIT, cors_origins=[front_origin]
    )
    with on_a_port(app) as base:
        yield base


def knn(backend, **body):
    body = {"modality": "image", "num_images": 5, "indice_name": "ix", **body}
    return httpx.post(backend + "/knn-service", json=body, timeout=60)


def stored_similarity(engine, query_vector, item_id) -> float:
    return float(query_vector @ engine.vectors([item_id])[0])


def test_clip_client_finds_the_described_picture_first(engines, backend):
    first, _, corpus, _ = engines
    clip = load_clip_client()
    client = clip.ClipClient(url=backend + "/knn-service", indice_name="ix", num_images=6)
    results = client.query(text=RED_CIRCLE)
    assert Path(results[0]["path"]).name == "red-circle-pale.png"
    query = first.embed_texts([RED_CIRCLE])[0]
    for result in results:
        assert result["similarity"] == pytest.approx(
            stored_similarity(first, query, result["id"]), abs=1e-4
        )
        assert result["url"].startswith(backend + "/thumbs/")
        assert result["caption"] and result["modality"] == "image"
    thumbnail = httpx.get(results[0]["url"])
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    assert httpx.get(results[0]["original"]).content == Path(results[0]["path"]).read_bytes()

    texts = clip.ClipClient(
        url=backend + "/knn-service", indice_name="ix", modality=clip.Modality.TEXT, num_images=3
    ).query(text=RED_CIRCLE)
    assert texts[0]["caption"] == RED_CIRCLE and texts[0]["similarity"] > 0.99
    assert all("url" not in result for result in texts)


def test_clip_client_image_and_vector_queries_give_the_encoders_similarities(engines, backend):
    first, _, corpus, _ = engines
    clip = load_clip_client()
    path = corpus["images"] / "pale" / "green-square-pale.png"
    url = backend + "/knn-service"
    every = clip.ClipClient(url=url, indice_name="ix", deduplicate=False).query(image=str(path))
    assert len(every) == 40 and Path(every[0]["path"]) == path
    query = first.embed_images([path])[0]
    for result in every:
        assert result["similarity"] == pytest.approx(
            stored_similarity(first, query, result["id"]), abs=1e-4
        )
    # ClipClient's default deduplicates: no two results left are 0.94 cosine or closer
    once = clip.ClipClient(url=url, indice_name="ix").query(image=str(path))
    assert Path(once[0]["path"]) == path and len(once) < 40
    vectors = first.vectors([r["id"] for r in once])
    similar = vectors @ vectors.T - 2 * np.eye(len(once))
    assert similar.max() < DUPLICATE_COSINE

    vector = first.embed_texts(["a blue triangle"])[0]
    by_vector = clip.ClipClient(url=backend + "/knn-service", indice_name="ix").query(
        embedding_input=vector.tolist()
    )
    by_text = clip.ClipClient(url=backend + "/knn-service", indice_name="ix").query(
        text="a blue triangle"
    )
    assert [r["id"] for r in by_vector] == [r["id"] for r in by_text]


def test_two_indexes_one_model_and_copies_shown_once(engines, backend):
    _, second, _, photos = engines
    assert httpx.get(backend + "/indices-list").json() == ["ix", "copies"]
    every = knn(backend, indice_name="copies", text="a red circle", deduplicate=False).json()
    once = knn(backend, indice_name="copies", text="a red circle").json()
    assert sorted(Path(r["path"]).name for r in every) == [
        "circle-again.jpg",
        "circle.png",
        "square.png",
    ]
    assert [Path(r["path"]).name for r in once][1:] == ["square.png"]
    assert "circle" in Path(once[0]["path"]).name
    thumb = httpx.get(once[0]["url"])  # the second index's thumbnail, by ?index=copies
    assert "index=copies" in once[0]["url"] and thumb.status_code == 200
    assert httpx.get(once[0]["original"]).content == Path(once[0]["path"]).read_bytes()


def test_ids_past_num_images_come_without_metadata_which_metadata_gives(engines, backend):
    results = knn(backend, text=RED_CIRCLE, num_images=2, num_result_ids=8, deduplicate=False)
    results = results.json()
    assert len(results) == 8
    assert all("caption" in r for r in results[:2])
    assert all(set(r) == {"id", "similarity"} for r in results[2:])
    later = [r["id"] for r in results[2:]]
    reply = httpx.post(backend + "/metadata", json={"ids": [*later, 999_999], "indice_name": "ix"})
    assert [entry["id"] for entry in reply.json()] == later  # an unknown id is left out
    assert all(entry["metadata"]["url"].startswith(backend) for entry in reply.json())

    shown = knn(backend, text=RED_CIRCLE, num_images=1, include_image=True).json()
    thumbnail = Image.open(io.BytesIO(base64.b64decode(shown[0]["image"])))
    assert thumbnail.format == "JPEG" and max(thumbnail.size) <= 256


def test_a_body_of_any_content_type_is_json(backend):
    body = b'{"text": "a circle", "modality": "image", "num_images": 3, "deduplicate": false}'
    for headers in ({"content-type": "text/plain;charset=UTF-8"}, {}):
        reply = httpx.post(backend + "/knn-service", content=body, headers=headers)
        assert reply.status_code == 200 and len(reply.json()) == 3


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"indice_name": "laion5B", "text": "a"}, 404, "serves ix, copies"),
        ({"modality": "video", "text": "a"}, 400, "modality"),
        ({"modality": None, "text": "a"}, 400, "modality"),
        ({"num_images": 0, "text": "a"}, 400, "num_images"),
        ({"num_images": 10**6, "text": "a"}, 400, "num_images"),
        ({}, 400, "give text, image"),
        ({"image_url": "https://example.com/cat.jpg"}, 400, "--allow-remote-images"),
        ({"image": "not base64!"}, 400, "base64"),
        ({"image": base64.b64encode(b"hello").decode()}, 415, "not an image"),
        ({"image": base64.b64encode(b"x" * (UPLOAD_LIMIT + 10)).decode()}, 413, "over"),
        ({"embedding_input": [1.0, 2.0]}, 400, "embedding_input"),
        ({"embedding_input": ["a"]}, 400, "embedding_input"),
        ({"text": "   "}, 400, "empty"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_message(backend, body, status, words):
    reply = knn(backend, **body)
    assert reply.status_code == status, reply.text
    assert words in reply.json()["detail"]


@pytest.mark.parametrize(
    "route, content, words",
    [
        ("/knn-service", b"{not json", "not JSON"),
        ("/knn-service", b"[1, 2]", "JSON object"),
        ("/metadata", b'{"ids": "1"}', "ids"),
        ("/metadata", b'{"ids": [1], "indice_name": "nope"}', "no index named"),
    ],
)
def test_bodies_that_are_not_requests_get_a_400(backend, route, content, words):
    reply = httpx.post(backend + route, content=content)
    assert reply.status_code in (400, 404) and words in reply.json()["detail"]


@pytest.fixture(scope="module")
def clip_front(tmp_path_factory, front_origin, backend):
    """clip-front's built page, from the wheel, on its own origin (as the hosted one would be),
    its config.json naming this backend."""
    folder = tmp_path_factory.mktemp("front") / "build"
    shutil.copytree(clip_retrieval_folder().parent / "front" / "build", folder)
    (folder / "config.json").write_text(f'{{"defaultBackend": "{backend}", "defaultIndex": "ix"}}')

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    port = int(front_origin.rsplit(":", 1)[1])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield front_origin
    server.shutdown()


def test_clip_front_from_another_origin_shows_the_described_picture_first(
    clip_front, backend, browser_page
):
    page = browser_page
    said = []  # what the page logged, for the failure's message
    page.on("console", lambda message: said.append(message.text))
    page.on("requestfailed", lambda request: said.append(f"failed: {request.url}"))
    page.goto(f"{clip_front}/?back={backend}&index=ix")
    page.locator("#searchBar").fill(RED_CIRCLE)
    page.locator("#searchBar").press("Enter")
    first = page.locator(f"figure img[src^='{backend}/thumbs/']").first  # not its icons
    try:
        first.wait_for(timeout=60_000)
    except Exception as error:
        raise AssertionError(f"clip-front showed no image; it logged {said}") from error
    src = first.get_attribute("src")
    assert src.startswith(backend + "/thumbs/")
    item_id = int(src.split("/thumbs/")[1].split(".")[0])
    row = httpx.get(f"{backend}/api/items/{item_id}").json()
    assert Path(row["source"]).name == "red-circle-pale.png"
    assert page.evaluate(f"fetch('{src}').then(r => r.status)") == 200


def test_serve_takes_several_indexes_on_one_model_and_refuses_others(
    engines, trained_dir, tiny_dir, tmp_path
):
    import os
    import subprocess
    import sys

    first, second, *_ = engines
    env = dict(os.environ, E5V_MODEL=str(trained_dir), E5V_DEVICE="cpu")

    def serve(*indexes, port=None):
        args = [a for index in indexes for a in ("--index", str(index))]
        port = port or free_port()
        command = [sys.executable, "-m", "e5v_search.cli", "serve", *args, "--port", str(port)]
        return subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)

    port = free_port()
    process = serve(first.path, second.path, port=port)
    try:
        deadline = time.time() + 120
        while True:
            try:
                names = httpx.get(f"http://127.0.0.1:{port}/indices-list", timeout=2).json()
                break
            except httpx.TransportError:
                assert process.poll() is None and time.time() < deadline, process.stderr.read()
                time.sleep(0.2)
        assert names == ["ix", "copies"]
        found = knn(f"http://127.0.0.1:{port}", indice_name="copies", text="a blue square")
        assert Path(found.json()[0]["path"]).name == "square.png"
    finally:
        process.terminate()
        process.wait(10)

    with Engine.open(tmp_path / "other", model=str(tiny_dir), device="cpu", create=True) as other:
        other.ingest([engines[3] / "square.png"], progress=False)
    refused = serve(first.path, tmp_path / "other")
    _, said = refused.communicate(timeout=120)
    assert refused.returncode != 0 and "Traceback" not in said
    assert str(trained_dir) in said or "model" in said.lower()

    (tmp_path / "again").mkdir()
    shutil.copytree(second.path, tmp_path / "again" / "copies")
    twice = serve(second.path, tmp_path / "again" / "copies")
    _, said = twice.communicate(timeout=120)
    assert twice.returncode == 2 and "two indexes are named 'copies'" in said
