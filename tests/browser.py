"""A headless Chromium that may load local files only, for the tests that look at pages as a reader
does (the built report, the atlas)."""
from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
LOCAL = ("file:", "data:", "about:")


@contextlib.contextmanager
def offline_page():
    """Yields ``(page, blocked, failed)``: a new Playwright page in which every request that would leave
    the machine is aborted and its URL appended to ``blocked``; ``failed`` lists the URLs of requests
    that failed. Skips the test without Chromium (Debian package chromium) or Playwright."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian package chromium; .ci/run installs it as root)")
    sync_api = pytest.importorskip("playwright.sync_api")
    blocked, failed = [], []

    def route(r):
        if r.request.url.startswith(LOCAL):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page()
            page.route("**/*", route)
            page.on("requestfailed", lambda r: failed.append(r.url))
            yield page, blocked, failed
        finally:
            browser.close()
