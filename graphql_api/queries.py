"""Query resolvers: validate arguments, read through the store, convert at the edge."""

from __future__ import annotations

import strawberry
from strawberry.types import Info

from cryptostream.symbols import normalize_symbol
from graphql_api.context import Context
from graphql_api.types import Candle

__all__ = ["MAX_LIMIT", "Query"]

MAX_LIMIT = 10_000


def _limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    return limit


@strawberry.type
class Query:
    @strawberry.field(description="Symbols with stored candles.")
    async def symbols(self, info: Info[Context, None]) -> list[str]:
        return await info.context.store.symbols()

    @strawberry.field(description="The newest `limit` 1 s candles of `symbol`, oldest first.")
    async def candles(self, info: Info[Context, None], symbol: str, limit: int = 100) -> list[Candle]:
        table = await info.context.store.candles(normalize_symbol(symbol), limit=_limit(limit))
        return Candle.from_table(table)
