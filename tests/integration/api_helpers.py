"""Helpers of the API tests: store reference rows through the real database sink, talk GraphQL over HTTP,
and a naive roll-up of 1 s candles to compare coarser intervals against. Rows are keyed by market and
bucket, ``(exchange, symbol, bucket ms)``, as :mod:`tests.reference` keys them."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pyarrow as pa

from cryptostream.models import CANDLE_SCHEMA, PREDICTION_SCHEMA, VOLATILITY_SCHEMA
from cryptostream.settings import Settings, load_settings
from graphql_api.server import BackgroundServer
from ingest.synthetic import SyntheticMarket
from processor.sinks.base import FlushBatch, Lineage
from processor.sinks.postgres import PostgresSink
from tests.conftest import T0
from tests.reference import Key, batch_candles, batch_volatility

FIELDS = ("open", "high", "low", "close", "volume", "trade_count", "vwap", "buy_volume", "sell_volume")


def at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def iso(ms: int) -> str:
    return at(ms).isoformat()


def candle_table(candles: dict[Key, dict[str, Any]]) -> pa.Table:
    keys = sorted(candles)
    columns: dict[str, Any] = {
        "exchange": [k[0] for k in keys],
        "symbol": [k[1] for k in keys],
        "bucket": pa.array([k[2] for k in keys], pa.timestamp("ms", tz="UTC")),
    }
    for name in FIELDS:
        columns[name] = [candles[k][name] for k in keys]
    return pa.table(columns, schema=CANDLE_SCHEMA)


def volatility_table(values: dict[Key, float], window: int) -> pa.Table:
    keys = sorted(values)
    return pa.table(
        {
            "exchange": [k[0] for k in keys],
            "symbol": [k[1] for k in keys],
            "bucket": pa.array([k[2] for k in keys], pa.timestamp("ms", tz="UTC")),
            "volatility": [values[k] for k in keys],
            "window_seconds": pa.array([window] * len(keys), pa.int32()),
        },
        schema=VOLATILITY_SCHEMA,
    )


def prediction_table(
    rows: list[tuple[str, str, int, float]], horizon: int = 60, version: str = "test-1"
) -> pa.Table:
    """Predictions of ``(exchange, symbol, bucket ms, probability up)`` rows."""
    return pa.table(
        {
            "exchange": [r[0] for r in rows],
            "symbol": [r[1] for r in rows],
            "bucket": pa.array([r[2] for r in rows], pa.timestamp("ms", tz="UTC")),
            "horizon_seconds": pa.array([horizon] * len(rows), pa.int32()),
            "probability_up": [r[3] for r in rows],
            "label": ["up" if r[3] >= 0.5 else "down" for r in rows],
            "model_version": [version] * len(rows),
        },
        schema=PREDICTION_SCHEMA,
    )


async def truncate(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("TRUNCATE ohlc_1s, volatility_1s, predictions")
    finally:
        await conn.close()


async def store(dsn: str, **tables: pa.Table) -> None:
    """Write ``ohlc=``, ``volatility=``, ``predictions=`` tables through the processor's database sink."""
    sink = PostgresSink(dsn)
    await sink.start()
    try:
        await sink.write(FlushBatch(tables={0: dict(tables)}, lineage={0: Lineage("test", 1)}))
    finally:
        await sink.close()


def roll_up(candles: dict[Key, dict[str, Any]], interval_ms: int) -> dict[Key, dict[str, Any]]:
    """Naive roll-up of 1 s candles into ``interval_ms`` buckets (plain Python, for comparison)."""
    groups: dict[Key, list[tuple[int, dict[str, Any]]]] = {}
    for (exchange, symbol, bucket), c in candles.items():
        groups.setdefault((exchange, symbol, bucket - bucket % interval_ms), []).append((bucket, c))
    out: dict[Key, dict[str, Any]] = {}
    for key, rows in groups.items():
        rows.sort(key=lambda r: r[0])
        cs = [c for _, c in rows]
        volume = sum(c["volume"] for c in cs)
        notional = sum(c["vwap"] * c["volume"] for c in cs)
        out[key] = {
            "open": cs[0]["open"],
            "high": max(c["high"] for c in cs),
            "low": min(c["low"] for c in cs),
            "close": cs[-1]["close"],
            "volume": volume,
            "trade_count": sum(c["trade_count"] for c in cs),
            "vwap": notional / volume if volume > 0 else cs[-1]["close"],
            "buy_volume": sum(c["buy_volume"] for c in cs),
            "sell_volume": sum(c["sell_volume"] for c in cs),
        }
    return out


