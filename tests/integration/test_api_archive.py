"""Without a database the API reads the Parquet archive (written here by the processor's Parquet sink):
same answers, each venue's series apart, coarser intervals rolled up from the archived seconds. An archive
the original course project wrote (no venue, several partial rows per second, NaN volatility) is served as
the ``unknown`` venue, merged per second, without a 500."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cryptostream.procs import free_port
from graphql_api.app import create_app
from graphql_api.server import BackgroundServer
from ingest.synthetic import SyntheticMarket
from processor.model import registry
from processor.sinks.base import FlushBatch, Lineage
from processor.sinks.parquet import ParquetSink
from tests.conftest import T0
from tests.integration.api_helpers import (
    SYMBOLS,
    api_settings,
    candle_table,
    graphql,
    iso,
    of_market,
    roll_up,
)
from tests.reference import Key, assert_candles_equal, batch_candles, rows_by_key

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def archived(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[Key, dict[str, Any]]]:
    root = tmp_path_factory.mktemp("archive") / "outputs"
    trades = SyntheticMarket(SYMBOLS, rate=30, seed=4, exchange="binance").generate(6_000, start_ms=T0)
    trades += SyntheticMarket(["SOLUSDT"], rate=10, seed=8, exchange="coinbase").generate(2_000, start_ms=T0)
    candles = batch_candles(trades)
    sink = ParquetSink(root)

    async def write() -> None:
        await sink.start()
        await sink.write(
            FlushBatch(tables={0: {"ohlc": candle_table(candles)}}, lineage={0: Lineage("ab12", 1)})
        )
        await sink.close()

    asyncio.run(write())
    return root, candles


@pytest.fixture(scope="module")
def client(
    archived: tuple[Path, dict[Key, dict[str, Any]]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    root, _ = archived
    settings = api_settings(None, tmp_path_factory.mktemp("api"), output_dir=root)
    with (
        BackgroundServer(create_app(settings)) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        yield http


def _rows(rows: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    return rows_by_key(
        {
            **r,
            "bucket": datetime.fromisoformat(r["bucket"]),
            "trade_count": r["tradeCount"],
            "buy_volume": r["buyVolume"],
            "sell_volume": r["sellVolume"],
        }
        for r in rows
    )


@pytest.mark.parametrize(("interval", "ms"), [("1s", 1_000), ("1m", 60_000)])
@pytest.mark.parametrize("exchange", ["binance", "coinbase"])
def test_archive_backed_candles_of_each_venue_equal_its_reference(
    client: httpx.Client,
    archived: tuple[Path, dict[Key, dict[str, Any]]],
    interval: str,
    ms: int,
    exchange: str,
) -> None:
    _, candles = archived
    fields = "exchange symbol bucket open high low close volume tradeCount vwap buyVolume sellVolume"
    body = graphql(
        client,
        f'{{ candles(symbol: "SOLUSDT", exchange: "{exchange}", interval: "{interval}", limit: 10000) '
        f"{{ {fields} }} }}",
    )
    assert "errors" not in body, body
    expected = roll_up(of_market(candles, exchange, "SOLUSDT"), ms)
    assert_candles_equal(_rows(body["data"]["candles"]), expected)


def test_archive_backed_rest_and_health(
    client: httpx.Client, archived: tuple[Path, dict[Key, dict[str, Any]]]
) -> None:
    _, candles = archived
    assert client.get("/api/symbols").json()["symbols"] == sorted(SYMBOLS)
    assert client.get("/api/ohlc/", params={"symbol": "BTCUSDT", "limit": 5}).json()["count"] == 5
    for exchange in ("binance", "coinbase"):  # SOLUSDT alone: binance, the first of EXCHANGES
        params: dict[str, str | int] = {"symbol": "SOLUSDT", "limit": 10_000}
        if exchange != "binance":
            params["exchange"] = exchange
        body = client.get("/api/ohlc/", params=params).json()
        got = rows_by_key({**r, "bucket": datetime.fromisoformat(r["timestamp"])} for r in body["data"])
        assert body["exchange"] == exchange
        assert_candles_equal(got, of_market(candles, exchange, "SOLUSDT"))
    markets = {(m["exchange"], m["symbol"]) for m in client.get("/api/markets").json()["markets"]}
    assert {("binance", s) for s in SYMBOLS} | {("coinbase", "SOLUSDT")} <= markets
    health = client.get("/health").json()
    assert health["store"] == "parquet" and health["status"] == "healthy"


def test_cors_allows_only_the_configured_origins(
    archived: tuple[Path, dict[Key, dict[str, Any]]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    root, _ = archived
    settings = api_settings(
        None,
        tmp_path_factory.mktemp("cors"),
        output_dir=root,
        cors_origins="https://dash.example,http://localhost:3000",
    )
    with BackgroundServer(create_app(settings)) as server:
        for origin, allowed in (("https://dash.example", True), ("https://evil.example", False)):
            response = httpx.options(
                f"{server.url}/graphql",
                headers={"origin": origin, "access-control-request-method": "POST"},
            )
            assert (response.headers.get("access-control-allow-origin") == origin) is allowed
            simple = httpx.get(f"{server.url}/api/symbols", headers={"origin": origin})
            assert (simple.headers.get("access-control-allow-origin") == origin) is allowed


def test_an_unreachable_broker_degrades_health_but_queries_keep_working(
    archived: tuple[Path, dict[Key, dict[str, Any]]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    root, _ = archived
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    settings = api_settings(None, tmp_path_factory.mktemp("nokafka"), output_dir=root, kafka_bootstrap=dead)
    with (
        BackgroundServer(create_app(settings)) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        health = http.get("/health").json()
        assert health["status"] == "degraded" and health["live_feed"] is False
        assert graphql(http, "{ pipelineStatus { live } }")["data"]["pipelineStatus"] == {"live": False}
        assert graphql(http, "{ symbols }")["data"]["symbols"] == sorted(SYMBOLS)


def test_model_report_is_the_stored_report_or_null(
    archived: tuple[Path, dict[Key, dict[str, Any]]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    root, _ = archived
    tmp = tmp_path_factory.mktemp("model")
    settings = api_settings(None, tmp, output_dir=root)
    with BackgroundServer(create_app(settings)) as server, httpx.Client(base_url=server.url) as http:
        assert graphql(http, "{ modelReport }")["data"] == {"modelReport": None}
        report = {
            "format": registry.REPORT_FORMAT,
            "selected_model": "logit",
            "verdict": {"summary": "weak edge"},
        }
        registry.save(settings.model_dir, {"version": "v1", "format": registry.MODEL_FORMAT}, report)
        assert graphql(http, "{ modelReport }")["data"] == {"modelReport": report}
        (settings.model_dir / "v1.report.json").write_text("{broken")
        body = graphql(http, "{ modelReport }")
        assert body["errors"][0]["extensions"]["code"] == "MODEL_REPORT_UNREADABLE"


SECOND = T0 - T0 % 1000  # 2023-11-14T22:13:20Z
ORIGINAL_ROWS = [  # (time ms, open, high, low, close, volume): partial candles, as the original emitted them
    (SECOND + 120, 100.0, 105.0, 99.0, 104.0, 1.0),
    (SECOND + 870, 104.0, 107.0, 103.0, 106.0, 0.5),  # the same second again, over later trades
    (SECOND + 1_300, 106.0, 106.5, 105.5, 106.2, 2.0),
]


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """An API on an archive shaped like the original course project's: ``ohlc/symbol=BTCUSD/date=D/x.parquet``
    with ``timestamp, open, high, low, close, volume, symbol`` (pandas' naive nanosecond times), and
    ``volatility/...`` with ``timestamp, volatility, symbol`` and NaN where it was undefined."""
    root = tmp_path_factory.mktemp("original") / "outputs"
    day = root / "ohlc" / "symbol=BTCUSD" / "date=2023-11-14"
    day.mkdir(parents=True)
    times = pa.array([r[0] * 1_000_000 for r in ORIGINAL_ROWS], pa.timestamp("ns"))
    columns = {"timestamp": times}
    for i, name in enumerate(("open", "high", "low", "close", "volume"), start=1):
        columns[name] = pa.array([r[i] for r in ORIGINAL_ROWS], pa.float64())
    columns["symbol"] = pa.array(["BTCUSD"] * len(ORIGINAL_ROWS))
    pq.write_table(pa.table(columns), day / "x.parquet")
    vol_day = root / "volatility" / "symbol=BTCUSD" / "date=2023-11-14"
    vol_day.mkdir(parents=True)
    volatility = {
        "timestamp": times,
        "volatility": pa.array([math.nan, math.nan, 0.0025]),
        "symbol": pa.array(["BTCUSD"] * 3),
    }
    pq.write_table(pa.table(volatility), vol_day / "x.parquet")
    settings = api_settings(None, tmp_path_factory.mktemp("original-api"), output_dir=root)
    with (
        BackgroundServer(create_app(settings)) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        yield http


MERGED = [  # first open, max high, min low, last close, summed volume; what the file lacks is null
    {
        "exchange": "unknown",
        "timestamp": iso(SECOND),
        "open": 100.0,
        "high": 107.0,
        "low": 99.0,
        "close": 106.0,
        "volume": 1.5,
        "symbol": "BTCUSD",
        "trade_count": None,
        "vwap": None,
        "buy_volume": None,
        "sell_volume": None,
    },
    {
        "exchange": "unknown",
        "timestamp": iso(SECOND + 1000),
        "open": 106.0,
        "high": 106.5,
        "low": 105.5,
        "close": 106.2,
        "volume": 2.0,
        "symbol": "BTCUSD",
        "trade_count": None,
        "vwap": None,
        "buy_volume": None,
        "sell_volume": None,
    },
]


def test_the_original_projects_archive_is_served_merged_per_second_with_unknown_fields_null(
    original: httpx.Client,
) -> None:
    ohlc = original.get("/api/ohlc/", params={"symbol": "BTCUSD"})
    assert ohlc.status_code == 200, ohlc.text
    assert ohlc.json() == {"data": MERGED, "count": 2, "symbol": "BTCUSD", "exchange": "unknown"}
    latest = original.get("/api/ohlc/latest", params={"symbol": "btc-usd"})
    assert latest.status_code == 200 and latest.json() == {"data": [MERGED[-1]]}
    assert original.get("/api/ohlc/latest").json() == {"data": [MERGED[-1]]}
    vol = original.get("/api/volatility/", params={"symbol": "BTCUSD"})
    assert vol.status_code == 200, vol.text
    assert vol.json() == {  # the NaN second has no value; the stored one is shown as stored
        "data": [
            {
                "exchange": "unknown",
                "timestamp": iso(SECOND + 1000),
                "volatility": 0.0025,
                "symbol": "BTCUSD",
                "window_seconds": None,
            }
        ],
        "count": 1,
        "symbol": "BTCUSD",
        "exchange": "unknown",
        "source": "stored",
    }
    for route in ("candlestick", "price-line", "volume", "volatility"):
        figure = original.get(f"/api/viz/{route}", params={"symbol": "BTCUSD"})
        assert figure.status_code == 200, (route, figure.text)
    candlestick = original.get("/api/viz/candlestick", params={"symbol": "BTCUSD"}).json()
    assert candlestick["data"][0]["open"] == [100.0, 106.0] and candlestick["data"][0]["close"] == [
        106.0,
        106.2,
    ]
    assert candlestick["layout"]["title"]["text"] == "BTCUSD · unknown Price Chart (Candlestick)"


def test_the_original_projects_archive_through_graphql(original: httpx.Client) -> None:
    body = graphql(
        original,
        '{ candles(symbol: "BTCUSD") { exchange bucket open high low close volume tradeCount vwap buyVolume '
        'sellVolume } candleColumns(symbol: "BTCUSD", interval: "1m") { exchange count open close volume '
        'tradeCount vwap } volatility(symbol: "BTCUSD") { exchange bucket volatility windowSeconds } '
        "markets { exchange symbol demo preferred firstCandle lastCandle } }",
    )
    assert "errors" not in body, body["errors"]
    data = body["data"]
    assert data["candles"] == [
        {
            "exchange": "unknown",
            "bucket": row["timestamp"],
            **{k: row[k] for k in ("open", "high", "low", "close", "volume")},
            "tradeCount": None,
            "vwap": None,
            "buyVolume": None,
            "sellVolume": None,
        }
        for row in MERGED
    ]
    assert data["candleColumns"] == {  # the minute rolls up the merged seconds; unknown sums stay null
        "exchange": "unknown",
        "count": 1,
        "open": [100.0],
        "close": [106.2],
        "volume": [3.5],
        "tradeCount": [None],
        "vwap": [None],
    }
    assert data["volatility"] == [
        {"exchange": "unknown", "bucket": iso(SECOND), "volatility": None, "windowSeconds": None},
        {"exchange": "unknown", "bucket": iso(SECOND + 1000), "volatility": 0.0025, "windowSeconds": None},
    ]
    assert {"exchange": "unknown", "symbol": "BTCUSD", "demo": False, "preferred": True} | {
        "firstCandle": iso(SECOND),
        "lastCandle": iso(SECOND + 1000),
    } in data["markets"]
