"""Query resolvers: check the arguments, read through the store, convert at the edge."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, cast

import pyarrow as pa
import strawberry
from strawberry.scalars import JSON
from strawberry.types import Info

from cryptostream.errors import QueryError
from graphql_api.context import Context, Services
from graphql_api.inputs import InputError, check_interval, check_limit, check_range
from graphql_api.types import Candle, CandleColumns, PipelineStatus, Prediction, Volatility
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


async def _candles(
    services: Services, symbol: str, interval: str, start: datetime | None, end: datetime | None, limit: int
) -> tuple[str, pa.Table]:
    check_interval(interval)
    check_limit(limit, services.settings.api_max_limit)
    start, end = check_range(start, end)
    name = await services.symbol(symbol)
    try:
        return name, await services.store.candles(name, start=start, end=end, limit=limit, interval=interval)
    except QueryError as exc:
        raise InputError(str(exc)) from None


@strawberry.type
class Query:
    @strawberry.field(description="Symbols with stored candles.")
    async def symbols(self, info: Info[Context, None]) -> list[str]:
        return list(await info.context.services.catalog.stored())

    @strawberry.field(
        description="Candles of `symbol` at `interval` in [from, to): the newest `limit`, oldest first."
    )
    async def candles(
        self,
        info: Info[Context, None],
        symbol: str,
        interval: Interval = "1s",
        from_: From = None,
        to: To = None,
        limit: Limit = 100,
    ) -> list[Candle]:
        _, table = await _candles(info.context.services, symbol, interval, from_, to, limit)
        return Candle.from_table(table)

    @strawberry.field(
        description="The same candles as `candles`, as one array per field: the cheap form for charts."
    )
    async def candle_columns(
        self,
        info: Info[Context, None],
        symbol: str,
        interval: Interval = "1s",
        from_: From = None,
        to: To = None,
        limit: Limit = 100,
    ) -> CandleColumns:
        name, table = await _candles(info.context.services, symbol, interval, from_, to, limit)
        return CandleColumns.from_table(name, interval, table)

    @strawberry.field(description="The newest stored candle of `symbol` at `interval`, if any.")
    async def latest_candle(
        self, info: Info[Context, None], symbol: str, interval: Interval = "1s"
    ) -> Candle | None:
        services = info.context.services
        check_interval(interval)
        name = await services.symbol(symbol)
        try:
            table = await services.store.latest_candle(name, interval=interval)
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
        from_: From = None,
        to: To = None,
        limit: Limit = 100,
    ) -> list[Volatility]:
        services = info.context.services
        check_limit(limit, services.settings.api_max_limit)
        start, end = check_range(from_, to)
        name = await services.symbol(symbol)
        try:
            table = await services.store.volatility(name, start=start, end=end, limit=limit)
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
        limit: Limit = 100,
        from_: From = None,
        to: To = None,
    ) -> list[Prediction]:
        services = info.context.services
        check_limit(limit, services.settings.api_max_limit)
        start, end = check_range(from_, to)
        name = await services.symbol(symbol)
        try:
            table = await services.store.predictions(name, start=start, end=end, limit=limit)
        except QueryError as exc:
            raise InputError(str(exc)) from None
        return Prediction.from_table(table)

    @strawberry.field(description="The newest trend prediction of `symbol`, if any.")
    async def latest_prediction(self, info: Info[Context, None], symbol: str) -> Prediction | None:
        services = info.context.services
        name = await services.symbol(symbol)
        rows = Prediction.from_table(await services.store.predictions(name, limit=1))
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
        description="Lag, last trade time per symbol, late and invalid counts and rates, from the processors "
        "status messages (empty with `live: false` when this API process does not read the live feed)."
    )
    async def pipeline_status(self, info: Info[Context, None]) -> PipelineStatus:
        services = info.context.services
        live = services.fanout is not None and services.fanout.ready.is_set()
        return PipelineStatus.from_snapshot(services.board.snapshot(), live)
