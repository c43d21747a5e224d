"""Without a database the API reads the Parquet archive (written here by the processor's Parquet sink):
same answers, coarser intervals rolled up from the archived seconds."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from cryptostream.procs import free_port
from graphql_api.app import create_app
from graphql_api.server import BackgroundServer
from ingest.synthetic import SyntheticMarket
from processor.model import registry
from processor.sinks.base import FlushBatch, Lineage
from processor.sinks.parquet import ParquetSink
from tests.conftest import T0
from tests.integration.api_helpers import SYMBOLS, api_settings, candle_table, graphql, roll_up
from tests.reference import Key, assert_candles_equal, batch_candles

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def archived(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[Key, dict[str, Any]]]:
    root = tmp_path_factory.mktemp("archive") / "outputs"
    candles = batch_candles(SyntheticMarket(SYMBOLS, rate=30, seed=4).generate(6_000, start_ms=T0))
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
    return {
        (r["symbol"], int(datetime.fromisoformat(r["bucket"]).timestamp() * 1000)): {
            **r,
            "trade_count": r["tradeCount"],
            "buy_volume": r["buyVolume"],
            "sell_volume": r["sellVolume"],
        }
        for r in rows
    }


@pytest.mark.parametrize(("interval", "ms"), [("1s", 1_000), ("1m", 60_000)])
def test_archive_backed_candles_equal_the_reference(
    client: httpx.Client, archived: tuple[Path, dict[Key, dict[str, Any]]], interval: str, ms: int
) -> None:
    _, candles = archived
    fields = "symbol bucket open high low close volume tradeCount vwap buyVolume sellVolume"
    body = graphql(
        client, f'{{ candles(symbol: "SOLUSDT", interval: "{interval}", limit: 10000) {{ {fields} }} }}'
    )
    assert "errors" not in body, body
    expected = roll_up({k: v for k, v in candles.items() if k[0] == "SOLUSDT"}, ms)
    assert_candles_equal(_rows(body["data"]["candles"]), expected)


def test_archive_backed_rest_and_health(
    client: httpx.Client, archived: tuple[Path, dict[Key, dict[str, Any]]]
) -> None:
    assert client.get("/api/symbols").json()["symbols"] == sorted(SYMBOLS)
    assert client.get("/api/ohlc/", params={"symbol": "BTCUSDT", "limit": 5}).json()["count"] == 5
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
