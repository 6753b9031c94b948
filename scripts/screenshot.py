"""Take the README's pictures of the search page, at a desktop's width and a phone's (390x844 at
DPR 2): the trained tiny model over the sample corpus and copies of one of its pictures (so a
"+6 copies" badge shows), served on localhost, queried in headless Chromium (Debian's, driven by
Playwright).

    python scripts/screenshot.py [--out docs/search-page.png]
        [--phone-out docs/search-page-phone.png] [--query "..."]
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote_plus

from e5v_search.engine import Engine
from e5v_search.serving.app import create_app
from e5v_search.testing import make_sample_corpus, photo_copies
from e5v_search.training import cached_trained_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    import uvicorn
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "search-page.png")
    parser.add_argument("--phone-out", type=Path, default=ROOT / "docs" / "search-page-phone.png")
    parser.add_argument("--query", default="A green triangle on a pale background.")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        corpus = make_sample_corpus(Path(folder) / "corpus")
        copied = corpus["images"] / "pale" / "green-triangle-pale.png"
        photo_copies(copied, corpus["images"] / "copies")
        engine = Engine.open(
            Path(folder) / "ix", model=str(cached_trained_checkpoint()), device="cpu", create=True
        )
        engine.ingest([corpus["images"], corpus["captions"]], progress=False)
        app = create_app(engine)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=args.chromium, headless=True, args=["--no-sandbox", "--disable-gpu"]
            )
            desktop = {"viewport": {"width": 1100, "height": 760}}
            phone = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2}
            phone.update(is_mobile=True, has_touch=True)
            for options, out in ((desktop, args.out), (phone, args.phone_out)):
                page = browser.new_page(**options)
                page.goto(f"http://127.0.0.1:{port}/?q={quote_plus(args.query)}")
                page.wait_for_function(
                    "[...document.querySelectorAll('.card.image img')].slice(0, 12)"
                    ".every(img => img.complete && img.naturalWidth > 0)"
                )
                page.screenshot(path=str(out))
                page.close()
            browser.close()
        server.should_exit = True
        app.state.worker.close()
        engine.close()
    print(f"wrote {args.out} and {args.phone_out}")


if __name__ == "__main__":
    main()
