"""Subscription resolvers: check the arguments, then stream from the process's one live feed.

Each subscription follows markets: ``symbols`` on ``exchange``, or each symbol on the venue the rule of
:mod:`graphql_api.catalog` picks when no exchange is named. Updates of another venue's market with the same
symbol never reach it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import strawberry
from strawberry.types import Info

from graphql_api.context import Context
from graphql_api.inputs import check_interval
from graphql_api.queries import Exchange
from graphql_api.shared import OUTLET, shape_of
from graphql_api.types import CandleUpdate, Prediction, Volatility

__all__ = ["Subscription"]


async def _live(
    info: Info[Context, None], kind: str, symbols: list[str], exchange: str | None, interval: str = "1s"
) -> AsyncGenerator[Any, None]:
    """Updates of ``kind`` for the markets ``symbols`` on ``exchange`` mean, from the live feed.

    The subscription is held against the limits before anything is awaited, so a socket's operations take
    their slots in the order they came: the one refused past a limit is the last one sent (a later one
    could overtake the rest while they waited for the market list). Over a WebSocket the updates are shared
    (:mod:`graphql_api.shared`): encoded once per subscription shape and written to the socket from here,
    so nothing is yielded; this returns when the socket is closed (the client left, or the server closed it
    for the client's doing: routine, not an error), by an error (the subscriber dropped) or by cancellation
    (the client completed the operation or left)."""
    services = info.context.services
    async with services.limits.hold(info.context.request):
        markets = await services.markets(symbols, exchange)
        live = services.live()
        outlet = OUTLET.get()
        shape = None if outlet is None else shape_of(outlet, kind, markets, interval)
        request = info.context.request if shape is not None else None
        with services.limits.shape(request, shape.key if shape else None, kind, markets, interval):
            async with live.subscribe(kind, markets, interval, shape=shape, outlet=outlet) as sub:
                if sub.outlet is not None:
                    await sub.deliver()
                    return
                while True:
                    yield await sub.get()


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
        check_interval(interval)
        async with aclosing(_live(info, "candles", symbols, exchange, interval)) as updates:
            async for update in updates:
                yield update

    @strawberry.subscription(description="Volatility of `symbols`, one update per market per second.")
    async def volatility(
        self, info: Info[Context, None], symbols: list[str], exchange: Exchange = None
    ) -> AsyncGenerator[Volatility, None]:
        async with aclosing(_live(info, "volatility", symbols, exchange)) as updates:
            async for update in updates:
                yield update

    @strawberry.subscription(description="Trend predictions of `symbols` as the model makes them.")
    async def predictions(
        self, info: Info[Context, None], symbols: list[str], exchange: Exchange = None
    ) -> AsyncGenerator[Prediction, None]:
        async with aclosing(_live(info, "predictions", symbols, exchange)) as updates:
            async for update in updates:
                yield update
