"""The original README's REST routes, Plotly figures, OpenAPI docs and Prometheus metrics, over real HTTP
against the real database."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from graphql_api.app import create_app
from graphql_api.server import BackgroundServer
from tests.integration.api_helpers import SYMBOLS, api_settings, iso, seed_market

pytestmark = pytest.mark.integration

NO_VOL = "XRPUSDT"  # has candles, no stored volatility: /api/volatility/ computes it (seed behaviour)


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


def _newest(seeded: dict[str, Any], symbol: str, n: int) -> list[int]:
    return sorted(b for s, b in seeded["candles"] if s == symbol)[-n:]


def test_ohlc_returns_the_seed_shape_newest_rows_oldest_first(
    client: httpx.Client, seeded: dict[str, Any]
) -> None:
    body = client.get("/api/ohlc/", params={"symbol": "BTCUSDT", "limit": 100}).json()
    assert body["count"] == 100 and body["symbol"] == "BTCUSDT"
    buckets = _newest(seeded, "BTCUSDT", 100)
    assert [row["timestamp"] for row in body["data"]] == [iso(b) for b in buckets]
    first = body["data"][0]
    expected = seeded["candles"][("BTCUSDT", buckets[0])]
    assert {k: first[k] for k in ("open", "high", "low", "close", "volume", "symbol")} == {
        **{k: expected[k] for k in ("open", "high", "low", "close", "volume")},
        "symbol": "BTCUSDT",
    }
    assert first["trade_count"] == expected["trade_count"]


def test_ohlc_dates_are_whole_utc_days_with_the_end_day_included(
    client: httpx.Client, seeded: dict[str, Any]
) -> None:
    everything = sum(1 for s, _ in seeded["candles"] if s == "ETHUSDT")
    same_day = client.get(
        "/api/ohlc/",
        params={"symbol": "ETHUSDT", "start_date": "2023-11-14", "end_date": "2023-11-14", "limit": 10000},
    ).json()
    assert same_day["count"] == everything
    later = client.get("/api/ohlc/", params={"symbol": "ETHUSDT", "start_date": "2023-11-15"}).json()
    assert later == {"data": [], "count": 0, "symbol": "ETHUSDT"}
    window = client.get(
        "/api/ohlc/",
        params={
            "symbol": "eth-usdt",
            "start_date": "2023-11-14T22:14:00Z",
            "end_date": "2023-11-14T22:15:00+00:00",
        },
    ).json()
    assert window["data"] and all("22:14:" in row["timestamp"] for row in window["data"])


def test_ohlc_without_a_symbol_mixes_all_symbols_newest_first_cut(client: httpx.Client) -> None:
    body = client.get("/api/ohlc/", params={"limit": 40}).json()
    assert body["count"] == 40 and body["symbol"] is None
    assert {row["symbol"] for row in body["data"]} == {*SYMBOLS, NO_VOL}
    assert [r["timestamp"] for r in body["data"]] == sorted(r["timestamp"] for r in body["data"])


def test_latest_ohlc_per_symbol(client: httpx.Client, seeded: dict[str, Any]) -> None:
    every = client.get("/api/ohlc/latest").json()["data"]
    assert sorted(row["symbol"] for row in every) == sorted([*SYMBOLS, NO_VOL])
    (sol,) = client.get("/api/ohlc/latest", params={"symbol": "SOLUSDT"}).json()["data"]
    assert sol["timestamp"] == iso(_newest(seeded, "SOLUSDT", 1)[0])


def test_volatility_comes_from_the_store_when_stored(client: httpx.Client, seeded: dict[str, Any]) -> None:
    body = client.get("/api/volatility/", params={"symbol": "ETHUSDT", "limit": 5}).json()
    assert body["source"] == "stored" and body["count"] == 5
    stored = sorted((b, v) for (s, b), v in seeded["volatility"].items() if s == "ETHUSDT")[-5:]
    assert [(r["timestamp"], r["volatility"]) for r in body["data"]] == [(iso(b), v) for b, v in stored]


def test_volatility_falls_back_to_a_calculation_from_ohlc(
    client: httpx.Client, seeded: dict[str, Any]
) -> None:
    body = client.get("/api/volatility/", params={"symbol": NO_VOL, "limit": 50}).json()
    assert body["source"] == "ohlc" and body["count"] == 50
    closes = [seeded["candles"][(NO_VOL, b)]["close"] for b in _newest(seeded, NO_VOL, 50)]
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
    assert client.get("/api/symbols").json() == {"symbols": sorted([*SYMBOLS, NO_VOL]), "count": 4}
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
    assert [t["name"] for t in figure["data"]] == ["BTCUSDT", "ETHUSDT"]
    assert all(len(t["y"]) == 30 for t in figure["data"])


@pytest.mark.parametrize(
    ("path", "params", "status", "detail"),
    [
        ("/api/ohlc/", {"symbol": "DOGEUSDT"}, 404, "unknown symbol 'DOGEUSDT'"),
        ("/api/ohlc/", {"symbol": "$$$"}, 400, "symbols look like BTCUSDT"),
        ("/api/ohlc/", {"symbol": "BTCUSDT", "limit": 0}, 422, None),
        ("/api/ohlc/", {"symbol": "BTCUSDT", "limit": 10_001}, 422, None),
        ("/api/ohlc/", {"symbol": "BTCUSDT", "limit": "ten"}, 422, None),
        ("/api/ohlc/", {"symbol": "BTCUSDT", "start_date": "14/11/2023"}, 400, "start_date must be a date"),
        (
            "/api/ohlc/",
            {"symbol": "BTCUSDT", "start_date": "2023-11-15", "end_date": "2023-11-13"},
            400,
            "from must not be after to",
        ),
        ("/api/volatility/", {"symbol": "BTCUSDT", "end_date": "2023-13-01"}, 400, "end_date must be a date"),
        ("/api/ohlc/latest", {"symbol": "NOPEUSDT"}, 404, "unknown symbol"),
        ("/api/viz/candlestick", {}, 422, None),
        ("/api/viz/candlestick", {"symbol": "DOGEUSDT"}, 404, "unknown symbol"),
        ("/api/viz/price-line", {"symbol": "BTCUSDT", "limit": -5}, 422, None),
        ("/api/viz/multi-symbol", {"symbols": ","}, 400, "at least one symbol"),
        ("/api/viz/multi-symbol", {"symbols": "BTCUSDT,DOGEUSDT"}, 404, "unknown symbol 'DOGEUSDT'"),
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


def test_openapi_docs_list_the_seed_routes(client: httpx.Client) -> None:
    assert "swagger" in client.get("/docs").text.lower()
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/ohlc/", "/api/ohlc/latest", "/api/volatility/", "/api/symbols", "/health"):
        assert path in paths
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