def graphql(client: httpx.Client, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    """POST a GraphQL request; the HTTP status must be 200 (GraphQL errors travel in the body)."""
    response = client.post("/graphql", json={"query": query, "variables": variables or {}})
    assert response.status_code == 200, f"HTTP {response.status_code}: {response.text[:500]}"
    body: dict[str, Any] = response.json()
    return body


def error_messages(body: dict[str, Any]) -> list[str]:
    return [e["message"] for e in body.get("errors") or []]


def of_market(rows: dict[Key, Any], exchange: str, symbol: str) -> dict[Key, Any]:
    """The rows of one market."""
    return {k: v for k, v in rows.items() if k[:2] == (exchange, symbol)}


def buckets(rows: dict[Key, Any], exchange: str, symbol: str) -> list[int]:
    """Sorted buckets (ms) of one market's rows."""
    return sorted(k[2] for k in of_market(rows, exchange, symbol))


SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]  # on binance, the first of EXCHANGES (binance,coinbase)
# The other markets seed_market stores, each for a rule of pick_venue (cryptostream.venues):
SECOND = ("coinbase", "BTCUSDT")  # BTCUSDT on two venues: symbol-only means the first of EXCHANGES
DEMO_ONLY = ("synthetic", "DOGEUSDT")  # the only venue of DOGEUSDT, demo or not
DEMO_LAST = [("synthetic", "ADAUSDT"), ("upbit", "ADAUSDT")]  # no preferred venue: real before demo


async def seed_market(dsn: str, without_volatility: tuple[str, ...] = ()) -> dict[str, Any]:
    """Empty the tables, then store ~5.5 minutes of a synthetic market of SYMBOLS on binance
    (+ ``without_volatility`` symbols, which get candles but no stored volatility) and shorter ones of
    the other markets above: candles and volatility computed by the naive reference, 30 predictions of
    binance's BTCUSDT and 10 of coinbase's. Returns what was stored."""
    trades = SyntheticMarket([*SYMBOLS, *without_volatility], rate=60, seed=5, exchange="binance").generate(
        20_000, start_ms=T0
    )
    for i, (exchange, symbol) in enumerate([SECOND, DEMO_ONLY, *DEMO_LAST]):
        market = SyntheticMarket([symbol], rate=10, seed=20 + i, exchange=exchange)
        trades += market.generate(1_500, start_ms=T0 + 500)
    candles = batch_candles(trades)
    volatility = {k: v for k, v in batch_volatility(candles, 20).items() if k[1] not in without_volatility}
    predictions = [("binance", "BTCUSDT", T0 + i * 1000, 0.25 + i / 100) for i in range(30)]
    predictions += [("coinbase", "BTCUSDT", T0 + i * 1000, 0.9 - i / 100) for i in range(10)]
    await truncate(dsn)
    await store(
        dsn,
        ohlc=candle_table(candles),
        volatility=volatility_table(volatility, 20),
        predictions=prediction_table(predictions),
    )
    return {"candles": candles, "volatility": volatility, "predictions": predictions}


def api_settings(database_url: str | None, tmp: Path, **overrides: Any) -> Settings:
    """Settings of an API on the test database without Kafka (no live feed)."""
    values: dict[str, Any] = {
        "kafka_bootstrap": None,
        "database_url": database_url,
        "symbols": SYMBOLS,
        "output_dir": tmp / "outputs",
        "model_dir": tmp / "models",
        "state_dir": tmp / "state",
        "api_max_limit": 10_000,
    }
    values.update(overrides)
    return load_settings(**values)


async def subscribers(server: BackgroundServer, n: int, timeout: float = 20) -> None:
    """Wait until the API serves ``n`` live subscriptions (they are registered, so nothing is missed)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as http:
        while (await http.get(f"{server.url}/health")).json()["subscribers"] != n:
            assert time.monotonic() < deadline, f"expected {n} subscribers"
            await asyncio.sleep(0.02)
