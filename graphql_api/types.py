"""GraphQL types at the edge of the data path: one ``from_table`` per type, no logic."""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa
import strawberry

__all__ = ["Candle"]


@strawberry.type(description="One OHLCV candle. `bucket` is the window start (UTC).")
class Candle:
    symbol: str
    bucket: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float
    trade_count: int
    vwap: float
    buy_volume: float = strawberry.field(description="Volume bought by takers (aggressive buys).")
    sell_volume: float = strawberry.field(description="Volume sold by takers (aggressive sells).")

    @classmethod
    def from_table(cls, table: pa.Table) -> list[Candle]:
        return [cls(**row) for row in table.to_pylist()]
