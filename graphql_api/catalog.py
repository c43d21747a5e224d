"""Which markets (venue, symbol) the API knows, cached so checking one does not cost a database round trip.

Known = the configured ``EXCHANGES`` x ``SYMBOLS`` (the pairs each exchange lists) + what the store holds +
what the live feed has carried. The store's list is refreshed every ``ttl`` seconds, and early (at most
once a second) when a request names a symbol or market not seen yet, so a market that just started
trading is accepted within a second, while a stream of requests for nonsense cannot turn into a stream of
store queries. A list past its ``ttl`` is still answered while the next one is fetched behind it: with
130 markets the listing took seconds, and every query waited for it (stalls of 1-11 s every ~10 s in a
reviewer's dashboard); only a request that needs a fresher list than the one held waits.

A request that names a symbol but no exchange gets the venue :func:`cryptostream.venues.pick_venue` picks
among the known venues of that symbol (configured ones included, so the answer does not flip when a
configured market stores its first candle, and `make run` after `make demo` never answers with the demo's
data), ``EXCHANGES`` being the preferred order; :meth:`MarketCatalog.pick` is the one place the API applies
that rule.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from cryptostream import markets
from cryptostream.errors import SettingsError, UnsupportedSymbol
from cryptostream.markets import MarketListError
from cryptostream.store import MARKET_SCHEMA, ReadStore
from cryptostream.venues import DEMO, pick_venue
from graphql_api.failures import StoreFailures
from graphql_api.inputs import unknown_market, unknown_symbol

__all__ = ["LISTING_SCHEMA", "MarketKey", "MarketCatalog", "configured_markets"]

log = logging.getLogger(__name__)

MarketKey = tuple[str, str]  # (exchange, symbol)

# What the ``markets`` query and ``/api/markets`` list: one row per known market.
LISTING_SCHEMA = pa.schema(
    [
        ("exchange", pa.string()),
        ("symbol", pa.string()),
        ("demo", pa.bool_()),
        ("preferred", pa.bool_()),
        ("first_candle", MARKET_SCHEMA.field("first").type),
        ("last_candle", MARKET_SCHEMA.field("last").type),
    ]
)


def configured_markets(exchanges: Sequence[str], symbols: Sequence[str], state_dir: Path) -> set[MarketKey]:
    """``exchanges`` x ``symbols``, keeping of each exchange only the symbols it trades, by the market list
    ingest resolves SYMBOLS with (its cache under ``STATE_DIR/markets``, else the snapshot shipped with
    cryptostream): Binance lists no BTCUSD, so a request for BTCUSD never means an empty Binance series.
    The demo venue trades whatever it is asked to."""
    out: set[MarketKey] = set()
    for exchange in exchanges:
        if exchange not in markets.EXCHANGES:
            out.update((exchange, symbol) for symbol in symbols)
            continue
        try:
            catalog = markets.cached(exchange, state_dir / "markets") or markets.snapshot(exchange)
        except (MarketListError, OSError) as exc:
            log.warning("%s: no market list (%s); assuming it trades every symbol of SYMBOLS", exchange, exc)
            out.update((exchange, symbol) for symbol in symbols)
            continue
        for symbol in symbols:
            try:
                market = catalog.lookup(symbol)
            except (SettingsError, UnsupportedSymbol):
                continue  # ingest refuses such a symbol at start-up: it never trades here
            if market is not None and market.trading:
                out.add((exchange, symbol))
    return out


class MarketCatalog:
    """The known markets of one API process: ``configured`` ones, the store's (cached), the live feed's."""

    def __init__(
        self, store: ReadStore, configured: Iterable[MarketKey], preferred: Sequence[str], ttl: float = 5.0
    ) -> None:
        self.store = store
        self.configured = frozenset(configured)
        self.preferred = list(preferred)
        self.ttl = ttl
        self.live: set[MarketKey] = set()  # filled by the live feed
        self._stored = MARKET_SCHEMA.empty_table()
        self._stored_keys: frozenset[MarketKey] = frozenset()
        self._fetched = float("-inf")
        self._lock = asyncio.Lock()
        self._refreshing: asyncio.Task[None] | None = None  # a refresh behind a stale list
        # tried again by every request past the ttl: during an outage, said once a minute
        self._failures = StoreFailures(log, level=logging.WARNING)

    async def _fetch(self, max_age: float) -> None:
        async with self._lock:
            if time.monotonic() - self._fetched > max_age:
                table = await self.store.markets()
                self._stored = table
                self._stored_keys = frozenset(
                    zip(table["exchange"].to_pylist(), table["symbol"].to_pylist(), strict=True)
                )
                self._fetched = time.monotonic()

    async def _refresh_behind(self) -> None:
        try:
            await self._fetch(self.ttl)
        except Exception as exc:  # the list held stays; the next request past the ttl tries again
            self._failures.failed("market list not refreshed (the one held is used)", exc)

    async def stored(self, *, fresh_within: float | None = None) -> pa.Table:
        """Markets with stored candles (``MARKET_SCHEMA``), cached ``ttl`` (or ``fresh_within``) seconds."""
        max_age = self.ttl if fresh_within is None else fresh_within
        if time.monotonic() - self._fetched <= max_age:
            return self._stored
        if fresh_within is None and self._fetched > float("-inf"):  # stale: answered, refreshed behind
            if self._refreshing is None or self._refreshing.done():
                self._refreshing = asyncio.create_task(self._refresh_behind(), name="market-list")
            return self._stored
        await self._fetch(max_age)
        return self._stored

    async def symbols(self, *, fresh_within: float | None = None) -> list[str]:
        """Symbols with stored candles, on any venue."""
        table = await self.stored(fresh_within=fresh_within)
        return sorted(set(table["symbol"].to_pylist()))

    async def known(self) -> frozenset[MarketKey]:
        """Every known market (the store's list as cached)."""
        await self.stored()
        return self.configured | self.live | self._stored_keys

    async def resolve(self, symbols: list[str], exchange: str | None) -> list[MarketKey]:
        """The market each of ``symbols`` means on ``exchange`` (None: the venue rule picks, per symbol).

        Raises :class:`~graphql_api.inputs.InputError` (``UNKNOWN_SYMBOL`` / ``UNKNOWN_MARKET``) naming
        where the symbol does trade. Looks at the store again first when something is not known yet.
        """
        known = await self.known()
        if not all(_has(known, symbol, exchange) for symbol in symbols):
            await self.stored(fresh_within=1.0)
            known = await self.known()
        out: list[MarketKey] = []
        for symbol in symbols:
            venues = sorted(e for e, s in known if s == symbol)
            if exchange is None:
                venue = self.pick(symbol, known)
                if venue is None:
                    raise unknown_symbol(symbol, sorted({s for _, s in known}))
                out.append((venue, symbol))
            elif exchange in venues:
                out.append((exchange, symbol))
            else:
                raise unknown_market(exchange, symbol, venues, sorted({e for e, _ in known}))
        return out

    def pick(self, symbol: str, known: frozenset[MarketKey]) -> str | None:
        """The venue a request naming only ``symbol`` means (see the module docstring)."""
        return pick_venue([e for e, s in known if s == symbol], self.preferred)

    async def venues(self) -> list[str]:
        return sorted({e for e, _ in await self.known()})

    async def listing(self, *, fresh_within: float | None = None) -> pa.Table:
        """Every known market (``LISTING_SCHEMA``, by exchange and symbol): the span of its stored candles
        (null when none is stored yet), whether it is demo data, and whether a request naming only its
        symbol gets this venue."""
        stored = await self.stored(fresh_within=fresh_within)
        known = await self.known()
        extra = sorted(known - self._stored_keys)
        ts = MARKET_SCHEMA.field("first").type
        table = pa.concat_tables(
            [
                stored,
                pa.table(
                    {
                        "exchange": pa.array([e for e, _ in extra], pa.string()),
                        "symbol": pa.array([s for _, s in extra], pa.string()),
                        "first": pa.nulls(len(extra), ts),
                        "last": pa.nulls(len(extra), ts),
                    },
                    schema=MARKET_SCHEMA,
                ),
            ]
        ).sort_by([("exchange", "ascending"), ("symbol", "ascending")])
        picked = {s: self.pick(s, known) for s in {s for _, s in known}}
        exchanges = table["exchange"].to_pylist()
        preferred = [picked.get(s) == e for e, s in zip(exchanges, table["symbol"].to_pylist(), strict=True)]
        return pa.Table.from_arrays(
            [
                table["exchange"],
                table["symbol"],
                pc.equal(table["exchange"], DEMO),
                pa.array(preferred, pa.bool_()),
                table["first"],
                table["last"],
            ],
            schema=LISTING_SCHEMA,
        )


def _has(known: frozenset[MarketKey], symbol: str, exchange: str | None) -> bool:
    if exchange is not None:
        return (exchange, symbol) in known
    return any(s == symbol for _, s in known)
