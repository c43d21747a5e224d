"""What resolvers and REST routes share: settings, the read store, the symbol catalog, the live feed."""

from __future__ import annotations

from dataclasses import dataclass

from strawberry.fastapi import BaseContext

from cryptostream.settings import Settings
from cryptostream.store import ReadStore
from graphql_api.catalog import SymbolCatalog
from graphql_api.fanout import Fanout
from graphql_api.inputs import InputError, check_symbol_format, check_symbols
from graphql_api.status import StatusBoard

__all__ = ["Context", "Services"]


@dataclass
class Services:
    """One per app, built in the lifespan. ``fanout`` is None when the API has no Kafka to read."""

    settings: Settings
    store: ReadStore
    catalog: SymbolCatalog
    board: StatusBoard
    fanout: Fanout | None = None

    async def symbols(self, raws: list[str]) -> list[str]:
        """Normalize and check ``raws`` against the known symbols (see :mod:`graphql_api.catalog`)."""
        wanted = [check_symbol_format(raw) for raw in raws]
        return check_symbols(wanted, await self.catalog.known(wanted))

    async def symbol(self, raw: str) -> str:
        return (await self.symbols([raw]))[0]

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
