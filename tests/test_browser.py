"""The search page in a real browser: headless Chromium (Debian's) driven by Playwright."""

import os
import shutil
import socket
import threading
import time

import pytest
from conftest import sample_engine

from e5v_search.serving.app import create_app

CHROMIUM = os.environ.get("E5V_CHROMIUM", "/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not shutil.which(CHROMIUM), reason=f"no Chromium at {CHROMIUM} (make test installs it)"
)


@pytest.fixture(scope="module")
def server_url(tmp_path_factory, trained_dir):
    import uvicorn

    engine, corpus = sample_engine(tmp_path_factory.mktemp("browser"), trained_dir)
    app = create_app(engine)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", corpus
    server.should_exit = True
    thread.join(10)
    app.state.worker.close()
    engine.close()


@pytest.fixture(scope="module")
def page(server_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page()
        yield page
        browser.close()


def test_typing_a_query_shows_thumbnails_and_a_click_finds_more_like_it(page, server_url, tmp_path):
    url, _ = server_url
    page.goto(url)
    page.fill("#q", "A red circle on a grey background.")
    page.press("#q", "Enter")
    page.wait_for_selector(".card.image img")
    page.wait_for_function(
        "[...document.querySelectorAll('.card.image img')].slice(0, 4)"
        ".every(img => img.complete && img.naturalWidth > 0)"
    )
    assert page.locator(".card.image").count() == 24
    assert "results for" in page.inner_text("#status")
    # The trained model: the caption's own picture comes first.
    assert page.locator(".card.image img >> nth=0").get_attribute("alt") == "red-circle-grey.png"
    page.screenshot(path=str(tmp_path / "page.png"))

    page.check('input[name="type"][value="text"]')
    page.press("#q", "Enter")
    page.wait_for_function("document.querySelector('.card.text .text') !== null")
    assert page.inner_text(".card.text .text >> nth=0") == "A red circle on a grey background."
    page.click(".card.text >> nth=0")
    page.wait_for_function("document.getElementById('status').textContent.includes('item ')")
    assert page.locator(".card").count() > 0


def test_uploading_an_image_searches_by_it(page, server_url):
    url, corpus = server_url
    page.goto(url)
    page.check('input[name="type"][value="image"]')
    page.set_input_files("#file", str(corpus["images"] / "grey" / "red-circle-grey.png"))
    page.wait_for_function("document.getElementById('status').textContent.includes('red-circle')")
    first = page.locator(".card.image .score >> nth=0").inner_text()
    assert first == "1.000"  # the uploaded image is in the index: it comes first
    assert page.locator(".card.image img >> nth=0").get_attribute("alt") == "red-circle-grey.png"


def test_an_error_is_shown_not_thrown(page, server_url):
    url, _ = server_url
    page.goto(url)
    page.press("#q", "Enter")
    assert "Type something" in page.inner_text("#status")
