"""A newcomer's first hour, as they run it: `cryptostream up` (the demo), then `cryptostream up --source
live` on a machine without network, each looked at in Chromium.

- The demo shows a working prediction panel within a minute of a first start: a model trained on generated
  history, labelled as such (it never reaches a live run).
- Without network, the live run says so: `/health` is degraded and names each exchange's state and error,
  the dashboard's Pipeline panel shows every feed reconnecting and "No trade source delivers", and nothing
  in it reads "null".
Screenshots of both states go to $TEST_ARTIFACTS/first-hour/.
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from cryptostream.procs import free_port
from tests.e2e.conftest import Pipeline

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
LAPTOP = {"width": 1440, "height": 1000}
LATEST = '{ latestPrediction(symbol: "BTCUSDT") { probabilityUp label modelVersion } }'


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium is missing at {CHROMIUM}: `make test` installs it (scripts/ensure-test-tools)")
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def artifacts() -> Path:
    folder = Path(os.environ.get("TEST_ARTIFACTS", "test-artifacts")) / "first-hour"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _open(browser: Browser, url: str) -> tuple[Page, list[str]]:
    page = browser.new_context(viewport=LAPTOP, color_scheme="light").new_page()  # type: ignore[arg-type]
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{url}/")
    page.wait_for_selector("body[data-ready=true]", timeout=30_000)
    return page, errors


def test_demo_predicts_within_a_minute_and_offline_live_says_no_source_delivers(
    start_pipeline: Callable[..., Pipeline],
    pipeline_env: dict[str, str],
    browser: Browser,
    artifacts: Path,
) -> None:
    demo = start_pipeline("--source", "synthetic", "--rate", "60")
    took = demo.wait_until(
        lambda: demo.graphql(LATEST)["latestPrediction"] is not None, 120, "a prediction from the demo model"
    )
    print(f"first prediction served {took:.1f}s after start")
    endpoints = Path(pipeline_env["STATE_DIR"]) / "endpoints.json"  # this user's alone, no password in it
    assert stat.S_IMODE(endpoints.stat().st_mode) == 0o600
    assert json.loads(endpoints.read_text())["database_url"].startswith("postgresql://postgres@127.0.0.1:")
    report = demo.graphql("{ modelReport }")["modelReport"]
    report = json.loads(report) if isinstance(report, str) else report
    assert report["data"]["generated"] is True and report["notes"][0].startswith("Demo model")
    prediction = demo.graphql(LATEST)["latestPrediction"]
    assert prediction["modelVersion"] == report["model_version"]
    assert prediction["modelVersion"].startswith("demo-"), prediction
    # the demo model lives with the embedded state, not in MODEL_DIR, so a live run never serves it
    assert not (demo.log.parent / "data" / "models").exists()

    page, errors = _open(browser, demo.url)
    page.wait_for_function("document.getElementById('prediction').textContent.includes('%')", timeout=60_000)
    page.wait_for_selector("#status .feeds li[data-state=connected]", timeout=30_000)
    status = page.inner_text("#status")
    assert "synthetic: connected" in status and "null" not in status, status
    assert "Demo model" in page.inner_text("#model-report")
    # the report beside the prediction explains the demo model: the prediction says so in a pill, not twice
    page.wait_for_selector("#prediction .pill-demo", timeout=30_000)
    assert page.inner_text("#prediction .pill-demo") == "Demo model"
    assert page.inner_text("body").count("knows nothing about real markets") == 1, page.inner_text("body")
    page.screenshot(path=str(artifacts / "demo.png"), full_page=True)
    assert errors == [], errors
    page.context.close()
    assert demo.interrupt() == 0, demo.tail()

    # The same machine, now "live" with no network: both exchanges refuse (nothing listens on that port).
    dead = free_port()
    pipeline_env.update(
        BINANCE_WS_URL=f"ws://127.0.0.1:{dead}",
        BINANCE_REST_URL=f"http://127.0.0.1:{dead}",
        COINBASE_WS_URL=f"ws://127.0.0.1:{dead}",
        COINBASE_REST_URL=f"http://127.0.0.1:{dead}",
    )
    live = start_pipeline("--source", "live")

    def degraded() -> bool:
        health = httpx.get(f"{live.url}/health", timeout=5).json()
        feeds = {f["source"]: f for f in health.get("feeds") or []}
        return health["status"] == "degraded" and {"binance", "coinbase"} <= feeds.keys()

    live.wait_until(degraded, 60, "/health degraded, with both exchanges reported")
    health = httpx.get(f"{live.url}/health").json()
    (problem,) = health["problems"]
    assert problem.startswith("no trade source delivers: "), problem
    for feed in health["feeds"]:
        assert feed["state"] in ("connecting", "reconnecting") and feed["last_trade_at"] is None, feed
        assert feed["error"].startswith("cannot connect"), feed

    page, errors = _open(browser, live.url)
    page.wait_for_selector('#status .status-line[data-state="no-source"]', timeout=30_000)
    page.wait_for_function(
        "document.querySelectorAll('#status .feeds li[data-state=reconnecting]').length === 2", timeout=30_000
    )
    status = page.inner_text("#status")
    assert "No trade source delivers" in status and "null" not in status, status
    assert re.search(r"binance: reconnecting since \d\d:\d\d:\d\d UTC", status), status
    # the previous demo's candles are still there, marked as what they are
    assert page.is_visible("#demo-badge"), "the demo's stored candles are shown without the DEMO DATA mark"
    # and their stored predictions as the demo model's, though the live run serves no report of it
    page.wait_for_function("document.getElementById('prediction').textContent.includes('%')", timeout=30_000)
    assert "No model trained yet" in page.inner_text("#model-report")
    # no report says what that model is, so the prediction says it in full
    said = page.inner_text("#prediction")
    assert "Demo model · made by the demo's model, trained on generated history" in said, said
    time.sleep(1)  # a status poll or two more: still clean
    page.screenshot(path=str(artifacts / "live-offline.png"), full_page=True)
    assert errors == [], errors
    page.context.close()
    assert live.interrupt() == 0, live.tail()
