"""Crash anywhere, restart, and the stored candles equal the batch computation and every rejected record is
dead-lettered exactly once (SIGKILL, 5 times)."""

from __future__ import annotations

import math
from collections import Counter

import orjson
import pytest

from tests.conftest import T0
from tests.integration.crash import make_trades, run_crash_scenario
from tests.integration.helpers import db_candles, parquet_rows, read_topic
from tests.reference import assert_candles_equal, batch_candles, batch_volatility, rows_by_key

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_sigkill_five_times_mid_stream_loses_nothing_and_counts_nothing_twice(
    make_settings, produce, db, tmp_path
):
    settings = make_settings(
        max_buffer_seconds=1.0,
        parquet_chunk_seconds=0.7,
        kafka_session_timeout_ms=3000,
        volatility_window_seconds=30,
    )
    trades = make_trades(40_000, seed=5, start_ms=T0)
    expected = batch_candles(trades)
    report = await run_crash_scenario(
        settings,
        trades,
        produce,
        kills=5,
        seed=5,
        log=tmp_path / "proc.log",
        expected_candles=len(expected),
        timeout=120,
    )
    print(f"crash scenario: {report}")
    assert report.kills == 5
    assert_candles_equal(rows_by_key(await db_candles(db)), expected)
    assert_candles_equal(rows_by_key(parquet_rows(settings.output_dir)), expected)
    vol = {
        (r["exchange"], r["symbol"], int(r["bucket"].timestamp() * 1000)): r["volatility"]
        for r in await db.fetch("SELECT exchange, symbol, bucket, volatility FROM volatility_1s")
    }
    vol_expected = batch_volatility(expected, 30)
    assert vol.keys() == vol_expected.keys()
    assert all(math.isclose(vol[k], v, rel_tol=1e-7, abs_tol=1e-15) for k, v in vol_expected.items())
    log = (tmp_path / "proc.log").read_text()
    assert log.count("resuming at offset") >= 5, "restarts did not resume from checkpoints"
    letters = [
        orjson.loads(r.value) for r in await read_topic(settings, settings.kafka_dlq_topic, report.rejects)
    ]
    sources = Counter((e["source"]["partition"], e["source"]["offset"]) for e in letters)
    assert sources and set(sources.values()) == {1}, "a record was dead-lettered twice"
    assert len(sources) == report.rejects
    assert Counter(e["reason"] for e in letters) == {
        "late": report.rejects // 2,
        "non_positive_price": report.rejects // 2,
    }
