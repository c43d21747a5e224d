"""The real API keeps a REST answer for API_CACHE_SECONDS: a candle stored meanwhile shows only in another
question or once the answer has aged out; CORS headers still follow each request's origin; 0 keeps nothing.
(The cache's own rules, with a clock the test moves: tests/unit/test_api_cache.py.)"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from cryptostream.settings import Settings
from graphql_api.app import create_app
from graphql_api.server import BackgroundServer
from processor.sinks.base import FlushBatch, Lineage
from processor.sinks.parquet import ParquetSink
from tests.conftest import T0
from tests.integration.api_helpers import api_settings, candle_table

pytestmark = pytest.mark.integration


def _candle(second: int, close: float) -> dict[tuple[str, str, int], dict[str, float | int]]:
    values = {"open": close, "high": close, "low": close, "close": close, "volume": 1.0, "trade_count": 1}
    return {
        ("binance", "BTCUSDT", T0 + second * 1000): {
            **values,
            "vwap": close,
            "buy_volume": 1.0,
            "sell_volume": 0.0,
        }
    }


def _store(root: Path, seq: int, second: int, close: float) -> None:
    async def write() -> None:
        sink = ParquetSink(root)
        await sink.start()
        table = candle_table(_candle(second, close))
        await sink.write(FlushBatch(tables={0: {"ohlc": table}}, lineage={0: Lineage("ab12", seq)}))
        await sink.close()

    asyncio.run(write())


def _settings(tmp: Path, seconds: float) -> Settings:
    return api_settings(
        None, tmp, api_cache_seconds=seconds, cors_origins=["https://a.example", "https://b.example"]
    )


def test_an_answer_is_kept_for_its_seconds_and_cors_follows_each_origin(tmp_path: Path) -> None:
    settings = _settings(tmp_path, 3600)
    _store(settings.output_dir, 1, 0, 100.0)
    latest = "/api/ohlc/latest?symbol=BTCUSDT"
    with BackgroundServer(create_app(settings)) as server, httpx.Client(base_url=server.url) as http:
        first = http.get(latest, headers={"origin": "https://a.example"})
        assert first.status_code == 200 and first.json()["data"][0]["close"] == 100.0
        assert first.headers["access-control-allow-origin"] == "https://a.example"
        _store(settings.output_dir, 2, 1, 101.0)
        kept = http.get(latest, headers={"origin": "https://b.example"})
        assert kept.content == first.content  # the same answer, for an hour
        assert kept.headers["access-control-allow-origin"] == "https://b.example"
        # the kept answer's headers are not those of the last asker: CORS edited them in place, so an
        # origin not allowed (or none) got the first asker's, and every hit added one more "Vary: Origin"
        for _ in range(20):
            http.get(latest, headers={"origin": "https://a.example"})
        for origin in ({"origin": "https://evil.example"}, {}):
            answer = http.get(latest, headers=origin)
            assert answer.content == first.content
            assert "access-control-allow-origin" not in answer.headers, (origin, answer.headers)
            assert answer.headers.get("vary", "").lower().count("origin") <= 1, answer.headers
        other = http.get(latest + "&exchange=binance")  # another question is answered from the store
        assert other.json()["data"][0]["close"] == 101.0


def test_zero_seconds_answers_every_request_from_the_store(tmp_path: Path) -> None:
    settings = _settings(tmp_path, 0)
    _store(settings.output_dir, 1, 0, 100.0)
    latest = "/api/ohlc/latest?symbol=BTCUSDT"
    with BackgroundServer(create_app(settings)) as server, httpx.Client(base_url=server.url) as http:
        assert http.get(latest).json()["data"][0]["close"] == 100.0
        _store(settings.output_dir, 2, 1, 101.0)
        assert http.get(latest).json()["data"][0]["close"] == 101.0
