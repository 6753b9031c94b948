"""The search page in a real browser: headless Chromium (Debian's) driven by Playwright, at a
desktop's 1280x800 and a phone's 390x844, over the sample corpus plus copies of one picture
(testing.photo_copies) and a 14x25 GIF."""

import os
import re
import shutil
import socket
import threading
import time

import pytest
from PIL import Image

from e5v_search.engine import Engine
from e5v_search.serving.app import create_app
from e5v_search.testing import make_sample_corpus, photo_copies

CHROMIUM = os.environ.get("E5V_CHROMIUM", "/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not shutil.which(CHROMIUM), reason=f"no Chromium at {CHROMIUM} (make test installs it)"
)
RED = "A red circle on a grey background."
COPIED = "green-triangle-pale"  # the picture with copies (one no other is confused with)
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2}
PHONE_TOUCH = {**PHONE, "is_mobile": True, "has_touch": True}


@pytest.fixture(scope="module")
def server_url(tmp_path_factory, trained_dir):
    import uvicorn

    root = tmp_path_factory.mktemp("browser")
    corpus = make_sample_corpus(root / "corpus")
    photo_copies(corpus["images"] / "pale" / f"{COPIED}.png", corpus["images"] / "copies")
    Image.new("P", (14, 25), 3).save(corpus["images"] / "tiny.gif")
    engine = Engine.open(root / "ix", model=str(trained_dir), device="cpu", create=True)
    engine.ingest([corpus["images"], corpus["captions"]], progress=False)
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
def browser():
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
        yield browser
        browser.close()


@pytest.fixture(params=["desktop", "phone"])
def page(request, browser):
    options = PHONE_TOUCH if request.param == "phone" else {"viewport": VIEWPORT}
    context = browser.new_context(**options)
    yield context.new_page()
    context.close()


@pytest.fixture
def desktop(browser):
    context = browser.new_context(viewport=VIEWPORT)
    yield context.new_page()
    context.close()


VIEWPORT = {"width": 1280, "height": 800}


def _status_has(page, text):
    page.wait_for_function(
        "text => document.getElementById('status').textContent.includes(text)", arg=text
    )


def _search(page, text):
    page.fill("#q", text)
    page.press("#q", "Enter")
    _status_has(page, f'for "{text}"')


def test_typing_a_query_shows_thumbnails_and_a_click_finds_more_like_it(page, server_url):
    url, _ = server_url
    page.goto(url)
    _search(page, RED)
    page.wait_for_function(
        "[...document.querySelectorAll('.card.image img')].slice(0, 4)"
        ".every(img => img.complete && img.naturalWidth > 0)"
    )
    assert page.locator(".card.image").count() == 24
    # The trained model: the caption's own picture comes first.
    assert page.locator(".card.image img >> nth=0").get_attribute("alt") == "red-circle-grey.png"
    page.check('input[name="type"][value="text"]')  # the toggle re-runs the search
    page.wait_for_selector(".card.text .text")
    assert page.inner_text(".card.text .text >> nth=0") == RED
    assert "type=text" in page.url
    first = page.locator(".card.text").first.get_attribute("data-id")
    page.click(".card.text a.more >> nth=0")
    _status_has(page, f"for item {first}")
    assert page.input_value("#q") == ""  # the box no longer shows the old text
    assert "More like this" in page.inner_text("#anchor") and RED in page.inner_text("#anchor")
    assert f"like={first}" in page.url and page.locator(".card").count() > 0


def test_an_uploaded_photo_finds_photos_first(page, server_url):
    url, corpus = server_url
    page.goto(url)
    page.set_input_files("#file", str(corpus["images"] / "grey" / "red-circle-grey.png"))
    _status_has(page, "for red-circle-grey.png")
    assert page.locator(".card.text").count() == 0
    assert page.locator(".card.image .score >> nth=0").inner_text() == "1.000"  # itself
    assert page.locator(".card.image img >> nth=0").get_attribute("alt") == "red-circle-grey.png"
    page.check('input[name="type"][value="any"]')  # both: two sections, each on its own scale
    page.wait_for_selector("#heading-text")
    assert page.locator("section h2").all_inner_texts() == ["Images", "Texts"]
    assert page.inner_text(".card.text .text >> nth=0") == RED
    page.click("#clear-image")  # back to nothing searched: the first screen
    page.wait_for_selector("#heading-image-first")


