"""What resolvers and REST routes share: settings, the read store, the market catalog, the live feed."""

from __future__ import annotations

from dataclasses import dataclass, field

from strawberry.fastapi import BaseContext

from cryptostream.settings import Settings
from cryptostream.store import ReadStore
from graphql_api.catalog import MarketCatalog, MarketKey
from graphql_api.fanout import Fanout
from graphql_api.inputs import InputError, check_exchange_format, check_symbols
from graphql_api.limits import SubscriptionLimits
from graphql_api.probe import StoreProbe
from graphql_api.status import StatusBoard

__all__ = ["Context", "Services"]


@dataclass
class Services:
    """One per app, built in the lifespan. ``fanout`` is None when the API has no Kafka to read."""

    settings: Settings
    store: ReadStore
    catalog: MarketCatalog
    board: StatusBoard
    fanout: Fanout | None = None
    limits: SubscriptionLimits = field(init=False)
    probe: StoreProbe = field(init=False)

    def __post_init__(self) -> None:
        self.probe = StoreProbe(self.store.ping)
        self.limits = SubscriptionLimits(
            self.settings.api_max_subscriptions_per_connection, self.settings.api_max_subscriptions_per_client
        )

    async def markets(self, symbols: list[str], exchange: str | None = None) -> list[MarketKey]:
        """The markets ``symbols`` name on ``exchange``, or each on the venue the rule picks when no exchange
        is named (see :mod:`graphql_api.catalog`); an error naming where a symbol trades otherwise."""
        venue = None if exchange is None else check_exchange_format(exchange)
        return await self.catalog.resolve(check_symbols(symbols), venue)

    async def market(self, symbol: str, exchange: str | None = None) -> MarketKey:
        return (await self.markets([symbol], exchange))[0]

    async def venue(self, exchange: str) -> str:
        """``exchange`` checked against the known venues (a REST listing filtered by venue)."""
        name = check_exchange_format(exchange)
        venues = await self.catalog.venues()
        if name not in venues:
            raise InputError(
                f"unknown exchange {name!r}; venues: {', '.join(venues) or 'none yet'}",
                code="UNKNOWN_MARKET",
                status=404,
                venues=venues,
            )
        return name

    def live(self) -> Fanout:
        if self.fanout is None:
            raise InputError(
                "live updates are off: this API process has no KAFKA_BOOTSTRAP to read "
                f"{self.settings.kafka_candles_topic} from",
                code="LIVE_UNAVAILABLE",
                status=503,
            )
        return self.fanout


@dataclass
class Context(BaseContext):
    services: Services

    def __post_init__(self) -> None:
        super().__init__()
