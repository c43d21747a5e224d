"""The original README's REST routes, Plotly figures, OpenAPI docs and Prometheus metrics, over real HTTP
against the real database, with one symbol on two venues."""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest
import pytest_asyncio

from graphql_api.app import create_app
from graphql_api.server import BackgroundServer
from tests.integration.api_helpers import (
    DEMO_LAST,
    DEMO_ONLY,
    SECOND,
    SYMBOLS,
    api_settings,
    buckets,
    iso,
    of_market,
    seed_market,
)
from tests.reference import assert_candles_equal, rows_by_key

pytestmark = pytest.mark.integration

NO_VOL = "XRPUSDT"  # has candles, no stored volatility: /api/volatility/ computes it (seed behaviour)
BINANCE = "binance"
STORED = {(BINANCE, s) for s in [*SYMBOLS, NO_VOL]} | {SECOND, DEMO_ONLY, *DEMO_LAST}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def seeded(database_url: str) -> AsyncIterator[dict[str, Any]]:
    yield await seed_market(database_url, without_volatility=(NO_VOL,))


@pytest.fixture(scope="module")
def client(
    seeded: dict[str, Any], database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    settings = api_settings(database_url, tmp_path_factory.mktemp("rest"), symbols=[*SYMBOLS, NO_VOL])
    with (
        BackgroundServer(create_app(settings)) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        yield http


def _newest(seeded: dict[str, Any], symbol: str, n: int, exchange: str = BINANCE) -> list[int]:
    return buckets(seeded["candles"], exchange, symbol)[-n:]


def _keyed(rows: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    return rows_by_key({**r, "bucket": datetime.fromisoformat(r["timestamp"])} for r in rows)


def test_ohlc_returns_the_seed_shape_newest_rows_oldest_first(
    client: httpx.Client, seeded: dict[str, Any]
) -> None:
    body = client.get("/api/ohlc/", params={"symbol": "BTCUSDT", "limit": 100}).json()
    assert body["count"] == 100 and body["symbol"] == "BTCUSDT" and body["exchange"] == BINANCE
    newest = _newest(seeded, "BTCUSDT", 100)
    assert [row["timestamp"] for row in body["data"]] == [iso(b) for b in newest]
    first = body["data"][0]
    expected = seeded["candles"][(BINANCE, "BTCUSDT", newest[0])]
    assert {k: first[k] for k in ("open", "high", "low", "close", "volume", "symbol", "exchange")} == {
        **{k: expected[k] for k in ("open", "high", "low", "close", "volume")},
        "symbol": "BTCUSDT",
        "exchange": BINANCE,
    }
    assert first["trade_count"] == expected["trade_count"]
    # without the trailing slash: FastAPI's redirect, as the original project's app answered it
    for path in ("/api/ohlc", "/api/volatility"):
        moved = client.get(path, params={"symbol": "BTCUSDT", "limit": 100})
        assert moved.status_code == 307 and moved.headers["location"].endswith("/?symbol=BTCUSDT&limit=100")
        assert (
            client.get(path, params={"symbol": "BTCUSDT", "limit": 3}, follow_redirects=True).json()["count"]
            == 3
        )


def test_each_venue_of_one_symbol_is_its_own_series_and_a_symbol_alone_follows_the_rule(
    client: httpx.Client, seeded: dict[str, Any]
) -> None:
    for exchange in (BINANCE, "coinbase"):
        body = client.get(
            "/api/ohlc/", params={"symbol": "BTCUSDT", "exchange": exchange, "limit": 10_000}
        ).json()
        assert body["exchange"] == exchange and body["symbol"] == "BTCUSDT"
        assert_candles_equal(_keyed(body["data"]), of_market(seeded["candles"], exchange, "BTCUSDT"))
    picked = {
        symbol: client.get("/api/ohlc/latest", params={"symbol": symbol}).json()["data"][0]["exchange"]
        for symbol in ("BTCUSDT", DEMO_ONLY[1], DEMO_LAST[0][1])
    }
    assert picked == {"BTCUSDT": BINANCE, "DOGEUSDT": "synthetic", "ADAUSDT": "upbit"}
    (coinbase,) = client.get("/api/ohlc/latest", params={"symbol": "BTCUSDT", "exchange": "coinbase"}).json()[
        "data"
    ]
    assert coinbase["timestamp"] == iso(_newest(seeded, "BTCUSDT", 1, "coinbase")[0])
    vol = client.get("/api/volatility/", params={"symbol": "BTCUSDT", "exchange": "coinbase"}).json()
    assert vol["source"] == "stored" and {r["exchange"] for r in vol["data"]} == {"coinbase"}
    stored = of_market(seeded["volatility"], *SECOND)
    assert [r["volatility"] for r in vol["data"]] == [stored[k] for k in sorted(stored)][-1000:]
    figure = client.get("/api/viz/price-line", params={"symbol": "BTCUSDT", "exchange": "coinbase"}).json()
    closes = [seeded["candles"][(*SECOND, b)]["close"] for b in _newest(seeded, "BTCUSDT", 500, "coinbase")]
    assert figure["data"][0]["y"] == closes and "BTCUSDT · coinbase" in figure["layout"]["title"]["text"]


def test_demo_data_is_marked_in_figure_titles(client: httpx.Client) -> None:
    figure = client.get("/api/viz/candlestick", params={"symbol": "DOGEUSDT"}).json()
    assert figure["layout"]["title"]["text"] == "DOGEUSDT · synthetic (DEMO DATA) Price Chart (Candlestick)"


def test_markets_route_lists_venue_symbol_demo_flag_and_span(
    client: httpx.Client, seeded: dict[str, Any]
) -> None:
    body = client.get("/api/markets").json()
    rows = {(m["exchange"], m["symbol"]): m for m in body["markets"]}
    assert body["count"] == len(body["markets"]) and STORED <= set(rows)
    for market in STORED:
        span = buckets(seeded["candles"], *market)
        row = rows[market]
        assert (row["first_candle"], row["last_candle"]) == (iso(span[0]), iso(span[-1]))
        assert row["demo"] is (market[0] == "synthetic")
    unstored = set(rows) - STORED
    assert unstored and all(rows[m]["first_candle"] is None for m in unstored)
    assert rows[(BINANCE, "BTCUSDT")]["preferred"] and not rows[SECOND]["preferred"]


def test_ohlc_dates_are_whole_utc_days_with_the_end_day_included(
    client: httpx.Client, seeded: dict[str, Any]
) -> None:
    everything = len(of_market(seeded["candles"], BINANCE, "ETHUSDT"))
    same_day = client.get(
        "/api/ohlc/",
        params={"symbol": "ETHUSDT", "start_date": "2023-11-14", "end_date": "2023-11-14", "limit": 10000},
    ).json()
    assert same_day["count"] == everything
    basic = client.get(  # ISO 8601's basic form is a whole day too (it was read as midnight: nothing)
        "/api/ohlc/",
        params={"symbol": "ETHUSDT", "start_date": "20231114", "end_date": "20231114", "limit": 10000},
    ).json()
    assert basic["count"] == everything
    later = client.get("/api/ohlc/", params={"symbol": "ETHUSDT", "start_date": "2023-11-15"}).json()
    assert later == {"data": [], "count": 0, "symbol": "ETHUSDT", "exchange": BINANCE}
    window = client.get(
        "/api/ohlc/",
        params={
            "symbol": "eth-usdt",
            "start_date": "2023-11-14T22:14:00Z",
            "end_date": "2023-11-14T22:15:00+00:00",
        },
    ).json()
    assert window["data"] and all("22:14:" in row["timestamp"] for row in window["data"])


def test_ohlc_without_a_symbol_mixes_all_markets_newest_first_cut(
    client: httpx.Client, seeded: dict[str, Any]
) -> None:
    body = client.get("/api/ohlc/", params={"limit": 40}).json()
    assert body["count"] == 40 and body["symbol"] is None and body["exchange"] is None
    assert {(row["exchange"], row["symbol"]) for row in body["data"]} <= STORED
    assert [r["timestamp"] for r in body["data"]] == sorted(r["timestamp"] for r in body["data"])
    # exactly the newest rows of all markets together, ties in a second by market, at any limit (markets
    # are read from the oldest row held on, once enough are held)
    everything = sorted(seeded["candles"], key=lambda k: (k[2], k[0], k[1]))
    for limit in (1, 7, 40, 500, 3000):
        got = client.get("/api/ohlc/", params={"limit": limit}).json()["data"]
        expected = everything[-limit:]
        assert [(r["exchange"], r["symbol"], r["timestamp"]) for r in got] == [
            (e, s, iso(b)) for e, s, b in expected
        ], limit
        assert got[-1]["close"] == seeded["candles"][expected[-1]]["close"]
    coinbase = client.get("/api/ohlc/", params={"exchange": "coinbase", "limit": 40}).json()
    assert coinbase["count"] == 40 and {r["exchange"] for r in coinbase["data"]} == {"coinbase"}


def test_latest_ohlc_per_market(client: httpx.Client, seeded: dict[str, Any]) -> None:
    every = client.get("/api/ohlc/latest").json()["data"]
    assert sorted((row["exchange"], row["symbol"]) for row in every) == sorted(STORED)
    (sol,) = client.get("/api/ohlc/latest", params={"symbol": "SOLUSDT"}).json()["data"]
    assert sol["timestamp"] == iso(_newest(seeded, "SOLUSDT", 1)[0])
    demo = client.get("/api/ohlc/latest", params={"exchange": "synthetic"}).json()["data"]
    assert sorted(row["symbol"] for row in demo) == ["ADAUSDT", "DOGEUSDT"]


def test_volatility_comes_from_the_store_when_stored(client: httpx.Client, seeded: dict[str, Any]) -> None:
    body = client.get("/api/volatility/", params={"symbol": "ETHUSDT", "limit": 5}).json()
    assert body["source"] == "stored" and body["count"] == 5 and body["exchange"] == BINANCE
    stored = sorted((k[2], v) for k, v in of_market(seeded["volatility"], BINANCE, "ETHUSDT").items())[-5:]
    assert [(r["timestamp"], r["volatility"]) for r in body["data"]] == [(iso(b), v) for b, v in stored]


def test_volatility_falls_back_to_a_calculation_from_ohlc(
    client: httpx.Client, seeded: dict[str, Any]
) -> None:
    body = client.get("/api/volatility/", params={"symbol": NO_VOL, "limit": 50}).json()
    assert body["source"] == "ohlc" and body["count"] == 50
    closes = [seeded["candles"][(BINANCE, NO_VOL, b)]["close"] for b in _newest(seeded, NO_VOL, 50)]
    assert [r["volatility"] for r in body["data"]] == pytest.approx(
        _seed_fallback(closes), rel=1e-9, abs=1e-15
    )
    figure = client.get("/api/viz/volatility", params={"symbol": NO_VOL, "limit": 50}).json()
    assert figure["data"][0]["y"] == pytest.approx(_seed_fallback(closes), rel=1e-9, abs=1e-15)


def _seed_fallback(closes: list[float]) -> list[float]:
    """The seed's pandas computation, restated in plain Python: log returns of closes, rolling std
    (ddof 1) over min(10, n) rows with at least 2 values, NaN -> 0, absolute value."""
    returns = [math.nan] + [math.log(b / a) for a, b in zip(closes, closes[1:], strict=False)]
    window = min(10, len(closes))
    out = []
    for i in range(len(closes)):
        values = [r for r in returns[max(0, i - window + 1) : i + 1] if not math.isnan(r)]
        if len(values) < 2:
            out.append(0.0)
            continue
        mean = sum(values) / len(values)
        out.append(abs(math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))))
    return out


def test_symbols_and_health(client: httpx.Client) -> None:
    names = sorted({s for _, s in STORED})
    assert client.get("/api/symbols").json() == {"symbols": names, "count": len(names)}
    health = client.get("/health").json()
    assert health["status"] == "healthy" and health["database"] is True and health["live_feed"] is None


@pytest.mark.parametrize(
    ("route", "trace"),
    [("candlestick", "candlestick"), ("price-line", "scatter"), ("volume", "bar"), ("volatility", "scatter")],
)
def test_viz_routes_return_plotly_figures(client: httpx.Client, route: str, trace: str) -> None:
    response = client.get(f"/api/viz/{route}", params={"symbol": "BTCUSDT", "limit": 120})
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    figure = response.json()
    assert figure["data"][0]["type"] == trace and len(figure["data"][0]["x"]) == 120
    assert "BTCUSDT" in figure["layout"]["title"]["text"] and figure["layout"]["template"]["layout"]


def test_multi_symbol_figure_has_one_line_per_symbol(client: httpx.Client) -> None:
    figure = client.get("/api/viz/multi-symbol", params={"symbols": "BTCUSDT, eth-usdt", "limit": 30}).json()
    assert [t["name"] for t in figure["data"]] == ["BTCUSDT · binance", "ETHUSDT · binance"]
    assert all(len(t["y"]) == 30 for t in figure["data"])
    venues = client.get("/api/viz/multi-symbol", params={"symbols": "BTCUSDT,DOGEUSDT", "limit": 5}).json()
    assert [t["name"] for t in venues["data"]] == ["BTCUSDT · binance", "DOGEUSDT · synthetic (DEMO DATA)"]


def test_the_last_day_a_date_can_name_as_end_date_is_no_upper_bound(client: httpx.Client) -> None:
    """`end_date=9999-12-31` (the day included: up to a midnight no date can name) was a 400."""
    for path in ("/api/ohlc/", "/api/volatility/"):
        unbounded = client.get(path, params={"symbol": "BTCUSDT"})
        last_day = client.get(path, params={"symbol": "BTCUSDT", "end_date": "9999-12-31"})
        assert last_day.status_code == 200 and unbounded.status_code == 200, last_day.text
        assert last_day.json() == unbounded.json() and last_day.json()["data"], path


@pytest.mark.parametrize(
    ("path", "params", "status", "detail"),
    [
        ("/api/ohlc/", {"symbol": "PEPEUSDT"}, 404, "unknown symbol 'PEPEUSDT'"),
        ("/api/ohlc/", {"symbol": "ETHUSDT", "exchange": "kraken"}, 404, "unknown exchange 'kraken'"),
        ("/api/ohlc/", {"exchange": "kraken"}, 404, "unknown exchange 'kraken'; venues: binance, coinbase"),
        ("/api/ohlc/", {"symbol": "BTCUSDT", "exchange": "$$"}, 400, "exchange must be a venue name"),
        (
            "/api/volatility/",
            {"symbol": "DOGEUSDT", "exchange": "binance"},
            404,
            "no market DOGEUSDT on binance; DOGEUSDT trades on synthetic",
        ),
        (
            "/api/ohlc/latest",
            {"symbol": "ADAUSDT", "exchange": "coinbase"},
            404,
            "trades on synthetic, upbit",
        ),
        ("/api/ohlc/", {"symbol": "$$$"}, 400, "symbols look like BTCUSDT"),
        ("/api/ohlc/", {"symbol": "BTCUSDT", "limit": 0}, 422, None),
        ("/api/ohlc/", {"symbol": "BTCUSDT", "limit": 10_001}, 422, None),
        ("/api/ohlc/", {"symbol": "BTCUSDT", "limit": "ten"}, 422, None),
        ("/api/ohlc/", {"symbol": "BTCUSDT", "start_date": "14/11/2023"}, 400, "start_date must be a date"),
        (
            "/api/ohlc/",
            {"symbol": "BTCUSDT", "start_date": "2023-11-15", "end_date": "2023-11-13"},
            400,
            "start_date must not be after end_date",
        ),
        (
            "/api/ohlc/",
            {"symbol": "BTCUSDT", "end_date": "9999-12-31T20:00:00-05:00"},
            400,
            "end_date is out of range in UTC",
        ),
        (
            "/api/volatility/",
            {"symbol": "BTCUSDT", "start_date": "0001-01-01T00:00:00+05:00"},
            400,
            "start_date is out of range in UTC",
        ),
        ("/api/volatility/", {"symbol": "BTCUSDT", "end_date": "2023-13-01"}, 400, "end_date must be a date"),
        ("/api/ohlc/latest", {"symbol": "NOPEUSDT"}, 404, "unknown symbol"),
        ("/api/viz/candlestick", {}, 422, None),
        ("/api/viz/candlestick", {"symbol": "PEPEUSDT"}, 404, "unknown symbol"),
        ("/api/viz/volume", {"symbol": "BTCUSDT", "exchange": "upbit"}, 404, "no market BTCUSDT on upbit"),
        ("/api/viz/price-line", {"symbol": "BTCUSDT", "limit": -5}, 422, None),
        ("/api/viz/multi-symbol", {"symbols": ","}, 400, "at least one symbol, e.g. BTCUSDT,ETHUSDT"),
        ("/api/viz/multi-symbol", {"symbols": "BTCUSDT,PEPEUSDT"}, 404, "unknown symbol 'PEPEUSDT'"),
    ],
)
def test_bad_parameters_are_a_4xx_with_a_message(
    client: httpx.Client, path: str, params: dict[str, Any], status: int, detail: str | None
) -> None:
    response = client.get(path, params=params)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["detail"]
    if detail is not None:
        assert detail in body["detail"]


@pytest.mark.parametrize("path", ["/api/ohlc/", "/api/volatility/"])
@pytest.mark.parametrize(
    ("start_date", "end_date"),
    [
        ("2026-12-03", "2026-12-01"),
        ("2026-12-02", "2026-12-01"),  # the day after the (included) end day: still after it
        ("2026-12-01T12:00:00Z", "2026-12-01T11:59:59Z"),
        ("2026-12-02", "2026-12-01T23:00:00+00:00"),
    ],
)
def test_a_reversed_range_is_refused_in_rest_terms_with_the_dates_as_sent(
    client: httpx.Client, path: str, start_date: str, end_date: str
) -> None:
    response = client.get(path, params={"symbol": "BTCUSDT", "start_date": start_date, "end_date": end_date})
    assert response.status_code == 400, response.text
    sent = f"start_date={start_date!r} end_date={end_date!r}"
    assert response.json() == {
        "detail": f"start_date must not be after end_date, got {sent}",
        "code": "BAD_USER_INPUT",
    }


@pytest.mark.parametrize(
    ("start_date", "end_date"),
    [("2023-11-14", "2023-11-14"), ("2023-11-14T22:14:00Z", "2023-11-14"), ("2023-11-14T22:14:00Z",) * 2],
)
def test_a_range_within_one_day_is_not_reversed(client: httpx.Client, start_date: str, end_date: str) -> None:
    params = {"symbol": "BTCUSDT", "start_date": start_date, "end_date": end_date}
    assert client.get("/api/ohlc/", params=params).status_code == 200


def _asset_urls(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_only_files_the_app_serves(client: httpx.Client, page: str) -> None:
    html = client.get(page).text
    urls = _asset_urls(html)
    assert len(re.findall(r"<script src=", html)) == 1  # Swagger UI's or ReDoc's bundle
    assert urls and all(u.startswith("/") and not u.startswith("//") for u in urls), urls
    assert "cdn." not in html and "googleapis" not in html and "https://" not in html
    for url in urls:
        asset = client.get(url)
        assert asset.status_code == 200, url
        kind = asset.headers["content-type"]
        if url.endswith(".js"):
            assert "javascript" in kind and len(asset.content) > 500_000, (url, kind)
        elif url.endswith(".css"):
            assert kind.startswith("text/css"), (url, kind)
    assert client.get("/openapi.json").status_code == 200


def test_openapi_docs_list_the_seed_routes(client: httpx.Client) -> None:
    assert "swagger" in client.get("/docs").text.lower()
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/api/ohlc/",
        "/api/ohlc/latest",
        "/api/volatility/",
        "/api/symbols",
        "/api/markets",
        "/health",
    ):
        assert path in paths
    ohlc = paths["/api/ohlc/"]["get"]
    assert "first of the `EXCHANGES` setting that has it" in ohlc["description"]
    assert "exchange" in {p["name"] for p in ohlc["parameters"]}
    for route in ("candlestick", "price-line", "volatility", "volume", "multi-symbol"):
        assert f"/api/viz/{route}" in paths


def test_metrics_count_requests_by_route_with_latency(client: httpx.Client) -> None:
    client.get("/api/symbols")
    client.get("/api/ohlc/", params={"symbol": "NOPEUSDT"})
    client.get("/no/such/page")
    text = client.get("/metrics").text
    assert 'cryptostream_api_requests_total{method="GET",route="/api/symbols",status="200"}' in text
    assert 'cryptostream_api_requests_total{method="GET",route="/api/ohlc/",status="404"}' in text
    assert 'route="other",status="404"' in text and "/no/such/page" not in text
    assert 'cryptostream_api_request_seconds_bucket{le="0.015",method="GET",route="/api/symbols"}' in text


@pytest.mark.parametrize(
    "params",
    [
        {"end_date": "0001-01-01T00:00:00Z"},
        {"symbol": "BTCUSDT", "end_date": "0001-01-01T00:00:00Z"},
        {"symbol": "BTCUSDT", "start_date": "9999-12-31T23:59:59.999Z"},
    ],
)
@pytest.mark.parametrize("path", ["/api/ohlc/", "/api/volatility/"])
def test_bounds_at_the_ends_of_the_calendar_are_an_empty_answer_not_a_500(
    client: httpx.Client, path: str, params: dict[str, str]
) -> None:
    """Valid dates whose bucket edge lies beyond what a datetime holds (an end in year 1, a start at the
    last moment of 9999) were rounded past it: an OverflowError, a 500, a reset keep-alive connection."""
    answer = client.get(path, params=params)
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"] == []
    assert client.get("/health").status_code == 200  # the same connection serves on
