"""GraphQL types at the edge of the data path: one ``from_*`` per type, no logic beyond conversion.

Times are ``DateTime`` (ISO 8601, UTC) on objects; the columnar form carries epoch milliseconds as
``Long`` so a chart can use them directly. ``Long`` exists because GraphQL's ``Int`` is 32-bit and
cumulative counts and epoch milliseconds are not.

Every object belongs to a market: a venue (``exchange``) and a symbol. A candle's trade count, VWAP and
buy/sell volume are nullable: archives of the original course project did not record them, and they are
shown as unknown rather than made up.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NewType, cast

import pyarrow as pa
import pyarrow.compute as pc
import strawberry

from graphql_api.arrow import ArrowColumn, ArrowRows, LiveEvent
from graphql_api.rollup import Bar
from graphql_api.status import FeedReport, StatusSnapshot

__all__ = [
    "Candle",
    "CandleColumns",
    "CandleUpdate",
    "Long",
    "Market",
    "SCALARS",
    "PartitionStatus",
    "PipelineStatus",
    "Prediction",
    "ProcessorStatus",
    "ReasonCount",
    "SymbolStatus",
    "Volatility",
    "from_ms",
]

Long = NewType("Long", int)
LONG_SCALAR = strawberry.scalar(
    name="Long",
    description="A 64-bit integer, sent as a JSON number (exact up to 2^53).",
    serialize=int,
    parse_value=int,
)
SCALARS: dict[object, Any] = {Long: LONG_SCALAR}  # for StrawberryConfig(scalar_map=...)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


VENUE = (
    "The venue: an exchange (binance, coinbase), `synthetic` (demo data of `cryptostream up --source "
    "synthetic`, not a real market) or `unknown` (trades without an exchange, candles stored before venues "
    "were kept apart)."
)
UNRECORDED = " Null where the source did not record it (archives of the original project)."


@strawberry.type(
    description="A market: one venue's trading in one symbol, with the span of its stored candles."
)
class Market:
    exchange: str = strawberry.field(description=VENUE)
    symbol: str
    demo: bool = strawberry.field(description="True for the synthetic venue: demo data, not a real market.")
    preferred: bool = strawberry.field(
        description="True for the venue a request naming only this symbol gets: the only venue with the "
        "symbol, else the first of EXCHANGES that has it, else the first real venue by name."
    )
    first_candle: datetime | None = strawberry.field(
        description="The oldest stored candle's bucket; null when nothing is stored yet."
    )
    last_candle: datetime | None = strawberry.field(
        description="The newest stored candle's bucket (as of the API's last look at the store, at most "
        "5 s ago); null when nothing is stored yet."
    )

    @classmethod
    def from_table(cls, table: pa.Table) -> list[Market]:
        return cast("list[Market]", ArrowRows(table, cls))


@strawberry.type(description="One OHLCV candle of one market. `bucket` is the window start (UTC).")
class Candle:
    exchange: str = strawberry.field(description=VENUE)
    symbol: str
    bucket: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float
    trade_count: int | None = strawberry.field(description="Trades in the window." + UNRECORDED)
    vwap: float | None = strawberry.field(description="Volume-weighted average price." + UNRECORDED)
    buy_volume: float | None = strawberry.field(
        description="Volume bought by takers (aggressive buys)." + UNRECORDED
    )
    sell_volume: float | None = strawberry.field(
        description="Volume sold by takers (aggressive sells)." + UNRECORDED
    )

    @classmethod
    def from_table(cls, table: pa.Table) -> list[Candle]:
        return cast("list[Candle]", ArrowRows(table, cls))


@strawberry.type(
    description="Candles as parallel arrays, one per field (what a chart wants; cheap for 10,000 rows). "
    "`bucket[i]` is the window start of row i in epoch milliseconds, UTC."
)
class CandleColumns:
    exchange: str = strawberry.field(description=VENUE)
    symbol: str
    interval: str
    count: int
    bucket: list[Long]
    open: list[float]
    high: list[float]
    low: list[float]
    close: list[float]
    volume: list[float]
    trade_count: list[int | None] = strawberry.field(description="Trades per window." + UNRECORDED)
    vwap: list[float | None] = strawberry.field(description="Volume-weighted average prices." + UNRECORDED)
    buy_volume: list[float | None] = strawberry.field(description="Taker buy volumes." + UNRECORDED)
    sell_volume: list[float | None] = strawberry.field(description="Taker sell volumes." + UNRECORDED)

    @classmethod
    def from_table(cls, exchange: str, symbol: str, interval: str, table: pa.Table) -> CandleColumns:
        columns: dict[str, Any] = {
            name: ArrowColumn(table[name])
            for name in (
                "open",
                "high",
                "low",
                "close",
                "volume",
                "trade_count",
                "vwap",
                "buy_volume",
                "sell_volume",
            )
        }
        return cls(
            exchange=exchange,
            symbol=symbol,
            interval=interval,
            count=table.num_rows,
            bucket=cast("list[Long]", ArrowColumn(table["bucket"].cast(pa.int64()))),
            **columns,
        )


@strawberry.type(description="A live candle: the current state of an open window, or its final state.")
class CandleUpdate(LiveEvent):
    exchange: str = strawberry.field(description=VENUE)
    symbol: str
    interval: str
    closed: bool = strawberry.field(
        description="True once the window is final; false while trades still come."
    )
    bucket: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float
    trade_count: int
    vwap: float
    buy_volume: float
    sell_volume: float

    @classmethod
    def from_bar(cls, exchange: str, symbol: str, interval: str, bar: Bar, closed: bool) -> CandleUpdate:
        return cls(
            exchange=exchange,
            symbol=symbol,
            interval=interval,
            closed=closed,
            bucket=from_ms(bar.bucket),
            open=bar.open,
            high=bar.high,
            low=bar.low,
            close=bar.close,
            volume=bar.volume,
            trade_count=bar.trade_count,
            vwap=bar.vwap,
            buy_volume=bar.buy_volume,
            sell_volume=bar.sell_volume,
        )


@strawberry.type(description="Standard deviation of 1 s log returns over the trailing window, per second.")
class Volatility(LiveEvent):
    exchange: str = strawberry.field(description=VENUE)
    symbol: str
    bucket: datetime
    volatility: float | None = strawberry.field(
        description="Null where it is undefined (archives of the original project stored NaN there)."
    )
    window_seconds: int | None = strawberry.field(description="The trailing window." + UNRECORDED)

    @classmethod
    def from_table(cls, table: pa.Table) -> list[Volatility]:
        values = table["volatility"]
        defined = pc.if_else(pc.is_nan(values), pa.scalar(None, values.type), values)
        at = table.schema.get_field_index("volatility")
        return cast("list[Volatility]", ArrowRows(table.set_column(at, "volatility", defined), cls))

    @classmethod
    def from_message(cls, m: dict[str, Any]) -> Volatility:
        return cls(
            exchange=m["exchange"],
            symbol=m["symbol"],
            bucket=datetime.fromisoformat(m["bucket"]),
            volatility=float(m["volatility"]),
            window_seconds=int(m["window_seconds"]),
        )


@strawberry.type(description="The trend model's probability that the close rises over the horizon.")
class Prediction(LiveEvent):
    exchange: str = strawberry.field(description=VENUE)
    symbol: str
    bucket: datetime
    horizon_seconds: int
    probability_up: float
    label: str
    model_version: str

    @classmethod
    def from_table(cls, table: pa.Table) -> list[Prediction]:
        return cast("list[Prediction]", ArrowRows(table, cls))

    @classmethod
    def from_message(cls, m: dict[str, Any]) -> Prediction:
        return cls(
            exchange=m["exchange"],
            symbol=m["symbol"],
            bucket=datetime.fromisoformat(m["bucket"]),
            horizon_seconds=int(m["horizon_seconds"]),
            probability_up=float(m["probability_up"]),
            label=str(m["label"]),
            model_version=str(m["model_version"]),
        )


@strawberry.type
class ReasonCount:
    reason: str
    count: Long


@strawberry.type(description="One partition of the trades topic as its owner last reported it.")
class PartitionStatus:
    partition: int
    processor: str
    position: Long | None
    end: Long | None = strawberry.field(description="Log end offset.")
    lag: Long | None = strawberry.field(description="Records not read yet.")


@strawberry.type(description="One processor replica. Counts are cumulative since that process started.")
class ProcessorStatus:
    processor: str = strawberry.field(description="host:pid")
    alive: bool = strawberry.field(description="Reported within the last 10 seconds.")
    reported_at: datetime
    trades: Long
    candles: Long
    late: Long
    rejected: Long
    checkpoints: Long
    last_checkpoint_ms: float | None
    trades_per_second: float


@strawberry.type(description="One market as the processor that owns it last reported it.")
class SymbolStatus:
    exchange: str = strawberry.field(description=VENUE)
    symbol: str
    last_trade_time: datetime = strawberry.field(description="Event time of the newest trade processed.")
    closed_through: datetime | None = strawberry.field(
        description="Every 1 s window starting before this is final."
    )
    behind_seconds: float = strawberry.field(description="Now minus the newest trade's event time.")


@strawberry.type(description="A trade source (an exchange feed, the demo market) as ingest last reported it.")
class FeedStatus:
    source: str = strawberry.field(description="The venue: binance, coinbase, demo, ...")
    state: str = strawberry.field(
        description="connecting, connected, reconnecting, ended (stopped) or finished (a replay at its end); "
        "a state from a newer ingest is shown as it came (taken as not delivering)."
    )
    since: datetime | None = strawberry.field(description="When it entered that state.")
    last_trade_at: datetime | None = strawberry.field(description="When its newest trade was received.")
    trades: Long = strawberry.field(description="Trades delivered since that ingest process started.")
    reconnects: Long
    error: str | None = strawberry.field(description="Why the last connection ended, while not connected.")
    ingest: str = strawberry.field(description="The ingest process reporting it, host:pid.")
    alive: bool = strawberry.field(description="Reported within the last 10 seconds.")
    delivering: bool = strawberry.field(description="Alive and connected.")

    @classmethod
    def from_report(cls, f: FeedReport) -> FeedStatus:
        return cls(
            source=f.source,
            state=f.state,
            since=from_ms(f.since_ms) if f.since_ms is not None else None,
            last_trade_at=from_ms(f.last_trade_ms) if f.last_trade_ms is not None else None,
            trades=Long(f.trades),
            reconnects=Long(f.reconnects),
            error=f.error,
            ingest=f.ingest,
            alive=f.alive,
            delivering=f.delivering,
        )


@strawberry.type(description="The pipeline as the processors report it each second over the candles topic.")
class PipelineStatus:
    live: bool = strawberry.field(description="This API process receives the processors' live feed.")
    updated_at: datetime | None
    lag: Long = strawberry.field(description="Trades not processed yet, summed over partitions.")
    trades_per_second: float
    candles_per_second: float
    trades: Long
    candles: Long
    late: Long = strawberry.field(description="Trades that came after their window closed (dead-lettered).")
    rejected: Long = strawberry.field(description="Invalid trades (dead-lettered with a reason).")
    rejected_by_reason: list[ReasonCount]
    processors: list[ProcessorStatus]
    partitions: list[PartitionStatus]
    symbols: list[SymbolStatus] = strawberry.field(
        description="One entry per market (venue and symbol); at most 200 per processor, the most behind."
    )
    markets_total: int = strawberry.field(description="Markets the live processors hold, all of them.")
    feeds: list[FeedStatus] = strawberry.field(
        description="One entry per trade source, as ingest reports it each second."
    )
    fed: bool | None = strawberry.field(
        description="Some source delivers trades, or every source is finished (a replay at its end); null "
        "when this API does not read the live feed."
    )

    @classmethod
    def from_snapshot(cls, snap: StatusSnapshot, live: bool) -> PipelineStatus:
        return cls(
            live=live,
            updated_at=from_ms(snap.updated_ms) if snap.updated_ms is not None else None,
            lag=Long(snap.lag),
            trades_per_second=snap.trades_per_s,
            candles_per_second=snap.candles_per_s,
            trades=Long(snap.totals["trades"]),
            candles=Long(snap.totals["candles"]),
            late=Long(snap.totals["late"]),
            rejected=Long(snap.totals["rejected"]),
            rejected_by_reason=[
                ReasonCount(reason=r, count=Long(n)) for r, n in snap.rejected_by_reason.items()
            ],
            processors=[
                ProcessorStatus(
                    processor=r.processor,
                    alive=r.alive,
                    reported_at=from_ms(r.time_ms),
                    trades=Long(r.count("trades")),
                    candles=Long(r.count("candles")),
                    late=Long(r.count("late")),
                    rejected=Long(r.count("rejected")),
                    checkpoints=Long(r.count("checkpoints")),
                    last_checkpoint_ms=_float(r.message.get("last_checkpoint_ms")),
                    trades_per_second=r.trades_per_s,
                )
                for r in snap.processors
            ],
            partitions=[
                PartitionStatus(
                    partition=p.partition,
                    processor=p.processor,
                    position=_long(p.position),
                    end=_long(p.end),
                    lag=_long(p.lag),
                )
                for p in snap.partitions
            ],
            symbols=[
                SymbolStatus(
                    exchange=s.exchange,
                    symbol=s.symbol,
                    last_trade_time=from_ms(s.last_event_ms),
                    closed_through=from_ms(s.closed_through_ms)
                    if s.closed_through_ms is not None and s.closed_through_ms > 0
                    else None,
                    behind_seconds=max(0.0, (snap.now_ms - s.last_event_ms) / 1000),
                )
                for s in snap.symbols
            ],
            markets_total=snap.markets,
            feeds=[FeedStatus.from_report(f) for f in snap.feeds],
            fed=snap.fed if live else None,
        )


def _long(value: int | None) -> Long | None:
    return None if value is None else Long(value)


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
