"""The processor against the real broker and the real database: exact candles in both sinks."""

from __future__ import annotations

import math

import orjson
import pyarrow as pa
import pytest

from cryptostream.models import PREDICTION_SCHEMA, Trade
from ingest.synthetic import SyntheticMarket
from processor.service import Processor
from processor.state import Histories
from tests.conftest import T0
from tests.integration.helpers import (
    db_candles,
    db_count,
    dlq_reasons,
    parquet_rows,
    read_topic,
    run_processor_until,
    sinks_for,
)
from tests.reference import assert_candles_equal, batch_candles, batch_volatility, rows_by_key

pytestmark = pytest.mark.integration

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT"]


async def test_disordered_duplicated_stream_lands_exactly_in_parquet_and_database(make_settings, produce, db):
    settings = make_settings(max_buffer_seconds=1.0, parquet_chunk_seconds=0.5, volatility_window_seconds=20)
    market = SyntheticMarket(SYMBOLS, rate=400, seed=11, disorder_ms=900, duplicate_rate=0.05)
    trades = market.generate(20_000, start_ms=T0)
    expected = batch_candles(trades)
    await produce(settings, trades)

    async def all_stored() -> bool:
        return await db_count(settings.database_dsn) >= len(expected)

    proc = await run_processor_until(settings, all_stored)
    assert proc.stats.late == 0 and proc.stats.rejected == 0
    assert_candles_equal(rows_by_key(await db_candles(db)), expected)
    assert_candles_equal(rows_by_key(parquet_rows(settings.output_dir)), expected)

    vol_expected = batch_volatility(expected, 20)
    vol_db = {
        (r["exchange"], r["symbol"], int(r["bucket"].timestamp() * 1000)): r["volatility"]
        for r in await db.fetch("SELECT exchange, symbol, bucket, volatility FROM volatility_1s")
    }
    assert vol_db.keys() == vol_expected.keys()
    assert all(math.isclose(vol_db[k], v, rel_tol=1e-7, abs_tol=1e-15) for k, v in vol_expected.items())
    vol_parquet = {
        k: r["volatility"] for k, r in rows_by_key(parquet_rows(settings.output_dir, "volatility")).items()
    }
    assert vol_parquet == vol_db


async def test_bad_records_are_dead_lettered_with_a_reason_and_never_stop_the_processor(
    make_settings, produce_raw, produce, db
):
    settings = make_settings(max_buffer_seconds=0.5, parquet_chunk_seconds=0.5)
    good = Trade("binance", "BTCUSDT", 100.0, 1.0, T0, 1, False).to_dict()
    bad = [
        b"{not json",
        b"",
        None,
        orjson.dumps([1, 2, 3]),
        orjson.dumps({k: v for k, v in good.items() if k != "price"}),
        orjson.dumps({**good, "price": "100.0"}),
        b'{"symbol":"BTCUSDT","price":NaN,"quantity":1,"timestamp":1700000000000,"trade_id":2,"is_buyer_maker":false}',
        orjson.dumps({**good, "price": -5.0}),
        orjson.dumps({**good, "quantity": -1.0}),
        orjson.dumps({**good, "symbol": "$$$"}),
        orjson.dumps({**good, "timestamp": T0 * 1000}),
        orjson.dumps({**good, "trade_id": "abc"}),
        b'{"symbol":"BTCUSDT","pad":"' + b"x" * 70_000 + b'"}',
        b"\xff\xfe binary",
    ]
    await produce_raw(settings, bad)
    await produce(
        settings,
        [Trade("binance", "BTCUSDT", 100.0 + i, 1.0, T0 + i * 100, 10 + i, False) for i in range(30)],
    )

    async def stored() -> bool:
        return await db_count(settings.database_dsn) >= 3

    proc = await run_processor_until(settings, stored)
    assert proc.stats.rejected == len(bad)
    dlq = await read_topic(settings, settings.kafka_dlq_topic, expect=len(bad))
    reasons = sorted(dlq_reasons(dlq))
    assert reasons == sorted(
        [
            "malformed_json",
            "malformed_json",
            "malformed_json",
            "not_an_object",
            "missing_field",
            "wrong_type",
            "malformed_json",
            "non_positive_price",
            "negative_quantity",
            "bad_symbol",
            "bad_timestamp",
            "wrong_type",
            "too_large",
            "malformed_json",
        ]
    )
    envelope = orjson.loads(dlq[0].value)
    assert (
        envelope["source"]["topic"] == settings.kafka_topic and "raw" in envelope or "raw_base64" in envelope
    )
    rows = await db_candles(db)
    assert [r["trade_count"] for r in rows] == [10, 10, 10]


