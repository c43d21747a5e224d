"""The dashboard at `/`, in Debian's headless Chromium (driven by Playwright), against the running pipeline:
real broker, real PostgreSQL, a real processor serving a trained model, the real API under uvicorn, and a
synthetic market trading live.

What a user relies on: the page loads with no console errors and plots exactly the candles the API stores;
a new candle appears (and the open one moves) without reloading; switching venue, symbol, interval and chart
style shows the right data, and demo data is marked DEMO DATA; after the API restarts the page says it is
offline, then comes back live by itself.
Screenshots (laptop and phone, dark and light) go to $TEST_ARTIFACTS/dashboard/.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from processor.model import registry
from tests.e2e.dashboard_pipeline import DEMO, OTHER, SYMBOLS, DashboardPipeline

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LAPTOP = {"width": 1440, "height": 900}
PHONE = {"width": 390, "height": 844}
# While the API is down, Chromium itself logs each refused connection; nothing else may reach the console.
REFUSED = re.compile(
    r"WebSocket connection to '.*' failed"
    r"|Failed to load resource: net::ERR_(CONNECTION_REFUSED|CONNECTION_RESET|EMPTY_RESPONSE"
    r"|CONNECTION_CLOSED)"
)
FIELDS = ("open", "high", "low", "close")


@pytest.fixture(scope="module")
def pipeline(
    kafka_bootstrap: str, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DashboardPipeline]:
    with DashboardPipeline(kafka_bootstrap, database_url, tmp_path_factory.mktemp("dashboard")) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"the browser tests drive Debian's Chromium at {CHROMIUM}, which is missing: `make test` "
            "installs it (scripts/ensure-test-tools), or run `apt-get install chromium`"
        )
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def artifacts() -> Path:
    folder = Path(os.environ.get("TEST_ARTIFACTS", "test-artifacts")) / "dashboard"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Dashboard:
    """One page of the dashboard in its own browser context, with every console message (``console``: type
    and text; ``console_errors``: the errors' text) and page error kept."""

    def __init__(
        self,
        browser: Browser,
        url: str,
        view: str = "",
        viewport: dict[str, int] = LAPTOP,
        scheme: str = "dark",
    ) -> None:
        self.context = browser.new_context(viewport=viewport, color_scheme=scheme)  # type: ignore[arg-type]
        self.page: Page = self.context.new_page()
        self.console: list[tuple[str, str]] = []
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        self.page.on("console", lambda m: self.console.append((m.type, m.text)))
        self.page.on("console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        self.page.goto(f"{url}/{view}")
        self.page.wait_for_selector("body[data-ready=true]", timeout=30_000)
        self.wait_state("live", 15)

    def close(self) -> None:
        self.context.close()

    def state(self) -> str:
        return str(self.page.get_attribute("#conn", "data-state"))

    def wait_state(self, state: str, timeout: float) -> float:
        start = time.monotonic()
        self.page.wait_for_selector(f'#conn[data-state="{state}"]', timeout=timeout * 1000)
        return time.monotonic() - start

    def plot(self, element: str = "price-chart") -> list[dict[str, Any]]:
        """The traces Plotly holds for a chart (what is drawn), as plain data."""
        traces: list[dict[str, Any]] = self.page.evaluate(
            """(id) => (document.getElementById(id).data || []).map((t) => ({
                type: t.type, name: t.name, x: t.x, y: t.y, open: t.open, high: t.high, low: t.low,
                close: t.close, customdata: t.customdata }))""",
            element,
        )
        return traces

    def price(self) -> dict[str, Any]:
        """The price chart's candles: x, OHLC, volume (from the bars), closed flag and trade count per row."""
        candles, volume = self.plot()
        return {
            "type": candles["type"],
            "name": candles["name"],
            "bucket": candles["x"],
            **{f: candles[f] for f in FIELDS},
            "volume": volume["y"],
            "closed": [c[0] for c in candles["customdata"]],
            "tradeCount": [c[1] for c in candles["customdata"]],
        }

    def assert_clean(self) -> None:
        assert self.page_errors == [], self.page_errors
        assert self.console_errors == [], self.console_errors


@contextlib.contextmanager
def modules_page(browser: Browser, url: str) -> Iterator[Page]:
    """An empty HTML page on the API's origin (answered by the browser itself), in a context of its own: the
    dashboard's modules are imported from the API into it, without the dashboard running."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.route(
            f"{url}/blank.html", lambda route: route.fulfill(content_type="text/html", body="<!doctype html>")
        )
        page.goto(f"{url}/blank.html")
        yield page
    finally:
        context.close()


def mismatches(plot: dict[str, Any], api: dict[str, Any]) -> tuple[int, list[str]]:
    """Compare every final plotted candle the API also has; and no stored candle may be missing from the
    plotted span. Returns (candles compared, problems)."""
    stored = {b: i for i, b in enumerate(api["bucket"])}
    plotted = set(plot["bucket"])
    problems: list[str] = []
    compared = 0
    for j, bucket in enumerate(plot["bucket"]):
        i = stored.get(bucket)
        if i is None or not plot["closed"][j]:
            continue
        compared += 1
        drawn = {f: plot[f][j] for f in (*FIELDS, "tradeCount")}
        expected = {f: api[f][i] for f in (*FIELDS, "tradeCount")}
        # Prices and counts exactly; volume to 1e-9: a minute's volume summed live (1 s candles as they close)
        # and in SQL (the stored roll-up) may differ in the last bit, the order of the sum being different.
        if drawn != expected or plot["volume"][j] != pytest.approx(api["volume"][i], rel=1e-9):
            problems.append(
                f"{bucket}: drawn {drawn} {plot['volume'][j]} != stored {expected} {api['volume'][i]}"
            )
    first, last = plot["bucket"][0], plot["bucket"][-1]
    problems += [f"{b}: stored, not drawn" for b in api["bucket"] if first <= b <= last and b not in plotted]
    return compared, problems


def wait_plot_matches_api(
    dash: Dashboard,
    pipeline: DashboardPipeline,
    symbol: str,
    interval: str,
    at_least: int,
    exchange: str | None = None,
) -> dict[str, Any]:
    """The drawn candles equal the API's, retrying for a while: a candle closing right now may be drawn
    final an instant before the processor's next checkpoint stores it, and the page merges the newest
    stored rows every 5 s (which also repairs a final the live feed sent with fewer trades than stored)."""
    deadline = time.monotonic() + 15
    while True:
        plot = dash.price()
        api = pipeline.candles(symbol, interval, len(plot["bucket"]) + 10, exchange)
        compared, problems = mismatches(plot, api)
        if not problems and compared >= at_least:
            return plot
        if time.monotonic() > deadline:
            raise AssertionError(f"{symbol} {interval}: {compared} candles compared; {problems[:5]}")
        time.sleep(0.5)


def test_the_page_loads_clean_and_draws_the_stored_candles_volatility_and_prediction(
    pipeline: DashboardPipeline, browser: Browser
) -> None:
    dash = Dashboard(browser, pipeline.url, "#symbol=BTCUSDT&interval=1s")
    try:
        page = dash.page
        assert page.get_by_label("Symbol", exact=True).input_value() == "BTCUSDT"
        assert page.get_by_role("radio", name="1s").is_checked()
        plot = wait_plot_matches_api(dash, pipeline, "BTCUSDT", "1s", at_least=400)
        assert plot["type"] == "candlestick" and plot["name"] == "BTCUSDT"
        assert plot["bucket"] == sorted(set(plot["bucket"])) and all(b % 1000 == 0 for b in plot["bucket"])
        assert (
            page.get_by_role(
                "img",
                name=re.compile(r"^Candlestick chart of BTCUSDT on synthetic \(demo data\), 1s candles"),
            ).count()
            == 1
        )

        # Volatility: the API's values, drawn in percent.
        (vol,) = dash.plot("vol-chart")
        rows = pipeline.graphql('{ volatility(symbol: "BTCUSDT", limit: 600) { bucket volatility } }')[
            "volatility"
        ]
        stored = {_ms(r["bucket"]): r["volatility"] * 100 for r in rows}
        drawn = {b: v for b, v in zip(vol["x"], vol["y"], strict=True) if b in stored}
        assert len(drawn) >= 300, len(drawn)
        assert drawn == pytest.approx({b: stored[b] for b in drawn}, rel=1e-12)

        # Comparison: every symbol, as returns from one common start (0 % there).
        comparison = dash.plot("cmp-chart")
        assert [t["name"] for t in comparison] == SYMBOLS
        assert len({t["x"][0] for t in comparison}) == 1 and all(len(t["x"]) >= 400 for t in comparison)

        # The newest prediction as the processor's model made it (it arrives live, before it is stored).
        page.wait_for_selector(".prediction-prob")
        bucket, shown = page.evaluate(
            """[+document.querySelector('.prediction').dataset.bucket,
                document.querySelector('.prediction-prob').textContent]"""
        )
        query = """query($f: DateTime, $t: DateTime) {
            predictions(symbol: "BTCUSDT", from: $f, to: $t, limit: 5) { probabilityUp modelVersion }
        }"""
        at = {"f": _iso(bucket), "t": _iso(bucket + 1000)}
        pipeline.wait_until(
            lambda: pipeline.graphql(query, **at)["predictions"], 10, "the shown prediction stored"
        )
        (stored,) = pipeline.graphql(query, **at)["predictions"]
        assert shown == f"P(up) {stored['probabilityUp'] * 100:.1f} %"
        assert stored["modelVersion"] in page.inner_text("#prediction")
        report = httpx.post(f"{pipeline.url}/graphql", json={"query": "{ modelReport }"}).json()
        model_text = page.inner_text("#model-report")
        if (report.get("data") or {}).get("modelReport"):
            data = report["data"]["modelReport"]
            assert data["verdict"]["summary"] in model_text
            assert f"{data['metrics'][data['selected_model']]['accuracy']:.3f}" in model_text
        else:  # no modelReport field in this API yet (or no model): the page says so and nothing breaks
            assert "No model trained yet" in model_text

        # Pipeline status: the processor's own counters.
        page.wait_for_selector('.status-line[data-state="running"]')
        assert "1 processor running" in page.inner_text("#status")
        for label in ("Lag", "Trades/s", "Late", "Invalid"):
            assert page.locator(".tile-label", has_text=label).count() == 1
        dash.assert_clean()
    finally:
        dash.close()


def test_the_venue_selector_switches_markets_and_demo_data_is_marked(
    pipeline: DashboardPipeline, browser: Browser, artifacts: Path
) -> None:
    """EXCHANGES=synthetic: BTCUSDT alone means the demo market, shown with a DEMO DATA badge. The venue
    selector (from the `markets` query) switches to binance's BTCUSDT: its own candles, no badge."""
    dash = Dashboard(browser, pipeline.url, "#symbol=BTCUSDT&interval=1s")
    try:
        page = dash.page
        venue = page.get_by_label("Venue", exact=True)
        assert venue.input_value() == DEMO
        options = page.eval_on_selector_all("#exchange option", "os => os.map((o) => [o.value, o.text])")
        assert options == [[OTHER[0], OTHER[0]], [DEMO, f"{DEMO} (demo data)"]]
        assert page.is_visible("#demo-badge") and page.inner_text("#demo-badge") == "DEMO DATA"
        assert page.inner_text("#price-venue") == f"{DEMO} · demo data"
        wait_plot_matches_api(dash, pipeline, "BTCUSDT", "1s", at_least=300, exchange=DEMO)
        page.screenshot(path=artifacts / "demo-badge-laptop-dark.png")

        venue.select_option(OTHER[0])
        page.wait_for_selector("#demo-badge", state="hidden")
        assert "exchange=binance" in page.url and page.inner_text("#price-venue") == OTHER[0]
        symbols = page.eval_on_selector_all("#symbol option", "os => os.map((o) => o.value)")
        assert symbols == OTHER[1]
        page.wait_for_function(f"document.querySelectorAll('.ticker').length === {len(OTHER[1])}")
        page.wait_for_function(
            "(document.getElementById('price-chart').getAttribute('aria-label') || '')"
            ".startsWith('Candlestick chart of BTCUSDT on binance, 1s candles')"
        )
        wait_plot_matches_api(dash, pipeline, "BTCUSDT", "1s", at_least=300, exchange=OTHER[0])
        assert [t["name"] for t in dash.plot("cmp-chart")] == OTHER[1]
        # Live updates of this venue keep coming (the demo venue's BTCUSDT never lands here).
        newest = dash.price()["bucket"][-1]
        page.wait_for_function(
            f"document.getElementById('price-chart').data[0].x.at(-1) > {newest}", timeout=15_000
        )
        wait_plot_matches_api(dash, pipeline, "BTCUSDT", "1s", at_least=300, exchange=OTHER[0])

        venue.select_option(DEMO)
        page.wait_for_selector("#demo-badge", state="visible")
        wait_plot_matches_api(dash, pipeline, "BTCUSDT", "1s", at_least=300, exchange=DEMO)
        dash.assert_clean()
    finally:
        dash.close()

    linked = Dashboard(browser, pipeline.url, "#exchange=binance&symbol=BTCUSDT&interval=1s")
    try:
        assert linked.page.get_by_label("Venue", exact=True).input_value() == OTHER[0]
        assert not linked.page.is_visible("#demo-badge")
        wait_plot_matches_api(linked, pipeline, "BTCUSDT", "1s", at_least=300, exchange=OTHER[0])
        linked.assert_clean()
    finally:
        linked.close()

    # A link to a market without candles says so and puts what is shown in the address (it showed another
    # market in silence, the address still naming the one asked for), at load and on a hash change.
    missing = Dashboard(browser, pipeline.url, "#exchange=binance&symbol=NOPEUSDT&interval=1s")
    try:
        page = missing.page
        page.wait_for_selector("#notice", state="visible")
        assert page.inner_text("#notice") == "No candles for NOPEUSDT on binance: showing BTCUSDT on binance"
        assert "symbol=BTCUSDT" in page.url and "NOPEUSDT" not in page.url
        page.evaluate("location.hash = '#exchange=upbit&symbol=BTCUSDT&interval=1s'")
        page.wait_for_function(
            "document.getElementById('notice').textContent.startsWith('No candles for BTCUSDT on upbit')"
        )
        assert "exchange=binance" in page.url and page.inner_text("#price-venue") == OTHER[0]
        missing.assert_clean()
    finally:
        missing.close()


def test_a_new_candle_appears_and_the_open_one_moves_without_a_reload(
    pipeline: DashboardPipeline, browser: Browser
) -> None:
    dash = Dashboard(browser, pipeline.url, "#symbol=BTCUSDT&interval=1s")
    try:
        dash.page.evaluate("window.__sameDocument = true")
        newest = dash.price()["bucket"][-1]
        # Watched in the page, every 10 ms, the chart's last few candles: looking from here (the whole
        # chart through the browser's protocol, 0.1-0.3 s a look on a loaded machine) saw an open candle,
        # which changes every 250 ms and lives about a second, once at most.
        dash.page.evaluate(
            """(newest) => {
                window.__looks = {};
                setInterval(() => {
                    const t = (document.getElementById('price-chart').data || [])[0];
                    if (!t || !t.customdata) return;
                    for (let i = Math.max(0, t.x.length - 5); i < t.x.length; i++) {
                        if (t.x[i] <= newest) continue;
                        const look = [t.customdata[i][0], t.customdata[i][1]];
                        const looks = (window.__looks[t.x[i]] ||= []);
                        const last = looks.at(-1);
                        if (!last || last[0] !== look[0] || last[1] !== look[1]) looks.push(look);
                    }
                }, 10);
            }""",
            newest,
        )
        seen: dict[int, list[tuple[bool, int]]] = {}  # bucket -> (closed, trades) of each look at it
        finished: list[int] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            looks = dash.page.evaluate("window.__looks")
            seen = {int(b): [(bool(c), int(t)) for c, t in v] for b, v in looks.items()}
            moved = [b for b, looks in seen.items() if len({t for c, t in looks if not c}) >= 2]
            finished = [b for b in moved if seen[b][-1][0]]
            if finished:
                break
            time.sleep(0.2)
        # New buckets came in progress first (stored rows are always final: this is the subscription), the
        # open candle's trade count grew while it was open, and it turned final in place.
        assert seen, "no new candle appeared"
        assert any(not looks[0][0] for looks in seen.values()), seen
        assert finished, f"no open candle moved and then closed: {seen}"
        assert dash.page.evaluate("window.__sameDocument") is True
        assert int(dash.page.inner_text("#updates").split()[0].replace(",", "")) > 0
        dash.assert_clean()
    finally:
        dash.close()


def test_switching_symbol_interval_and_style_shows_the_right_data(
    pipeline: DashboardPipeline, browser: Browser
) -> None:
    dash = Dashboard(browser, pipeline.url, "#symbol=BTCUSDT&interval=1s")
    try:
        page = dash.page
        page.get_by_label("Symbol", exact=True).select_option("ETHUSDT")
        page.wait_for_function("document.getElementById('price-chart').data[0].name === 'ETHUSDT'")
        assert page.inner_text("#price-title") == "ETHUSDT · 1s"
        page.wait_for_selector('.ticker[data-symbol="ETHUSDT"][aria-pressed="true"]', timeout=5_000)
        wait_plot_matches_api(dash, pipeline, "ETHUSDT", "1s", at_least=300)
        page.wait_for_selector("#vol-title-symbol:text('ETHUSDT')")

        page.get_by_role("radio", name="1m").check()
        page.wait_for_function(
            "document.getElementById('price-chart').data[0].x.every((b) => b % 60000 === 0)", timeout=10_000
        )
        assert page.inner_text("#price-title") == "ETHUSDT · 1m"
        plot = wait_plot_matches_api(dash, pipeline, "ETHUSDT", "1m", at_least=8)
        assert 10 <= len(plot["bucket"]) <= 13, plot["bucket"]  # ten minutes of history, and the live minute
        # the comparison chart too (its redraw may come a moment after the price chart's on a loaded machine)
        page.wait_for_function(
            "(document.getElementById('cmp-chart').data || []).length > 0 && document.getElementById("
            "'cmp-chart').data.every((t) => t.x.every((b) => b % 60000 === 0))",
            timeout=10_000,
        )
        assert "symbol=ETHUSDT" in page.url and "interval=1m" in page.url
        # The open minute moves with live trades (or, at a minute boundary, the next minute opens).
        open_bucket, open_trades = plot["bucket"][-1], plot["tradeCount"][-1]
        page.wait_for_function(
            "(() => { const d = document.getElementById('price-chart').data[0];"
            f" return d.x.at(-1) > {open_bucket} || d.customdata.at(-1)[1] > {open_trades}; }})()",
            timeout=10_000,
        )

        page.get_by_role("radio", name="Line").check()
        page.wait_for_function("document.getElementById('price-chart').data[0].type === 'scatter'")
        # Closes of the drawn minutes equal the stored ones (polling: a minute that just closed live is
        # stored at the processor's next checkpoint).
        deadline = time.monotonic() + 15
        while True:
            line, _ = dash.plot()
            candles = pipeline.candles("ETHUSDT", "1m", 20)
            drawn = dict(zip(line["x"][:-1], line["y"][:-1], strict=True))  # all but the open minute
            stored = dict(zip(candles["bucket"], candles["close"], strict=True))
            wrong = {b: (y, stored.get(b)) for b, y in drawn.items() if b in stored and stored[b] != y}
            if drawn and not wrong:
                break
            assert time.monotonic() < deadline, f"drawn closes differ from stored ones: {wrong}"
            time.sleep(0.5)

        # Back through the ticker strip, as a phone user would tap it.
        page.locator('.ticker[data-symbol="SOLUSDT"]').click()
        page.wait_for_function("document.getElementById('price-chart').data[0].name === 'SOLUSDT'")
        page.get_by_role("radio", name="Candles").check()
        page.wait_for_function("document.getElementById('price-chart').data[0].type === 'candlestick'")
        wait_plot_matches_api(dash, pipeline, "SOLUSDT", "1m", at_least=8)
        dash.assert_clean()
    finally:
        dash.close()


def test_the_page_shows_stale_data_and_an_api_restart_then_comes_back_live(
    pipeline: DashboardPipeline, browser: Browser, artifacts: Path
) -> None:
    dash = Dashboard(browser, pipeline.url, "#symbol=BTCUSDT&interval=1s")
    try:
        page = dash.page
        page.evaluate("window.__sameDocument = true")
        # The market goes quiet: still connected, but nothing moves. The page says how long it has been.
        pipeline.trading.clear()
        try:
            took = dash.wait_state("stale", 15)
            assert re.fullmatch(r"Stale: no updates for \d+(\.\d)? s", page.inner_text("#conn-text"))
            page.screenshot(path=artifacts / "stale-laptop-dark.png")
            print(f"stale shown {took:.1f}s after the trades stopped")
        finally:
            pipeline.trading.set()
        dash.wait_state("live", 10)
        dash.assert_clean()

        pipeline.stop_api()
        took = dash.wait_state("offline", 10)
        assert page.is_visible("#offline-banner")
        assert "Offline" in page.inner_text("#conn")
        page.screenshot(path=artifacts / "offline-laptop-dark.png")
        print(f"offline shown {took:.1f}s after the API stopped")

        restarted = int(time.time() * 1000)
        pipeline.start_api()
        took = dash.wait_state("live", 20)
        print(f"live again {took:.1f}s after the API was back")
        assert not page.is_visible("#offline-banner")
        # Subscriptions resumed: candles newer than the restart arrive live again, with history reloaded.
        page.wait_for_function(
            f"""(() => {{ const candles = document.getElementById('price-chart').data[0];
                return candles.x.some((b, i) => b > {restarted} && !candles.customdata[i][0]); }})()""",
            timeout=15_000,
        )
        wait_plot_matches_api(dash, pipeline, "BTCUSDT", "1s", at_least=400)
        assert page.evaluate("window.__sameDocument") is True
        assert dash.page_errors == [], dash.page_errors
        unexpected = [m for m in dash.console_errors if not REFUSED.search(m)]
        assert unexpected == [], unexpected
    finally:
        dash.close()
        if pipeline.server is None:
            pipeline.start_api()


@pytest.mark.parametrize("screen", ["laptop", "phone"])
def test_laptop_and_phone_layouts_follow_the_system_theme_and_the_theme_button(
    pipeline: DashboardPipeline, browser: Browser, artifacts: Path, screen: str
) -> None:
    background = {"dark": "rgb(13, 17, 23)", "light": "rgb(245, 247, 250)"}
    viewport = LAPTOP if screen == "laptop" else PHONE
    dash = Dashboard(browser, pipeline.url, "#symbol=BTCUSDT&interval=1s", viewport=viewport, scheme="dark")
    page = dash.page
    charts_follow_theme = """() => {
        const fg = getComputedStyle(document.documentElement).getPropertyValue('--fg').trim();
        return ['price-chart', 'vol-chart', 'cmp-chart'].every((id) => {
            const chart = document.getElementById(id);
            return (chart.data || []).length > 0 && chart._fullLayout.font.color === fg;
        });
    }"""
    try:
        for scheme in ("dark", "light"):  # the system setting changes while the page is open
            page.emulate_media(color_scheme=scheme)
            assert page.evaluate("getComputedStyle(document.body).backgroundColor") == background[scheme]
            page.wait_for_function(charts_follow_theme)
            # Nothing wider than the screen (no sideways scrolling of the page on a phone).
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
            page.screenshot(path=artifacts / f"{screen}-{scheme}.png", full_page=True)
        # The theme button overrides the system: auto -> light -> dark -> auto.
        toggle = page.get_by_role("button", name=re.compile("^Colour theme"))
        assert toggle.get_attribute("aria-label") == "Colour theme: automatic, now light. Change theme"
        toggle.click()
        toggle.click()
        assert page.evaluate("document.documentElement.dataset.theme") == "dark"
        assert page.evaluate("getComputedStyle(document.body).backgroundColor") == background["dark"]
        page.wait_for_function(charts_follow_theme)
        toggle.click()
        assert page.evaluate("document.documentElement.dataset.theme") is None
        dash.assert_clean()
    finally:
        dash.close()


def test_live_updates_merge_into_the_series_by_the_documented_rules(
    pipeline: DashboardPipeline, browser: Browser
) -> None:
    """The page's own merge module (js/series.js), run in the browser on hand-made updates."""
    with modules_page(browser, pipeline.url) as page:
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        result = page.evaluate(
            """async () => {
            const s = await import('/js/series.js');
            const row = (bucket, close, trades, closed) => ({ bucket, closed, open: 1,
              high: Math.max(1, close), low: Math.min(1, close), close, volume: trades, tradeCount: trades });
            const series = s.fromColumns({ symbol: 'X', bucket: [1000, 2000], open: [1, 1], high: [2, 2],
              low: [1, 1], close: [2, 2], volume: [5, 5], tradeCount: [5, 5] }, '1s', 4);
            const outcomes = [
              s.applyUpdate(series, row(3000, 3, 1, false)), // new open second
              s.applyUpdate(series, row(new Date(3000).toISOString(), 4, 2, false)), // it moves
              s.applyUpdate(series, row(3000, 5, 3, true)), // it closes
              s.applyUpdate(series, row(3000, 9, 1, false)), // stale in-progress: ignored
              s.applyUpdate(series, row(5000, 6, 1, false)), // next open second
              s.applyUpdate(series, row(4000, 7, 2, true)), // a late final in between
              s.applyUpdate(series, row(0, 1, 1, true)), // older than the window kept
            ];
            // Stored: second 3 with a trade more than its live final (a final sent too early), second 4 as
            // drawn, second 5 (still open on the page) with more trades.
            const merged = s.mergeStored(series, { bucket: [3000, 4000, 5000], open: [1, 1, 1],
              high: [6, 7, 8], low: [1, 1, 1], close: [6, 7, 8], volume: [4, 2, 4], tradeCount: [4, 2, 4] });
            const coarse = s.fromColumns({ symbol: 'X', bucket: [0, 60000], open: [1, 1], high: [1, 1],
              low: [1, 1], close: [1, 1], volume: [1, 1], tradeCount: [1, 1] }, '1m', 10);
            return { outcomes, merged, bucket: series.bucket, close: series.close, closed: series.closed,
                     coarseClosed: coarse.closed };
          }"""
        )
        assert result["outcomes"] == ["append", "replace", "replace", "ignore", "append", "insert", "ignore"]
        assert result["bucket"] == [2000, 3000, 4000, 5000]  # kept to the window of 4
        assert result["close"] == [2, 6, 7, 8]  # stored rows with more trades won, final or not
        assert result["closed"] == [True, True, True, True]
        assert result["merged"] == 2
        assert result["coarseClosed"] == [True, False]  # the newest stored minute may still be filling up
        assert errors == []


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def test_the_model_report_is_shown_as_measured(pipeline: DashboardPipeline, browser: Browser) -> None:
    """The panel of the page (js/panels.js) given the report the fixture's training wrote: every model's
    metrics to three decimals, the served one marked, the verdict and its summary word for word."""
    report = registry.load_report(pipeline.settings.model_dir)
    assert report is not None
    with modules_page(browser, pipeline.url) as page:
        text = page.evaluate(
            """async (report) => {
            const panels = await import('/js/panels.js');
            const box = document.createElement('div');
            panels.renderModelReport(box, report);
            const empty = document.createElement('div');
            panels.renderModelReport(empty, null);
            return [box.innerText || box.textContent, empty.textContent,
                    box.querySelector('tr.selected th').textContent];
            }""",
            report,
        )
        shown, empty, selected = text
        assert report["verdict"]["summary"] in shown
        verdict = "beats the baselines" if report["verdict"]["beats_baselines"] else "does not beat"
        assert verdict in shown.lower()
        for metrics in report["metrics"].values():
            for name in ("accuracy", "balanced_accuracy", "log_loss", "auc"):
                if isinstance(metrics.get(name), float):
                    assert f"{metrics[name]:.3f}" in shown, (name, metrics[name])
        assert selected.startswith(report["selected_model"]) and "served" in selected
        assert empty.startswith("No model trained yet")


def test_the_quote_counts_trades_and_the_demo_model_is_said_once(
    pipeline: DashboardPipeline, browser: Browser
) -> None:
    """The newest candle's line says "1 trade", "2 trades", "– trades" (an archive that did not record it);
    a prediction of the demo model says "Demo model" in a pill when the report beside it is that model's,
    and in full when no report says what it is (a live run after the demo)."""
    with modules_page(browser, pipeline.url) as page:
        lines, beside, alone = page.evaluate(
            """async () => {
            const panels = await import('/js/panels.js');
            const quote = (count) => {
              const els = { price: document.createElement('span'), change: document.createElement('span'),
                            candle: document.createElement('p') };
              const two = [1, 1];
              panels.renderQuote(els, { interval: '1s', bucket: [0, 1000], open: two, high: two, low: two,
                                        close: two, volume: two, tradeCount: [7, count],
                                        closed: [true, true] });
              return els.candle.textContent;
            };
            const prediction = { bucket: '2026-12-04T04:20:53Z', probabilityUp: 0.4, label: 'down',
                                 horizonSeconds: 60, modelVersion: 'demo-1' };
            const shown = (report) => {
              const box = document.createElement('div');
              panels.renderPrediction(box, prediction, 'BTCUSDT', report);
              return box.textContent;
            };
            return [[quote(1), quote(2), quote(null)],
                    shown({ model_version: 'demo-1', data: { generated: true } }), shown(null)];
            }"""
        )
        assert [line.rsplit(" · ", 1)[1] for line in lines] == ["1 trade", "2 trades", "– trades"], lines
        assert beside.endswith("Demo model") and "real markets" not in beside, beside
        assert "Demo model · made by the demo's model" in alone and "real markets" in alone, alone


def test_a_candle_whose_time_passed_without_a_final_reads_as_last_stored(
    pipeline: DashboardPipeline, browser: Browser
) -> None:
    """A stopped market's newest stored minute said "in progress" for ever (the page cannot know it is final
    until the live feed says so). Once its time is over a minute past it reads "last stored", in the quote
    and in the chart's hover text; a final candle stays "closed" and a current one "in progress"."""
    with modules_page(browser, pipeline.url) as page:
        result = page.evaluate(
            """async () => {
            const s = await import('/js/series.js');
            const panels = await import('/js/panels.js');
            const charts = await import('/js/charts.js');
            const ones = [1, 1];
            const coarse = s.fromColumns({ symbol: 'X', bucket: [0, 60000], open: ones, high: ones, low: ones,
                                           close: ones, volume: ones, tradeCount: [3, 1] }, '1m', 10);
            const states = (now) => [0, 1].map((i) => s.rowState(coarse, i, now));
            const pill = (now) => {
              const els = { price: document.createElement('span'), change: document.createElement('span'),
                            candle: document.createElement('p') };
              panels.renderQuote(els, coarse, now);
              return els.candle.querySelector('.pill').dataset.state;
            };
            const hover = charts.priceFigure(coarse, { style: 'candles', p: charts.palette(), width: 800,
                                                       now: 300000 }).data[0].text;
            // a replay: candles of 2025 by the clock of today, in progress while their updates come
            const replay = s.fromColumns({ symbol: 'X', bucket: [1735689600000], open: [1], high: [1],
                                           low: [1], close: [1], volume: [1], tradeCount: [1] }, '1s', 10);
            const today = 1796400000000;
            s.applyUpdate(replay, { bucket: 1735689601000, closed: false, open: 1, high: 1, low: 1, close: 1,
                                    volume: 1, tradeCount: 1 }, today);
            const replayed = [today + 1000, today + 59999, today + 60000].map(
              (now) => s.rowState(replay, 1, now));
            return { soon: states(90000), settling: states(179999), later: states(180000),
                     pills: [pill(90000), pill(180000)], hover, replayed };
            }"""
        )
        assert result["soon"] == ["closed", "in progress"]  # the newest stored minute may still be filling up
        assert result["settling"] == ["closed", "in progress"]  # within a minute of its end
        assert result["later"] == ["closed", "last stored"]
        assert result["pills"] == ["in progress", "last stored"]
        assert result["hover"] == ["3 trades", "1 trade · last stored"]
        # in progress while a live update of it came within the minute, whatever the candle's own time
        assert result["replayed"] == ["in progress", "in progress", "last stored"]


def test_the_chart_s_hover_text_follows_the_clock_with_no_update_to_redraw_the_chart(
    pipeline: DashboardPipeline, browser: Browser
) -> None:
    """The price chart's hover text is made when the chart is drawn: on a stopped market, whose newest minute
    gets no update to redraw it, it said "in progress" for ever while the quote beside it moved on to "last
    stored". Here the page reads the stored 1 m candles with no live feed at all (its WebSocket is answered
    by nothing) and its clock jumps 2.5 minutes: the chart is drawn again, its newest minute "last stored"."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.clock.install()  # the page's Date and timers follow page.clock from here
        page.route_web_socket(re.compile(r"/graphql"), lambda ws: None)  # never answered: no update comes
        page.goto(f"{pipeline.url}/#symbol=BTCUSDT&interval=1m")
        newest = (
            "(() => { const t = (document.getElementById('price-chart').data || [])[0]; "
            "return t && t.x.length ? t.text.at(-1) : null; })()"
        )
        page.wait_for_function(f"{newest} !== null", timeout=30_000)
        before = page.evaluate(newest)
        assert before.endswith(" · in progress"), before  # its minute is this minute, or just past
        page.clock.fast_forward("02:30")  # the 1 s timer fires: every stored minute's time is long past
        page.wait_for_function(f"({newest} || '').endsWith(' · last stored')", timeout=5_000)
        assert page.get_attribute("#live-candle .pill", "data-state") == "last stored"
    finally:
        context.close()


def test_a_finished_replay_reads_as_done_and_a_stopped_source_as_a_problem(
    pipeline: DashboardPipeline, browser: Browser
) -> None:
    """The status panel draws each source from `pipelineStatus.feeds`: a replay at the end of its file is
    finished (a check mark and its trades, not "silent" in red, however old its last report); a stopped one
    is silent."""
    with modules_page(browser, pipeline.url) as page:
        lines = page.evaluate(
            """async () => {
            const panels = await import('/js/panels.js');
            const feed = (state, trades) => ({ source: 'replay', state, since: '2026-12-04T06:00:00Z',
              lastTradeAt: '2026-12-04T06:00:00Z', trades, error: null, alive: false, delivering: false });
            const status = (f) => ({ live: true, fed: f.state === 'finished', feeds: [f], processors: [],
              rejectedByReason: [], lag: 0, tradesPerSecond: 0, late: 0, rejected: 0, trades: 0, candles: 0,
              candlesPerSecond: 0, updatedAt: '2026-12-04T06:00:00Z', partitions: [], symbols: [] });
            const drawn = (f) => {
              const box = document.createElement('div');
              panels.renderStatus(box, status(f), Date.parse('2026-12-04T07:00:00Z'));
              const li = box.querySelector('.feeds li');
              return [li.className, li.dataset.state, li.textContent,
                      box.querySelector('.status-line').dataset.state];
            };
            return [drawn(feed('finished', 300)), drawn(feed('finished', 1)), drawn(feed('ended', 300))];
            }"""
        )
        finished = "✓ replay: finished at 06:00:00 UTC · 300 trades"
        assert lines[0][:3] == ["ok", "finished", finished] and lines[0][3] != "no-source", lines
        assert lines[1][2].endswith("· 1 trade"), lines
        assert lines[2][:2] == ["bad", "silent"] and lines[2][3] == "no-source", lines


@pytest.mark.parametrize("width", [340, 415, 700, 1000])
def test_time_labels_never_run_into_each_other(
    pipeline: DashboardPipeline, browser: Browser, width: int
) -> None:
    """Each chart's time labels, drawn by Plotly at the chart's width, for spans from a minute to a day: no
    label overlaps the next. A replay of two minutes in the half-width volatility panel gave eight labels
    of seconds in 330 px ("00:00:1500:00:3000:00:45...")."""
    with modules_page(browser, pipeline.url) as page:
        page.add_style_tag(url=f"{pipeline.url}/dashboard.css")
        page.add_script_tag(url=f"{pipeline.url}/vendor/plotly.min.js")
        overlaps = page.evaluate(
            """async (width) => {
            const charts = await import('/js/charts.js');
            const p = charts.palette();
            const found = [];
            for (const seconds of [60, 111, 600, 3600, 86400]) {
              const step = seconds > 3600 ? 60000 : 1000;
              const n = Math.floor((seconds * 1000) / step);
              const bucket = Array.from({ length: n }, (_, i) => 1735689600000 + i * step);
              const value = bucket.map((_, i) => 0.0003 + 0.0001 * Math.sin(i / 7));
              const close = bucket.map((_, i) => 93000 + 20 * Math.sin(i / 5));
              const series = { interval: step === 1000 ? '1s' : '1m', bucket, open: close, high: close,
                               low: close, close, volume: close.map(() => 1),
                               tradeCount: close.map(() => 3), closed: close.map(() => true) };
              const figures = {
                price: charts.priceFigure(series, { style: 'candles', p, width }),
                volatility: charts.volatilityFigure({ symbol: 'BTCUSDT', bucket, value, window: 60 },
                                                    { p, width }),
                comparison: charts.comparisonFigure(
                  { BTCUSDT: { bucket, value } }, ['BTCUSDT'],
                  { p, selected: 'BTCUSDT', interval: series.interval, width }),
              };
              for (const [name, figure] of Object.entries(figures)) {
                const div = document.createElement('div');
                div.style.width = `${width}px`;
                document.body.append(div);
                await Plotly.newPlot(div, figure.data, { ...figure.layout, width, height: 260 });
                // a label's lines are checked against the same line of the next (the date under the first
                // label of a day is on a line of its own)
                const rows = [];
                for (const text of div.querySelectorAll('.xtick text')) {
                  const lines = text.querySelectorAll('tspan.line');
                  (lines.length ? [...lines] : [text]).forEach((line, row) => {
                    const r = line.getBoundingClientRect();
                    if (r.width > 0) (rows[row] ??= []).push([r.left, r.right, line.textContent]);
                  });
                }
                for (const row of rows) {
                  row.sort((a, b) => a[0] - b[0]);
                  for (let k = 1; k < row.length; k++) {
                    if (row[k][0] < row[k - 1][1]) {
                      found.push(`${name}, ${seconds} s: ${row.map((b) => b[2])}`);
                    }
                  }
                }
                Plotly.purge(div);
                div.remove();
              }
            }
            return [...new Set(found)];
            }""",
            width,
        )
        assert overlaps == [], overlaps
