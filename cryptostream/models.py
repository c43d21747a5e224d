"""The domain: a trade, a candle, and their columnar (Arrow/NumPy) forms.

One data path, one direction: exchange message -> :class:`Trade` -> Kafka record -> window ->
candle columns -> sinks -> read store -> API. Times are integer milliseconds since the epoch, UTC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

__all__ = [
    "CANDLE_SCHEMA",
    "INTERVALS",
    "KIND_SCHEMAS",
    "PREDICTION_SCHEMA",
    "TRADE_SCHEMA",
    "VOLATILITY_SCHEMA",
    "Trade",
    "TradeColumns",
]

# Intervals a reader can ask for, in milliseconds; 1 s candles are stored, the rest roll up from them.
INTERVALS: dict[str, int] = {
    "1s": 1_000,
    "1m": 60_000,
    "5m": 300_000,
    "15m": 900_000,
    "1h": 3_600_000,
    "1d": 86_400_000,
}


@dataclass(frozen=True, slots=True)
class Trade:
    """One executed trade, normalized.

    ``is_buyer_maker`` is True when the buyer's order rested on the book, i.e. the taker sold.
    ``received_at`` is when cryptostream received it (ms), so latency per stage can be measured.
    """

    exchange: str
    symbol: str
    price: float
    quantity: float
    timestamp: int
    trade_id: int
    is_buyer_maker: bool
    received_at: int | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The Kafka value shape (the seed's fields plus ``exchange`` and ``received_at``)."""
        out: dict[str, Any] = {
            "symbol": self.symbol,
            "price": self.price,
            "quantity": self.quantity,
            "timestamp": self.timestamp,
            "trade_id": self.trade_id,
            "is_buyer_maker": self.is_buyer_maker,
            "exchange": self.exchange,
        }
        if self.received_at is not None:
            out["received_at"] = self.received_at
        return out


@dataclass(slots=True)
class TradeColumns:
    """A batch of valid trades as parallel NumPy arrays (the processor's working form).

    ``symbol`` and ``exchange`` are small integer codes into ``symbols``/``exchanges``; ``offset`` is the
    Kafka offset each trade came from (-1 when not from Kafka).
    """

    symbols: list[str]
    exchanges: list[str]
    symbol: npt.NDArray[np.int32]
    exchange: npt.NDArray[np.int32]
    timestamp: npt.NDArray[np.int64]
    price: npt.NDArray[np.float64]
    quantity: npt.NDArray[np.float64]
    trade_id: npt.NDArray[np.int64]
    is_buyer_maker: npt.NDArray[np.bool_]
    offset: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.timestamp.shape[0])

    def take(self, index: npt.NDArray[Any] | slice) -> TradeColumns:
        """The rows at ``index`` (a boolean mask, integer positions, or a slice: views, no copy)."""
        return TradeColumns(
            symbols=self.symbols,
            exchanges=self.exchanges,
            symbol=self.symbol[index],
            exchange=self.exchange[index],
            timestamp=self.timestamp[index],
            price=self.price[index],
            quantity=self.quantity[index],
            trade_id=self.trade_id[index],
            is_buyer_maker=self.is_buyer_maker[index],
            offset=self.offset[index],
        )

    @classmethod
    def from_trades(cls, trades: list[Trade], offsets: list[int] | None = None) -> TradeColumns:
        """Columns of a list of :class:`Trade` (tests, replay and the synthetic source use this)."""
        symbols = sorted({t.symbol for t in trades})
        exchanges = sorted({t.exchange for t in trades})
        s_code = {s: i for i, s in enumerate(symbols)}
        e_code = {e: i for i, e in enumerate(exchanges)}
        n = len(trades)
        return cls(
            symbols=symbols,
            exchanges=exchanges,
            symbol=np.fromiter((s_code[t.symbol] for t in trades), np.int32, n),
            exchange=np.fromiter((e_code[t.exchange] for t in trades), np.int32, n),
            timestamp=np.fromiter((t.timestamp for t in trades), np.int64, n),
            price=np.fromiter((t.price for t in trades), np.float64, n),
            quantity=np.fromiter((t.quantity for t in trades), np.float64, n),
            trade_id=np.fromiter((t.trade_id for t in trades), np.int64, n),
            is_buyer_maker=np.fromiter((t.is_buyer_maker for t in trades), np.bool_, n),
            offset=np.asarray(offsets if offsets is not None else [-1] * n, dtype=np.int64),
        )


_TS = pa.timestamp("ms", tz="UTC")

TRADE_SCHEMA = pa.schema(
    [
        ("exchange", pa.string()),
        ("symbol", pa.string()),
        ("price", pa.float64()),
        ("quantity", pa.float64()),
        ("timestamp", pa.int64()),
        ("trade_id", pa.int64()),
        ("is_buyer_maker", pa.bool_()),
    ]
)

# A 1 s (or rolled-up) candle of one venue: ``exchange`` + ``symbol`` + ``bucket`` is its key. ``bucket`` is
# the window start; it holds the trades with bucket <= t < bucket + interval.
CANDLE_SCHEMA = pa.schema(
    [
        ("exchange", pa.string()),
        ("symbol", pa.string()),
        ("bucket", _TS),
        ("open", pa.float64()),
        ("high", pa.float64()),
        ("low", pa.float64()),
        ("close", pa.float64()),
        ("volume", pa.float64()),
        ("trade_count", pa.int64()),
        ("vwap", pa.float64()),
        ("buy_volume", pa.float64()),
        ("sell_volume", pa.float64()),
    ]
)

VOLATILITY_SCHEMA = pa.schema(
    [
        ("exchange", pa.string()),
        ("symbol", pa.string()),
        ("bucket", _TS),
        ("volatility", pa.float64()),
        ("window_seconds", pa.int32()),
    ]
)

PREDICTION_SCHEMA = pa.schema(
    [
        ("exchange", pa.string()),
        ("symbol", pa.string()),
        ("bucket", _TS),
        ("horizon_seconds", pa.int32()),
        ("probability_up", pa.float64()),
        ("label", pa.string()),
        ("model_version", pa.string()),
    ]
)

# What the archive and the database keep, by kind.
KIND_SCHEMAS: dict[str, pa.Schema] = {
    "ohlc": CANDLE_SCHEMA,
    "volatility": VOLATILITY_SCHEMA,
    "predictions": PREDICTION_SCHEMA,
}