def test_a_heic_file_without_a_mime_type_is_searched_and_a_non_image_refused(desktop, server_url):
    from pillow_heif import from_pillow

    url, corpus = server_url
    image = Image.open(corpus["images"] / "grey" / "red-circle-grey.png").convert("RGB")
    heic = from_pillow(image)
    path = corpus["images"].parent / "query.heic"
    heic.save(str(path), quality=95)
    desktop.goto(url)
    # What Chromium hands over for a .heic chosen in the picker: no MIME type.
    payload = {"name": "IMG_0001.HEIC", "mimeType": "", "buffer": path.read_bytes()}
    desktop.set_input_files("#file", files=[payload])
    _status_has(desktop, "for IMG_0001.HEIC")
    assert desktop.locator(".card.image img >> nth=0").get_attribute("alt") == "red-circle-grey.png"
    bad = {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not a picture"}
    desktop.set_input_files("#file", files=[bad])
    _status_has(desktop, "notes.txt is not an image.")
    assert desktop.locator("#preview").is_hidden()  # the refused file took the old one's place
    fake = {"name": "broken.heic", "mimeType": "", "buffer": b"not a picture either"}
    desktop.set_input_files("#file", files=[fake])  # the server's decoder says no
    desktop.wait_for_selector("#status.error")
    assert "image" in desktop.inner_text("#status") and desktop.locator("#preview").is_hidden()


def test_back_and_forward_and_a_bookmark_give_the_same_search(desktop, server_url):
    url, _ = server_url
    desktop.goto(url)
    _search(desktop, RED)
    first = desktop.locator(".card.image img >> nth=0").get_attribute("alt")
    _search(desktop, "A green stripe on a pale background.")
    assert "q=A+green+stripe" in desktop.url
    desktop.go_back()
    _status_has(desktop, RED)
    assert desktop.input_value("#q") == RED
    assert desktop.locator(".card.image img >> nth=0").get_attribute("alt") == first
    desktop.go_forward()
    _status_has(desktop, "green stripe")
    bookmark = f"{url}/?q=A+red+circle+on+a+grey+background.&type=text&min_score=0.2"
    desktop.goto(bookmark)
    _status_has(desktop, RED)
    assert desktop.is_checked('input[name="type"][value="text"]')
    assert desktop.input_value("#min-score") == "0.2"
    assert desktop.inner_text(".card.text .text >> nth=0") == RED


def test_mode_and_threshold_are_sent_only_when_set(desktop, server_url):
    url, _ = server_url
    sent = []
    desktop.on("request", lambda r: sent.append(r.url) if "/api/search" in r.url else None)
    desktop.goto(url)
    _search(desktop, RED)
    assert "mode=" not in sent[-1] and "min_score" not in sent[-1] and "collapse=true" in sent[-1]
    desktop.select_option("#mode", "hybrid")
    desktop.wait_for_function("location.search.includes('mode=hybrid')")
    desktop.fill("#min-score", "0.5")
    desktop.press("#min-score", "Enter")
    desktop.wait_for_function("location.search.includes('min_score=0.5')")
    _status_has(desktop, "results for")
    assert "mode=hybrid" in sent[-1] and "min_score=0.5" in sent[-1]
    # A server that counts what the threshold cut (issue 21's `cut`): the page says so.
    desktop.route(
        re.compile(r"/api/search\?"),
        lambda route: route.fulfill(json={"results": [], "took_ms": 1.0, "cut": 7}),
    )
    _search(desktop, "anything")
    assert "0 results" in desktop.inner_text("#status")
    assert "7 cut" in desktop.inner_text("#status")


def test_keyboard_alone_searches_uploads_and_opens_a_result(desktop, server_url):
    url, corpus = server_url
    choosers = []  # listened for from the start: Playwright intercepts the picker from then on
    desktop.on("filechooser", lambda chooser: choosers.append(chooser))
    desktop.goto(url)
    desktop.wait_for_selector("#heading-image-first")
    desktop.keyboard.type(RED)  # the box has the focus on arrival
    desktop.keyboard.press("Enter")
    _status_has(desktop, f'for "{RED}"')
    _tab_to(desktop, "#drop")
    desktop.keyboard.press("Space")
    for _ in range(100):  # the chooser's event comes from the browser, a moment later
        if choosers:
            break
        desktop.wait_for_timeout(50)
    assert len(choosers) == 1
    choosers[0].set_files(str(corpus["images"] / "grey" / "red-circle-grey.png"))
    _status_has(desktop, "red-circle-grey.png")
    _tab_to(desktop, ".card a.more")
    anchor_id = desktop.evaluate("document.activeElement.closest('.card').dataset.id")
    outline = desktop.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid"  # a visible focus
    desktop.keyboard.press("Enter")
    _status_has(desktop, f"for item {anchor_id}")


def _tab_to(page, selector, limit=40):
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("s => document.activeElement.matches(s)", selector):
            return
    raise AssertionError(f"Tab never reached {selector}")


def test_no_serious_accessibility_violations(page, server_url):
    from axe_playwright_python.sync_playwright import Axe

    url, _ = server_url
    axe = Axe()
    page.goto(url)
    page.wait_for_selector("#heading-image-first")
    found = axe.run(page).response["violations"]
    _search(page, RED)
    page.wait_for_selector(".card.image img")
    found += axe.run(page).response["violations"]
    page.check('input[name="type"][value="any"]')
    page.wait_for_selector("#heading-text")
    found += axe.run(page).response["violations"]
    bad = [
        (v["id"], v["impact"], v["help"]) for v in found if v["impact"] in {"serious", "critical"}
    ]
    assert bad == []


def test_copies_of_one_picture_are_shown_once(desktop, server_url):
    url, _ = server_url
    desktop.goto(url)
    _search(desktop, "A green triangle on a pale background.")
    top = desktop.locator(".card").first
    assert top.locator("img").get_attribute("alt").startswith(COPIED)
    assert top.locator(".copies").inner_text() == "+6 copies"
    alts = desktop.locator(".card img").evaluate_all("imgs => imgs.map(i => i.alt)")
    assert sum(alt.startswith(COPIED) for alt in alts) == 1 and len(alts) == 24
    desktop.uncheck("#collapse")  # every copy on its own
    desktop.wait_for_function("location.search.includes('collapse=0')")
    _status_has(desktop, "results for")
    alts = desktop.locator(".card img").evaluate_all("imgs => imgs.map(i => i.alt)")
    assert sum(alt.startswith(COPIED) for alt in alts) == 7
    assert desktop.locator(".copies").count() == 0


def test_each_image_links_its_original(desktop, server_url):
    url, _ = server_url
    desktop.goto(url)
    _search(desktop, RED)
    link = desktop.locator(".card.image a.original").first
    assert link.get_attribute("href").startswith("/files/")
    response = desktop.request.get(url + link.get_attribute("href"))
    assert response.status == 200 and response.headers["content-type"] == "image/png"


def test_on_a_phone_two_or_three_columns_sharp_thumbnails_and_nothing_blown_up(browser, server_url):
    url, _ = server_url
    context = browser.new_context(**PHONE_TOUCH)
    phone = context.new_page()
    phone.goto(url)
    assert phone.inner_text("#drop-label") == "Choose photo"
    _search(phone, RED)
    phone.wait_for_function(
        "[...document.querySelectorAll('.card.image img')].slice(0, 6)"
        ".every(img => img.complete && img.naturalWidth > 0)"
    )
    boxes = phone.locator(".card").evaluate_all(
        "cs => cs.map(c => [c.getBoundingClientRect().left, c.getBoundingClientRect().top])"
    )
    assert len({left for left, top in boxes if top == boxes[0][1]}) in (2, 3)
    assert "size=512" in phone.locator(".card.image img").first.evaluate("i => i.currentSrc")
    sizes = phone.locator(".card.image img").evaluate_all(
        "imgs => imgs.map(i => [i.getBoundingClientRect().width, i.naturalWidth, i.alt])"
    )
    assert all(shown <= natural + 0.5 for shown, natural, _ in sizes)
    # The 14x25 GIF, as the item "more like this" started from: 14 pixels, 7 px at DPR 2.
    found = phone.request.get(url + "/api/search", params={"q": "x", "type": "image", "k": 100})
    gif = next(r["id"] for r in found.json()["results"] if r["source"].endswith("tiny.gif"))
    phone.goto(f"{url}/?like={gif}")
    phone.wait_for_function(
        "(i => i && i.complete && i.naturalWidth)(document.querySelector('#anchor img'))"
    )
    assert phone.locator("#anchor img").evaluate("i => i.getBoundingClientRect().width") == 7
    # Each control's words stay on its line.
    heights = phone.locator("fieldset label, .field").evaluate_all(
        "ls => ls.map(l => l.getBoundingClientRect().height)"
    )
    assert max(heights) < 40
    phone.screenshot(path=str(server_url[1]["images"].parent / "phone.png"))
    context.close()


def test_the_first_screen_says_what_is_indexed(desktop, server_url):
    url, _ = server_url
    desktop.goto(url)
    _status_has(desktop, "55 images and 48 texts indexed")
    assert desktop.locator("#heading-image-first + .grid .card.image img").count() == 12
    icon = desktop.request.get(url + "/favicon.ico")
    assert icon.status == 200 and icon.headers["content-type"].startswith("image/svg+xml")


def test_docs_render_with_the_network_blocked(browser, server_url):
    url, _ = server_url
    context = browser.new_context(viewport=VIEWPORT)
    outside = []

    def local_only(route):
        if route.request.url.startswith(url):
            return route.continue_()
        outside.append(route.request.url)
        return route.abort()

    context.route("**/*", local_only)
    docs = context.new_page()
    docs.goto(url + "/docs")
    docs.wait_for_selector(".swagger-ui .opblock-summary-path", timeout=20_000)
    assert "/api/search" in docs.inner_text(".swagger-ui")
    assert outside == []
    context.close()


def test_an_error_is_shown_not_thrown(desktop, server_url):
    url, _ = server_url
    desktop.goto(url)
    desktop.press("#q", "Enter")
    assert "Type something" in desktop.inner_text("#status")