async def test_late_trades_go_to_the_dead_letter_topic_and_leave_closed_candles_untouched(
    make_settings, produce, db
):
    settings = make_settings(max_buffer_seconds=1.0, parquet_chunk_seconds=0.5)
    on_time = [Trade("binance", "ETHUSDT", 10.0 + i, 1.0, T0 + i * 1000, i, False) for i in range(10)]
    late = Trade("binance", "ETHUSDT", 999.0, 5.0, T0 + 1500, 100, True)
    await produce(settings, [*on_time, late])

    async def stored() -> bool:
        return await db_count(settings.database_dsn) >= 10

    proc = await run_processor_until(settings, stored)
    assert proc.stats.late == 1
    dlq = await read_topic(settings, settings.kafka_dlq_topic, expect=1)
    assert dlq_reasons(dlq) == ["late"]
    assert orjson.loads(orjson.loads(dlq[0].value)["raw"])["trade_id"] == 100
    rows = rows_by_key(await db_candles(db))
    second = rows[("binance", "ETHUSDT", T0 + 1000)]
    assert second["high"] == 11.0 and second["trade_count"] == 1


def _scorer_failing_on(symbol: str):
    """A scorer predicting 0.5 for every new candle, raising whenever ``symbol`` is among the markets."""

    def score(histories: Histories) -> dict[str, pa.Table]:
        rows = []
        for exchange, market, history, n_new in histories:
            if market == symbol:
                raise FloatingPointError(f"model blew up on {market}")
            rows += [(exchange, market, int(b)) for b in history["bucket"][len(history["bucket"]) - n_new :]]
        n = len(rows)
        return {
            "predictions": pa.table(
                {
                    "exchange": [r[0] for r in rows],
                    "symbol": [r[1] for r in rows],
                    "bucket": pa.array([r[2] for r in rows], pa.timestamp("ms", tz="UTC")),
                    "horizon_seconds": pa.array([10] * n, pa.int32()),
                    "probability_up": [0.5] * n,
                    "label": ["down"] * n,
                    "model_version": ["v"] * n,
                },
                schema=PREDICTION_SCHEMA,
            )
        }

    return score


async def test_a_failing_scorer_costs_its_market_s_predictions_never_the_candles(make_settings, produce, db):
    """The model raising on one market (whatever else closed in the same pass) stops neither the processor
    nor the candles: every candle is stored, every other market's candle predicted, the failures counted."""
    settings = make_settings(max_buffer_seconds=1.0, parquet_chunk_seconds=0.5)
    trades = SyntheticMarket(["BTCUSDT", "ETHUSDT", "SOLUSDT"], rate=300, seed=5).generate(6_000, start_ms=T0)
    expected = batch_candles(trades)
    await produce(settings, trades)

    async def all_stored() -> bool:
        return await db_count(settings.database_dsn) >= len(expected)

    processor = Processor(settings, sinks_for(settings), scorers=[_scorer_failing_on("ETHUSDT")])
    await run_processor_until(settings, all_stored, processor=processor)
    assert_candles_equal(rows_by_key(await db_candles(db)), expected)
    predicted = {(r["symbol"], r["bucket"]) for r in await db.fetch("SELECT symbol, bucket FROM predictions")}
    candles = {(r["symbol"], r["bucket"]) for r in await db.fetch("SELECT symbol, bucket FROM ohlc_1s")}
    assert predicted == {k for k in candles if k[0] != "ETHUSDT"}
    eth = sum(1 for k in candles if k[0] == "ETHUSDT")
    assert processor.stats.prediction_failures > 0 and eth > 0
