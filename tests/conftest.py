import contextlib
import os
import sqlite3
import tempfile

import numpy as np
import pytest

# Tests never reach a model hub: a hub id must fail at once, not after network retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Named indexes go to a home of the tests' own (subprocesses inherit it), never the user's.
os.environ["E5V_INDEX_HOME"] = tempfile.mkdtemp(prefix="e5v-test-index-home-")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from e5v_search.testing import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-clean"))


@pytest.fixture(scope="session")
def legacy_dir(tmp_path_factory):
    from e5v_search.testing import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-legacy"), legacy=True)


@pytest.fixture(scope="session")
def real_geometry_dir(tmp_path_factory):
    from e5v_search.testing import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-real"), real_geometry=True)


@pytest.fixture(scope="session")
def trained_dir():
    """The tiny model trained on synthetic shapes (training.py): captions find their pictures.
    Trained into the user's cache on first use (12-43 minutes measured), shared with `make demo`."""
    from e5v_search.training import cached_trained_checkpoint

    return cached_trained_checkpoint()


@pytest.fixture(scope="session")
def encoder(tiny_dir):
    from e5v_search import E5VEncoder

    return E5VEncoder.from_pretrained(str(tiny_dir), device="cpu")


@pytest.fixture(scope="session")
def recipe_model(tiny_dir):
    """The model card's objects: the full ConditionalGeneration model and the processor."""
    from transformers import LlavaNextForConditionalGeneration, LlavaNextProcessor

    from e5v_search.model.anyres import use_e5v_pixels

    model = LlavaNextForConditionalGeneration.from_pretrained(str(tiny_dir)).eval()
    processor = LlavaNextProcessor.from_pretrained(str(tiny_dir), backend="pil")
    use_e5v_pixels(processor)  # the recipe and the encoder are fed the same pixels
    return model, processor


def sample_engine(root, model_dir):
    """An engine over the sample corpus (48 images, 48 captions) ingested with `model_dir`."""
    from e5v_search.engine import Engine
    from e5v_search.testing import make_sample_corpus

    corpus = make_sample_corpus(root / "corpus")
    engine = Engine.open(root / "ix", model=str(model_dir), device="cpu", create=True)
    engine.ingest([corpus["images"], corpus["captions"]], progress=False)
    return engine, corpus


@pytest.fixture(scope="session")
def shaped_images(tmp_path_factory):
    """Image files whose anyres tiling at the tiny geometry gives 3, 4 and 5 crops."""
    from PIL import Image, ImageDraw

    folder = tmp_path_factory.mktemp("images")
    sizes = [(120, 60), (60, 120), (170, 55), (55, 170), (100, 100), (90, 70), (640, 480)]
    paths = []
    for i, (w, h) in enumerate(sizes):
        image = Image.new("RGB", (w, h), (30 * i % 255, 90, 200 - 20 * i))
        ImageDraw.Draw(image).ellipse([w // 4, h // 4, 3 * w // 4, 3 * h // 4], fill=(250, i, 9))
        path = folder / f"img{i}_{w}x{h}.png"
        image.save(path)
        paths.append(path)
    return paths


TEXTS = [
    "A dog sitting in the grass.",
    "A cat standing in the snow.",
    "red",
    "Two people riding horses next to a river near a large forest under a blue sky.",
    "a",
]


@pytest.fixture
def texts():
    return list(TEXTS)


def catalog_snapshot(path):
    """Every stored item (all but time stamps) with its vector, and the recorded errors."""
    conn = sqlite3.connect(path / "catalog.sqlite")
    rows = conn.execute(
        "SELECT i.id, i.modality, i.source, i.locator, i.content_hash, i.width, i.height, "
        "i.metadata, v.vector FROM items i JOIN vectors v ON v.item_id = i.id ORDER BY i.id"
    ).fetchall()
    errors = conn.execute("SELECT source, locator, reason FROM errors ORDER BY source").fetchall()
    conn.close()
    return [(r[:8], np.frombuffer(r[8], dtype="<f4")) for r in rows], errors


def assert_same_catalog(a, b, tolerance=1e-5):
    (rows_a, errors_a), (rows_b, errors_b) = a, b
    assert [r for r, _ in rows_a] == [r for r, _ in rows_b]
    assert errors_a == errors_b
    pairs = zip(rows_a, rows_b, strict=True)
    assert max(np.abs(x - y).max() for (_, x), (_, y) in pairs) <= tolerance


CHROMIUM = os.environ.get("E5V_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def browser_page():
    """A page of headless Chromium (Debian's: Playwright cannot download a browser here),
    driven by Playwright; skipped where there is no Chromium (make test installs it)."""
    import shutil

    if not shutil.which(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (make test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser.new_page()
        browser.close()


@contextlib.contextmanager
def on_a_port(app):
    """`app` on uvicorn in a thread with `serve`'s protocol, on a free port of 127.0.0.1: its
    base URL; the server stopped and the model thread closed after."""
    import threading
    import time

    from e5v_search.serving.listener import listen, make_server

    sockets = listen("127.0.0.1", 0)
    server = make_server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": sockets}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        app.state.worker.close()
