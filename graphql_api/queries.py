"""Query resolvers: check the arguments, read through the store, convert at the edge.

Every query that names a symbol takes an optional ``exchange``; without it the venue rule of
:mod:`graphql_api.catalog` picks the market.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, cast

import pyarrow as pa
import strawberry
from strawberry.scalars import JSON
from strawberry.types import Info

from cryptostream.errors import QueryError
from graphql_api.catalog import MarketKey
from graphql_api.context import Context, Services
from graphql_api.inputs import InputError, check_interval, check_limit, check_range
from graphql_api.types import Candle, CandleColumns, Market, PipelineStatus, Prediction, Volatility
from processor.model import registry
from processor.model.errors import ModelFileError

__all__ = ["Query"]

From = Annotated[
    datetime | None, strawberry.argument(name="from", description="Window starts at or after this (UTC).")
]
To = Annotated[datetime | None, strawberry.argument(description="Window starts before this (UTC).")]
Interval = Annotated[str, strawberry.argument(description="1s, 1m, 5m, 15m, 1h or 1d.")]
Limit = Annotated[
    int, strawberry.argument(description="Newest rows of the range to return (at most API_MAX_LIMIT).")
]
VENUE_RULE = (
    "Without it: the only venue that has the symbol; if several do, the first of the EXCHANGES setting "
    "that has it; else the first real venue by name (demo `synthetic` and `unknown` data last). "
    "`markets` lists the venues."
)
Exchange = Annotated[
    str | None,
    strawberry.argument(
        description="The venue, e.g. binance, coinbase, synthetic (demo data), unknown. " + VENUE_RULE
    ),
]


async def _candles(
    services: Services,
    symbol: str,
    exchange: str | None,
    interval: str,
    start: datetime | None,
    end: datetime | None,
    limit: int,
) -> tuple[MarketKey, pa.Table]:
    check_interval(interval)
    check_limit(limit, services.settings.api_max_limit)
    start, end = check_range(start, end)
    market = await services.market(symbol, exchange)
    try:
        table = await services.store.candles(*market, start=start, end=end, limit=limit, interval=interval)
    except QueryError as exc:
        raise InputError(str(exc)) from None
    return market, table


@strawberry.type
class Query:
    @strawberry.field(description="Symbols with stored candles, on any venue.")
    async def symbols(self, info: Info[Context, None]) -> list[str]:
        return await info.context.services.catalog.symbols()

    @strawberry.field(
        description="Every market the API knows (stored, seen live, or configured as EXCHANGES x SYMBOLS), "
        "by exchange and symbol, with the span of its stored candles; `preferred` marks the venue a request "
        "naming only the symbol gets."
    )
    async def markets(self, info: Info[Context, None]) -> list[Market]:
        return Market.from_table(await info.context.services.catalog.listing())

    @strawberry.field(
        description="Candles of `symbol` at `interval` in [from, to): the newest `limit`, oldest first."
    )
    async def candles(
        self,
        info: Info[Context, None],
        symbol: str,
        exchange: Exchange = None,
        interval: Interval = "1s",
        from_: From = None,
        to: To = None,
        limit: Limit = 100,
    ) -> list[Candle]:
        _, table = await _candles(info.context.services, symbol, exchange, interval, from_, to, limit)
        return Candle.from_table(table)

    @strawberry.field(
        description="The same candles as `candles`, as one array per field: the cheap form for charts."
    )
    async def candle_columns(
        self,
        info: Info[Context, None],
        symbol: str,
        exchange: Exchange = None,
        interval: Interval = "1s",
        from_: From = None,
        to: To = None,
        limit: Limit = 100,
    ) -> CandleColumns:
        market, table = await _candles(info.context.services, symbol, exchange, interval, from_, to, limit)
        return CandleColumns.from_table(*market, interval, table)

    @strawberry.field(description="The newest stored candle of `symbol` at `interval`, if any.")
    async def latest_candle(
        self, info: Info[Context, None], symbol: str, exchange: Exchange = None, interval: Interval = "1s"
    ) -> Candle | None:
        services = info.context.services
        check_interval(interval)
        market = await services.market(symbol, exchange)
        try:
            table = await services.store.latest_candle(*market, interval=interval)
        except QueryError as exc:
            raise InputError(str(exc)) from None
        rows = Candle.from_table(table)
        return rows[-1] if rows else None

    @strawberry.field(
        description="Per-second volatility of `symbol` in [from, to): the newest `limit`, oldest first."
    )
    async def volatility(
        self,
        info: Info[Context, None],
        symbol: str,
        exchange: Exchange = None,
        from_: From = None,
        to: To = None,
        limit: Limit = 100,
    ) -> list[Volatility]:
        services = info.context.services
        check_limit(limit, services.settings.api_max_limit)
        start, end = check_range(from_, to)
        market = await services.market(symbol, exchange)
        try:
            table = await services.store.volatility(*market, start=start, end=end, limit=limit)
        except QueryError as exc:
            raise InputError(str(exc)) from None
        return Volatility.from_table(table)

    @strawberry.field(
        description="Trend predictions of `symbol` in [from, to): the newest `limit`, oldest first."
    )
    async def predictions(
        self,
        info: Info[Context, None],
        symbol: str,
        exchange: Exchange = None,
        limit: Limit = 100,
        from_: From = None,
        to: To = None,
    ) -> list[Prediction]:
        services = info.context.services
        check_limit(limit, services.settings.api_max_limit)
        start, end = check_range(from_, to)
        market = await services.market(symbol, exchange)
        try:
            table = await services.store.predictions(*market, start=start, end=end, limit=limit)
        except QueryError as exc:
            raise InputError(str(exc)) from None
        return Prediction.from_table(table)

    @strawberry.field(description="The newest trend prediction of `symbol`, if any.")
    async def latest_prediction(
        self, info: Info[Context, None], symbol: str, exchange: Exchange = None
    ) -> Prediction | None:
        services = info.context.services
        market = await services.market(symbol, exchange)
        rows = Prediction.from_table(await services.store.predictions(*market, limit=1))
        return rows[-1] if rows else None

    @strawberry.field(
        description="The current trend model's walk-forward report as stored under MODEL_DIR (JSON), "
        "null when no model was trained yet."
    )
    async def model_report(self, info: Info[Context, None]) -> JSON | None:
        model_dir = info.context.services.settings.model_dir
        try:
            report = await asyncio.to_thread(registry.load_report, model_dir)
        except ModelFileError as exc:
            raise InputError(
                f"the model report cannot be read: {exc}", code="MODEL_REPORT_UNREADABLE"
            ) from None
        return cast("JSON | None", report)

    @strawberry.field(
        description="Lag, last trade time per market, late and invalid counts and rates, from the processors "
        "status messages (empty with `live: false` when this API process does not read the live feed)."
    )
    async def pipeline_status(self, info: Info[Context, None]) -> PipelineStatus:
        services = info.context.services
        live = services.fanout is not None and services.fanout.ready.is_set()
        return PipelineStatus.from_snapshot(services.board.snapshot(), live)
