"""The processor keeps the archive a handful of files: closed hours and days merged as event time passes.

Trades spanning three hours of event time (crossing a UTC day) go through the real broker and processor;
afterwards every closed hour of each market is one file in its ``date=`` folder, the closed day one file per
market and kind, only the open hour is still fresh, and the archive holds exactly the reference candles.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cryptostream import archive
from ingest.synthetic import SyntheticMarket
from tests.conftest import T0
from tests.integration.helpers import parquet_rows, run_processor_until
from tests.reference import assert_candles_equal, batch_candles, rows_by_key

pytestmark = pytest.mark.integration

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]


async def test_closed_hours_and_days_become_one_file_per_market(make_settings, produce):
    settings = make_settings(max_buffer_seconds=0.5, parquet_chunk_seconds=0.2)
    # T0 is 22:13:20 UTC: about 3 h 20 min of event time at ~1 trade/s reaches 01:33 the next day.
    trades = SyntheticMarket(SYMBOLS, rate=1, seed=11).generate(12_000, start_ms=T0)
    expected = batch_candles(trades)
    await produce(settings, trades)
    last = max(t.timestamp for t in trades)
    assert datetime.fromtimestamp(last / 1000, UTC).hour >= 1

    day = datetime.fromtimestamp(T0 / 1000, UTC).date()
    next_day = day + timedelta(days=1)

    async def stored_and_merged() -> bool:
        """Every candle stored and the closed hours merged, while the processor runs: a merge still
        running at the stop gets a few seconds, then is left to the next run (on a loaded machine it was)."""
        closed = [
            f
            for kind in ("ohlc", "volatility")
            for f in (
                *archive.fresh_files(settings.output_dir, kind, day),
                *archive.fresh_files(settings.output_dir, kind, next_day),
            )
            if not f.name.endswith("-h01.parquet")
        ]
        return not closed and len(parquet_rows(settings.output_dir)) >= len(expected)

    await run_processor_until(settings, stored_and_merged, timeout=180)

    assert_candles_equal(rows_by_key(parquet_rows(settings.output_dir)), expected)
    venue = trades[0].exchange
    for kind in ("ohlc", "volatility"):
        assert not archive.fresh_files(settings.output_dir, kind, day), "the closed day still has fresh files"
        for symbol in SYMBOLS:
            folder = archive.partition_dir(settings.output_dir, kind, venue, symbol, day)
            names = sorted(p.name for p in folder.glob("*.parquet"))
            assert len(names) == 1 and "-h" not in names[0], (kind, symbol, names)
            folder = archive.partition_dir(settings.output_dir, kind, venue, symbol, next_day)
            hours = sorted(p.name[:11] for p in folder.glob("*.parquet"))
            assert hours == ["compact-h00"], (kind, symbol, hours)  # hour 00 closed
        open_hour = archive.fresh_files(settings.output_dir, kind, next_day)
        assert open_hour and all(p.name.endswith("-h01.parquet") for p in open_hour)  # hour 01 still open
