"""The column-wise executor gives exactly what graphql-core's ordinary path gives, errors included."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pyarrow as pa
import pytest
import strawberry
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptostream.models import CANDLE_SCHEMA
from graphql_api.arrow import ArrowExecutor, PlainExecutor
from graphql_api.types import SCALARS, Candle, CandleColumns

TABLE: dict[str, pa.Table] = {}
RETURNED: list[Any] = []


@strawberry.type
class Query:
    @strawberry.field
    def candles(self) -> list[Candle]:
        RETURNED.append(Candle.from_table(TABLE["t"]))
        return RETURNED[-1]  # type: ignore[no-any-return]

    @strawberry.field
    def columns(self) -> CandleColumns:
        return CandleColumns.from_table("binance", "BTCUSDT", "1s", TABLE["t"])


def schema(executor: type[Any]) -> strawberry.Schema:
    return strawberry.Schema(
        query=Query,
        execution_context_class=executor,
        config=strawberry.schema.config.StrawberryConfig(scalar_map=SCALARS),
    )


FAST, PLAIN = schema(ArrowExecutor), schema(PlainExecutor)


def table(rows: list[tuple[float, float, int]]) -> pa.Table:
    n = len(rows)
    return pa.table(
        {
            "exchange": ["binance"] * n,
            "symbol": ["BTCUSDT"] * n,
            "bucket": pa.array(
                [1_700_000_000_000 + i * 1000 for i in range(n)], pa.timestamp("ms", tz="UTC")
            ),
            "open": [r[0] for r in rows],
            "high": [r[0] for r in rows],
            "low": [r[0] for r in rows],
            "close": [r[1] for r in rows],
            "volume": [r[1] for r in rows],
            "trade_count": [r[2] for r in rows],
            "vwap": [r[0] for r in rows],
            "buy_volume": [0.0] * n,
            "sell_volume": [r[1] for r in rows],
        },
        schema=CANDLE_SCHEMA,
    )


def run(query: str, rows: pa.Table) -> tuple[Any, Any]:
    TABLE["t"] = rows
    fast = asyncio.run(FAST.execute(query))
    plain = asyncio.run(PLAIN.execute(query))
    return (fast.data, [e.message for e in fast.errors or []]), (
        plain.data,
        [e.message for e in plain.errors or []],
    )


QUERIES = [
    "{ candles { exchange symbol bucket open high low close volume tradeCount vwap buyVolume sellVolume } }",
    "{ candles { __typename c: close close t: tradeCount ...F x: bucket @include(if: true) "
    "y: open @skip(if: true) } } fragment F on Candle { vwap bucket }",
    "{ candles { ... on Candle { symbol } } "
    "columns { exchange symbol count bucket close tradeCount c: volume } }",
    "{ a: candles { close } b: candles { open } }",
]

FINITE = st.floats(allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.tuples(FINITE, FINITE, st.integers(0, 2**31 - 1)), max_size=30),
    query=st.sampled_from(QUERIES),
)
def test_same_result_as_graphql_core(rows: list[tuple[float, float, int]], query: str) -> None:
    fast, plain = run(query, table(rows))
    assert fast == plain


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([(1.0, math.nan, 1)], "Float cannot represent non numeric value: nan"),
        ([(1.0, math.inf, 1)], "Float cannot represent non numeric value: inf"),
        ([(1.0, 2.0, 2**40)], "Int cannot represent non 32-bit signed integer value"),
    ],
)
def test_values_graphql_cannot_represent_fall_back_to_the_same_errors(
    rows: list[tuple[float, float, int]], message: str
) -> None:
    for query in QUERIES[:1] + ["{ columns { close tradeCount } }"]:
        fast, plain = run(query, table(rows))
        assert fast == plain and any(message in m for m in fast[1])


def test_nulls_fall_back_to_graphql_cores_error() -> None:
    rows = table([(1.0, 2.0, 3)]).set_column(6, "close", pa.array([None], pa.float64()))
    fast, plain = run("{ candles { close } }", rows)
    assert fast == plain and "Cannot return null for non-nullable field" in fast[1][0]


def test_nulls_of_nullable_fields_stay_null_on_the_fast_path() -> None:
    """Archives of the original project have no trade count, VWAP or sides: null, never made up."""
    rows = table([(1.0, 2.0, 3), (4.0, 5.0, 6), (7.0, 8.0, 9)])
    for name, kind in (("trade_count", pa.int64()), ("vwap", pa.float64()), ("sell_volume", pa.float64())):
        rows = rows.set_column(rows.schema.get_field_index(name), name, pa.array([None, None, None], kind))
    rows = rows.set_column(
        rows.schema.get_field_index("buy_volume"), "buy_volume", pa.array([1.5, None, 2.5])
    )
    RETURNED.clear()
    query = "{ candles { close tradeCount vwap buyVolume sellVolume } columns { tradeCount buyVolume } }"
    fast, plain = run(query, rows)
    assert fast == plain and fast[1] == []
    assert [c["buyVolume"] for c in fast[0]["candles"]] == [1.5, None, 2.5]
    assert fast[0]["columns"] == {"tradeCount": [None, None, None], "buyVolume": [1.5, None, 2.5]}
    assert RETURNED[0]._rows is None, "nulls of nullable fields keep the column-wise path"


def test_the_fast_path_builds_no_row_objects() -> None:
    RETURNED.clear()
    fast, plain = run(QUERIES[1], table([(1.0, 2.0, 3), (4.0, 5.0, 6)]))
    assert fast == plain
    assert RETURNED[0]._rows is None, "the executor completed the rows from the columns"
    assert RETURNED[1]._rows is not None, "graphql-core's path iterates row objects"


def test_sub_second_times_are_written_as_graphql_core_writes_them() -> None:
    rows = table([(1.0, 2.0, 3), (4.0, 5.0, 6)])
    shifted = pa.array([1_700_000_000_500, 1_700_000_001_000], pa.timestamp("ms", tz="UTC"))
    fast, plain = run("{ candles { bucket } }", rows.set_column(2, "bucket", shifted))
    assert fast == plain and fast[0]["candles"][0]["bucket"] == "2023-11-14T22:13:20.500000+00:00"
