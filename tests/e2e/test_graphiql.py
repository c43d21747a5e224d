"""GraphiQL at /graphql works in a real browser with no internet: every file comes from the app itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Route, sync_playwright

from cryptostream.procs import free_port
from tests.e2e.test_dashboard import CHROMIUM, CHROMIUM_ARGS

pytestmark = [pytest.mark.e2e]


def test_graphiql_loads_from_the_app_alone_and_runs_a_query(tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.fail(
            f"Debian's Chromium is missing at {CHROMIUM}: `make test` installs it (scripts/ensure-test-tools)"
        )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP", "DATABASE_URL")}
    env.update(
        OUTPUT_DIR=str(tmp_path / "outputs")
    )  # no database, no broker: the archive (empty) is the store
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "cryptostream", "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, log.read_text()
            time.sleep(0.2)

        page_html = httpx.get(f"{url}/graphql", headers={"accept": "text/html"}).text
        assert "unpkg.com" not in page_html and "/vendor/graphiql/graphiql.min.js" in page_html

        outside: list[str] = []
        errors: list[str] = []

        def block_outside(route: Route) -> None:
            outside.append(route.request.url)
            route.abort()

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.route(lambda u: not u.startswith(url), block_outside)
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(f"{url}/graphql")
                page.wait_for_selector(".graphiql-query-editor .CodeMirror", timeout=20_000)
                editor = "document.querySelector('.graphiql-query-editor .CodeMirror').CodeMirror"
                page.evaluate(f"{editor}.setValue('{{ symbols }}')")
                page.click(".graphiql-execute-button")
                page.wait_for_function(
                    "document.querySelector('.result-window')?.innerText.includes('symbols')", timeout=20_000
                )
                result = page.inner_text(".result-window")
            finally:
                browser.close()
        assert '"symbols": []' in result, result
        assert outside == [], f"GraphiQL fetched from outside the app: {outside}"
        assert errors == [], errors
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
