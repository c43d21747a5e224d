"""Subscription resolvers: check the arguments, then stream from the process's one live feed.

Each subscription follows markets: ``symbols`` on ``exchange``, or each symbol on the venue the rule of
:mod:`graphql_api.catalog` picks when no exchange is named. Updates of another venue's market with the same
symbol never reach it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import strawberry
from strawberry.types import Info

from graphql_api.context import Context
from graphql_api.inputs import check_interval
from graphql_api.queries import Exchange
from graphql_api.types import CandleUpdate, Prediction, Volatility

__all__ = ["Subscription"]


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description="Live candles of `symbols` at `interval` (1s, 1m, 5m, 15m, 1h, 1d): the open candle each "
        "time it changes (`closed: false`), then once more when it is final (`closed: true`). Coarser "
        "intervals are rolled up from live 1 s candles; the first update is the open candle right away."
    )
    async def candles(
        self, info: Info[Context, None], symbols: list[str], interval: str = "1s", exchange: Exchange = None
    ) -> AsyncGenerator[CandleUpdate, None]:
        services = info.context.services
        check_interval(interval)
        markets = await services.markets(symbols, exchange)
        async with (
            services.limits.hold(info.context.request),
            services.live().subscribe("candles", markets, interval) as sub,
        ):
            while True:
                yield await sub.get()

    @strawberry.subscription(description="Volatility of `symbols`, one update per market per second.")
    async def volatility(
        self, info: Info[Context, None], symbols: list[str], exchange: Exchange = None
    ) -> AsyncGenerator[Volatility, None]:
        services = info.context.services
        markets = await services.markets(symbols, exchange)
        async with (
            services.limits.hold(info.context.request),
            services.live().subscribe("volatility", markets) as sub,
        ):
            while True:
                yield await sub.get()

    @strawberry.subscription(description="Trend predictions of `symbols` as the model makes them.")
    async def predictions(
        self, info: Info[Context, None], symbols: list[str], exchange: Exchange = None
    ) -> AsyncGenerator[Prediction, None]:
        services = info.context.services
        markets = await services.markets(symbols, exchange)
        async with (
            services.limits.hold(info.context.request),
            services.live().subscribe("predictions", markets) as sub,
        ):
            while True:
                yield await sub.get()
