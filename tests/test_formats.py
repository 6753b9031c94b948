"""The photos people have: HEIC/HEIF (the iPhone's default, through pillow-heif) and AVIF open
like any image: folders pick them up, they are found as themselves, thumbnailed and uploaded."""

import pytest
from fastapi.testclient import TestClient

from e5v_search.engine import Engine
from e5v_search.images import IMAGE_EXTENSIONS, load_image
from e5v_search.serving.app import create_app
from e5v_search.testing import draw_shape


def test_heic_and_avif_are_ingested_found_thumbnailed_and_uploaded(tmp_path, tiny_dir):
    assert {".heic", ".heif", ".avif"} <= set(IMAGE_EXTENSIONS)
    photos = tmp_path / "photos"
    photos.mkdir()
    draw_shape("red", "circle", "grey").save(photos / "iphone.HEIC", quality=90)
    draw_shape("blue", "square", "pale").save(photos / "web.avif", quality=90)
    draw_shape("green", "triangle", "grey").save(photos / "plain.png")
    assert load_image(photos / "iphone.HEIC").size == (160, 120)
    with Engine.open(tmp_path / "ix", model=str(tiny_dir), device="cpu", create=True) as engine:
        report = engine.ingest([photos], progress=False)
        assert (report.added, report.failed) == (3, 0)
        app = create_app(engine)
        with TestClient(app, base_url="http://127.0.0.1") as client:
            for name in ("iphone.HEIC", "web.avif"):
                path = photos / name
                top = engine.search(image=path, k=1, modality="image")[0]
                assert top.source == str(path) and top.score == pytest.approx(1.0, abs=1e-4)
                thumb = client.get(f"/thumbs/{top.id}.jpg", params={"size": 128})
                assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
                body = client.post(
                    "/api/search/image",
                    files={"file": (name, path.read_bytes())},
                    data={"type": "image", "k": "1"},
                )
                assert body.status_code == 200, body.text
                hit = body.json()["results"][0]
                assert hit["id"] == top.id and hit["score"] == pytest.approx(1.0, abs=1e-4)
        app.state.worker.close()
