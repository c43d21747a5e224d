"""The REST routes' column-wise JSON gives exactly the bytes of the straightforward row-dict serializer it
replaced (kept here as the reference): same keys, same order, same number and time formats, NaN and missing
values null, on the tricky inputs and on generated tables."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptostream.models import CANDLE_SCHEMA, VOLATILITY_SCHEMA
from graphql_api.rest import MARKET_FIELDS, OHLC_FIELDS, VOLATILITY_FIELDS, array_json, rows_json

T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z


def reference_rows(table: pa.Table, names: list[str]) -> bytes:
    """The serializer before: a dict per row of ``to_pylist()`` values, times via ``isoformat()``."""
    columns: list[list[Any]] = []
    for name in names:
        column = table["bucket" if name == "timestamp" else name]
        if pa.types.is_timestamp(column.type):
            columns.append([None if t is None else t.isoformat() for t in column.to_pylist()])
        else:
            columns.append(column.to_pylist())
    return orjson.dumps([dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)])


def candles(buckets: list[int | None], **columns: list[Any]) -> pa.Table:
    n = len(buckets)
    data: dict[str, Any] = {
        "exchange": ["binance"] * n,
        "symbol": ["BTCUSDT"] * n,
        "bucket": buckets,
        **{name: [100.0 + i for i in range(n)] for name in ("open", "high", "low", "close", "volume")},
        "trade_count": list(range(n)),
        **{name: [1.5] * n for name in ("vwap", "buy_volume", "sell_volume")},
    }
    data.update(columns)
    return pa.Table.from_pydict(data, schema=CANDLE_SCHEMA)


TRICKY = {
    "whole seconds": candles([T0, T0 + 1000, T0 + 2000]),
    "milliseconds": candles([T0 + 1, T0 + 999, T0 + 1000, T0 + 1_010, T0 + 1_100]),
    "before 1970 and year 1": candles([-1, -1_500, -62_135_596_800_000, 0]),
    "NaN, infinity and missing numbers": candles(
        [T0, T0 + 1000, T0 + 2000],
        open=[math.nan, None, -0.0],
        high=[math.inf, -math.inf, 1e300],
        low=[5e-324, 1e16, 0.1 + 0.2],
        vwap=[None, None, None],
        trade_count=[None, 3, None],
    ),
    "several venues and symbols, odd names": candles(
        [T0, T0, T0 + 1000, T0 + 1000],
        exchange=["binance", "coinbase", None, 'quo"te'],
        symbol=["BTCUSDT", "ÉTHUSDT", "a\\b\n", "BTCUSDT"],
    ),
    "one row": candles([T0 + 123]),
    "empty": candles([]),
}


@pytest.mark.parametrize("table", TRICKY.values(), ids=TRICKY.keys())
def test_candle_rows_are_the_reference_bytes(table: pa.Table) -> None:
    assert rows_json(table, OHLC_FIELDS) == reference_rows(table, OHLC_FIELDS)
    for name in ("bucket", "open", "exchange", "trade_count"):
        values = table[name].to_pylist()
        assert array_json(table[name]) == orjson.dumps(
            [v.isoformat() if isinstance(v, datetime) else v for v in values]
        )


def test_volatility_and_market_rows_are_the_reference_bytes() -> None:
    vol = pa.Table.from_pydict(
        {
            "exchange": ["unknown"] * 3,
            "symbol": ["BTCUSD"] * 3,
            "bucket": [T0, T0 + 1000, None],
            "volatility": [math.nan, 0.0025, None],
            "window_seconds": [None, 60, 10],
        },
        schema=VOLATILITY_SCHEMA,
    )
    assert rows_json(vol, VOLATILITY_FIELDS) == reference_rows(vol, VOLATILITY_FIELDS)
    markets = pa.table(
        {
            "exchange": ["binance", "synthetic"],
            "symbol": ["BTCUSDT", "BTCUSDT"],
            "demo": [False, True],
            "preferred": [True, None],
            "first_candle": pa.array([T0, None], pa.timestamp("ms", tz="UTC")),
            "last_candle": pa.array([T0 + 5, None], pa.timestamp("ms", tz="UTC")),
        }
    )
    assert rows_json(markets, MARKET_FIELDS) == reference_rows(markets, MARKET_FIELDS)


@pytest.mark.parametrize(
    "kind",
    [
        pa.timestamp("s", tz="UTC"),
        pa.timestamp("us", tz="UTC"),
        pa.timestamp("us"),  # naive: no offset, as isoformat() writes it
        pa.timestamp("ms", tz="+00:00"),
        pa.timestamp("ns", tz="UTC"),  # the per-row path
        pa.timestamp("ms", tz="Europe/Paris"),  # the per-row path
    ],
)
def test_time_units_and_zones_match_isoformat(kind: pa.TimestampType) -> None:
    ticks = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[kind.unit]
    values = [T0 // 1000 * ticks, T0 // 1000 * ticks + ticks // 7, -ticks - ticks // 3]
    table = pa.table({"bucket": pa.array(values, pa.int64()).cast(kind), "x": [1, 2, 3]})
    assert rows_json(table, ["timestamp", "x"]) == reference_rows(table, ["timestamp", "x"])


def test_chunked_columns_and_slices() -> None:
    table = pa.concat_tables([TRICKY["milliseconds"], TRICKY["NaN, infinity and missing numbers"]])
    for part in (table, table.slice(2, 4), table.slice(7)):
        assert rows_json(part, OHLC_FIELDS) == reference_rows(part, OHLC_FIELDS)


FLOATS = st.none() | st.floats(allow_nan=True, allow_infinity=True)
MS = st.integers(-62_135_596_800_000, 253_402_300_799_999)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            MS, st.sampled_from(["binance", "coinbase"]), FLOATS, FLOATS, st.none() | st.integers(0, 2**62)
        ),
        max_size=40,
    )
)
def test_generated_tables_match_the_reference(rows: list[tuple[int, str, Any, Any, int | None]]) -> None:
    columns = list(zip(*rows, strict=True)) or [[]] * 5
    n = len(rows)
    table = candles(
        list(columns[0]),
        exchange=list(columns[1]),
        open=list(columns[2]),
        vwap=list(columns[3]),
        trade_count=list(columns[4]),
        close=[float(i) / 3 for i in range(n)],
    )
    assert rows_json(table, OHLC_FIELDS) == reference_rows(table, OHLC_FIELDS)


def test_milliseconds_are_written_as_microseconds_with_the_utc_offset() -> None:
    table = candles([T0 + 250])
    (row,) = orjson.loads(rows_json(table, OHLC_FIELDS))
    assert row["timestamp"] == datetime.fromtimestamp((T0 + 250) / 1000, UTC).isoformat()
    assert row["timestamp"].endswith(".250000+00:00")
