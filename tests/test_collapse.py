"""collapse=true on the search routes, with the tiny model trained on shapes: copies of one
picture (testing.photo_copies) come back as one result with their ids, k groups where there
are k, and different pictures stay apart at DUPLICATE_COSINE."""

import pytest
from fastapi.testclient import TestClient

from e5v_search.config import DUPLICATE_COSINE
from e5v_search.engine import Engine
from e5v_search.serving.app import create_app
from e5v_search.testing import COPY_KINDS, make_sample_corpus, photo_copies

# A picture the trained tiny model tells apart from every other one at DUPLICATE_COSINE (it
# confuses circles and squares of one colour: docs/benchmarks.md)
PICTURE = "green-triangle-pale"
CAPTION = "A green triangle on a pale background."


@pytest.fixture(scope="module")
def served(tmp_path_factory, trained_dir):
    root = tmp_path_factory.mktemp("collapse")
    corpus = make_sample_corpus(root / "corpus")
    original = corpus["images"] / "pale" / f"{PICTURE}.png"
    photo_copies(original, corpus["images"] / "copies")
    engine = Engine.open(root / "ix", model=str(trained_dir), device="cpu", create=True)
    engine.ingest([corpus["images"], corpus["captions"]], progress=False)
    app = create_app(engine)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield client, engine, original
    app.state.worker.close()
    engine.close()


def _copies_of_picture(results):
    return [r for r in results if PICTURE in r["source"]]


def test_collapse_is_off_by_default_and_groups_copies_when_asked(served):
    client, _, _ = served
    params = {"q": CAPTION, "k": 10, "type": "image"}
    plain = client.get("/api/search", params=params).json()["results"]
    assert len(_copies_of_picture(plain)) == 1 + len(COPY_KINDS)  # all seven, one by one
    assert all(r["copies"] == [] for r in plain)
    collapsed = client.get("/api/search", params={**params, "collapse": "true"}).json()
    results = collapsed["results"]
    assert len(results) == 10  # k groups: candidates were fetched deeper than k
    shown = _copies_of_picture(results)
    assert len(shown) == 1 and results[0] is shown[0]
    copies = {r["id"] for r in plain if PICTURE in r["source"]} - {results[0]["id"]}
    assert set(results[0]["copies"]) == copies
    assert [r["id"] for r in plain[:1]] == [results[0]["id"]]  # the best-ranked one leads


def test_collapse_on_an_upload_and_on_more_like_this(served):
    client, engine, original = served
    body = client.post(
        "/api/search/image",
        files={"file": ("q.png", original.read_bytes())},
        data={"type": "image", "collapse": "true", "k": "5"},
    )
    assert body.status_code == 200, body.text
    top = body.json()["results"][0]
    assert top["source"] == str(original) and len(top["copies"]) == len(COPY_KINDS)
    like = client.get("/api/search", params={"like": top["id"], "k": 5, "collapse": "true"}).json()[
        "results"
    ]
    # the anchor itself is left out; its copies come first, as one result
    assert len(like) == 5 and len(like[0]["copies"]) == len(COPY_KINDS) - 1
    assert top["id"] not in [r["id"] for r in like]


def test_fewer_groups_than_k_when_the_index_has_no_more(served):
    client, engine, _ = served
    results = client.get(
        "/api/search", params={"q": CAPTION, "k": 1000, "type": "image", "collapse": "true"}
    ).json()["results"]
    groups = engine.collapse(engine.search(CAPTION, k=1000, modality="image"))
    assert [r["id"] for r in results] == [g[0].id for g in groups]
    assert len(results) + sum(len(r["copies"]) for r in results) == 54  # 48 + 6 copies


def test_the_threshold_puts_every_copy_and_nothing_else_with_its_original(served):
    _, engine, original = served
    results = engine.search(CAPTION, k=54, modality="image")
    groups = engine.collapse(results, DUPLICATE_COSINE)
    group = next(g for g in groups if any(r.source == str(original) for r in g))
    assert sorted(r.source.rsplit("/", 1)[1].split(".")[0] for r in group) == sorted(
        [PICTURE] + [f"{PICTURE}-{kind}" for kind in COPY_KINDS]
    )


def test_photo_copies_show_the_original_upright(tmp_path):
    import numpy as np
    from PIL import Image, ImageOps

    from e5v_search.testing import draw_shape

    original = tmp_path / "shape.png"
    draw_shape("red", "triangle", "grey").save(original)
    pixels = np.asarray(Image.open(original).convert("RGB"), dtype=np.float32)
    copies = photo_copies(original, tmp_path / "copies")
    assert list(copies) == list(COPY_KINDS) and all(path.is_file() for path in copies.values())
    for kind, path in copies.items():
        stored = Image.open(path)
        if kind.startswith("exif-rotated"):
            assert stored.size == (120, 160)  # stored on its side, the tag turns it back
        shown = ImageOps.exif_transpose(stored).convert("RGB").resize((160, 120))
        assert np.abs(np.asarray(shown, dtype=np.float32) - pixels).mean() < 8, kind
