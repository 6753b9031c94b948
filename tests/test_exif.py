"""One EXIF rule: a phone photo (Orientation=6) gets one vector whether it is read from disk,
passed as a PIL image, or uploaded to the server."""

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from e5v_search.engine import Engine
from e5v_search.images import image_size, load_image
from e5v_search.model.samples import pattern_image
from e5v_search.serving.app import create_app
from e5v_search.testing import make_sample_images

ROTATE_90_CW = 6  # what a phone held upright writes


@pytest.fixture(scope="module")
def rotated(tmp_path_factory, tiny_dir):
    folder = tmp_path_factory.mktemp("exif")
    make_sample_images(folder)
    exif = Image.Exif()
    exif[0x0112] = ROTATE_90_CW
    path = folder / "phone.jpg"
    pattern_image(150, 80).save(path, exif=exif, quality=95)
    index = tmp_path_factory.mktemp("exif-index") / "ix"  # never inside its own source
    engine = Engine.open(index, model=str(tiny_dir), device="cpu", create=True)
    engine.ingest([folder], progress=False)
    yield engine, path
    engine.close()


def test_the_orientation_is_applied_to_files_and_pil_images_alike(rotated):
    _, path = rotated
    assert image_size(path) == image_size(Image.open(path)) == (150, 80)  # (height, width)
    from_file, from_pil = load_image(path), load_image(Image.open(path))
    assert from_file.size == from_pil.size == (80, 150)
    assert np.array_equal(np.asarray(from_file), np.asarray(from_pil))
    # Applying the rule twice turns nothing further: the tag is gone from an upright image.
    assert np.array_equal(np.asarray(load_image(from_pil)), np.asarray(from_file))


def test_a_rotated_jpeg_finds_itself_from_disk_pil_and_upload(rotated):
    engine, path = rotated
    stored = engine.search(image=path, k=1, modality="image")[0]
    assert stored.source == str(path) and stored.score == pytest.approx(1.0, abs=1e-4)
    as_pil = engine.search(image=Image.open(path), k=1, modality="image")[0]
    assert as_pil.id == stored.id and as_pil.score == pytest.approx(1.0, abs=1e-4)
    app = create_app(engine)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        response = client.post(
            "/api/search/image",
            files={"file": ("phone.jpg", path.read_bytes())},
            data={"type": "image", "k": "1"},
        )
    app.state.worker.close()
    assert response.status_code == 200, response.text
    top = response.json()["results"][0]
    assert top["id"] == stored.id and top["score"] == pytest.approx(1.0, abs=1e-4)


def test_the_orientation_matters_to_the_vector(rotated):
    """Without the rule the same photo would be another point: the test above can fail."""
    engine, path = rotated
    raw = Image.open(path)
    raw.load()
    sideways = Image.frombytes("RGB", raw.size, raw.convert("RGB").tobytes())  # no EXIF
    upright, unturned = engine.encoder.embed_images([path, sideways], workers=0)
    assert float(upright @ unturned) < 0.999


def test_an_upload_keeps_its_orientation_through_a_png_re_encode(rotated):
    engine, path = rotated
    buffer = io.BytesIO()
    load_image(path).save(buffer, format="PNG")  # upright pixels, no tag: left as they are
    vector = engine.encoder.embed_images([Image.open(io.BytesIO(buffer.getvalue()))])[0]
    assert float(vector @ engine.encoder.embed_images([path])[0]) == pytest.approx(1, abs=1e-5)
