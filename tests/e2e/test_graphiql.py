"""GraphiQL at /graphql and the REST docs at /docs and /redoc work in a real browser with no internet: every
file comes from the app itself (`cryptostream serve`, as a user starts it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import ConsoleMessage, Page, Route, sync_playwright

from cryptostream.procs import free_port
from tests.e2e.test_dashboard import CHROMIUM, CHROMIUM_ARGS

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`cryptostream serve` with no database and no broker: the archive (empty) is the store."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"Debian's Chromium is missing at {CHROMIUM}: `make test` installs it (scripts/ensure-test-tools)"
        )
    tmp = tmp_path_factory.mktemp("serve")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP", "DATABASE_URL")}
    env.update(OUTPUT_DIR=str(tmp / "outputs"))
    log = tmp / "serve.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "cryptostream", "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, log.read_text()
            time.sleep(0.2)
        yield base
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)


class Browser:
    """A Chromium page that may only reach the app: it records what it tried to fetch elsewhere and every
    console error."""

    def __init__(self, page: Page, url: str) -> None:
        self.page = page
        self.outside: list[str] = []
        self.errors: list[str] = []
        page.route(lambda u: not u.startswith(url), self._block)
        self.failed_loads: list[str] = []  # URLs of "Failed to load resource" console errors
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.errors.append(str(e)))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        if message.text.startswith("Failed to load resource"):
            self.failed_loads.append(message.location.get("url", ""))
        self.errors.append(message.text)

    def _block(self, route: Route) -> None:
        self.outside.append(route.request.url)
        route.abort()


@pytest.fixture
def browser(url: str) -> Iterator[Browser]:
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield Browser(chromium.new_page(), url)
        finally:
            chromium.close()


def test_graphiql_loads_from_the_app_alone_and_runs_a_query(url: str, browser: Browser) -> None:
    page_html = httpx.get(f"{url}/graphql", headers={"accept": "text/html"}).text
    assert "unpkg.com" not in page_html and "/vendor/graphiql/graphiql.min.js" in page_html

    page = browser.page
    page.goto(f"{url}/graphql")
    page.wait_for_selector(".graphiql-query-editor .CodeMirror", timeout=20_000)
    editor = "document.querySelector('.graphiql-query-editor .CodeMirror').CodeMirror"
    opening = page.evaluate(f"{editor}.getValue()")
    assert opening.startswith("# cryptostream") and "query Recent {" in opening, opening  # not the welcome
    page.click(".graphiql-execute-button")  # runs the example as it is
    page.wait_for_function(
        "document.querySelector('.result-window')?.innerText.includes('markets')", timeout=20_000
    )
    # the whole result (CodeMirror keeps only the lines in view in the page)
    result = json.loads(
        page.evaluate("document.querySelector('.result-window .CodeMirror').CodeMirror.getValue()")
    )
    assert result == {"data": {"markets": result["data"]["markets"], "candles": [], "latestPrediction": None}}
    assert {"exchange": "binance", "symbol": "BTCUSDT"}.items() <= result["data"]["markets"][0].items()
    assert browser.outside == [], f"GraphiQL fetched from outside the app: {browser.outside}"
    assert browser.errors == [], browser.errors


# ReDoc's menu footer always shows Redocly's logo from their CDN (ReDoc has no option to leave it out); the
# image hides itself when it cannot load, so offline the page is complete without it.
REDOCLY_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_rest_docs_render_from_the_app_alone(url: str, browser: Browser, page: str) -> None:
    browser.page.goto(f"{url}{page}")
    # a route's summary: Swagger UI or ReDoc rendered /openapi.json
    browser.page.wait_for_function("document.body.textContent.includes('OHLC candles (1 s)')", timeout=20_000)
    outside = [u for u in browser.outside if u != REDOCLY_LOGO]
    assert outside == [], f"{page} fetched from outside the app: {outside}"
    errors = browser.errors
    if REDOCLY_LOGO in browser.outside:  # its blocked load is reported once, when Chromium gets to it
        deadline = time.monotonic() + 20
        while REDOCLY_LOGO not in browser.failed_loads and time.monotonic() < deadline:
            browser.page.wait_for_timeout(100)
        errors = [e for e in errors if e != "Failed to load resource: net::ERR_FAILED"]
        assert browser.failed_loads.count(REDOCLY_LOGO) == len(browser.failed_loads), browser.failed_loads
    assert errors == [], errors
