"""The market catalog: which venue a symbol-only request means, the errors for markets that do not exist,
and the cache that keeps both off the store's back."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pytest

from cryptostream.store import MARKET_SCHEMA, ReadStore
from graphql_api.catalog import MarketCatalog, MarketKey, configured_markets
from graphql_api.inputs import InputError

T = 1_700_000_000_000


class StoredMarkets(ReadStore):
    """A store that holds candles of ``markets`` (T to T + 1 min) and counts how often it is asked."""

    def __init__(self, markets: list[MarketKey]) -> None:
        self.held = markets
        self.asked = 0

    async def markets(self) -> pa.Table:
        self.asked += 1
        keys = sorted(self.held)
        ts = MARKET_SCHEMA.field("first").type
        return pa.table(
            {
                "exchange": [e for e, _ in keys],
                "symbol": [s for _, s in keys],
                "first": pa.array([T] * len(keys), pa.int64()).cast(ts),
                "last": pa.array([T + 60_000] * len(keys), pa.int64()).cast(ts),
            },
            schema=MARKET_SCHEMA,
        )

    async def candles(self, *args: object, **kwargs: object) -> pa.Table:
        raise NotImplementedError("the catalog never reads candles")

    async def volatility(self, *args: object, **kwargs: object) -> pa.Table:
        raise NotImplementedError("the catalog never reads volatility")


def catalog(
    stored: list[MarketKey], preferred: list[str], configured: set[MarketKey] | None = None
) -> MarketCatalog:
    return MarketCatalog(StoredMarkets(stored), configured or set(), preferred)


def resolve(cat: MarketCatalog, symbol: str, exchange: str | None = None) -> MarketKey:
    return asyncio.run(cat.resolve([symbol], exchange))[0]


@pytest.mark.parametrize(
    ("stored", "preferred", "configured", "expected"),
    [
        # The only venue that has the symbol, whatever EXCHANGES prefers, demo data included.
        ([("coinbase", "ADAUSDT")], ["binance", "coinbase"], set(), "coinbase"),
        ([("synthetic", "ADAUSDT")], ["binance", "coinbase"], set(), "synthetic"),
        # Several: the first of EXCHANGES that has it (not the first by name).
        ([("binance", "BTCUSDT"), ("coinbase", "BTCUSDT")], ["coinbase", "binance"], set(), "coinbase"),
        ([("binance", "BTCUSDT"), ("coinbase", "BTCUSDT")], ["binance", "coinbase"], set(), "binance"),
        # A configured market counts before it stored anything: the answer does not flip when it does.
        ([("coinbase", "BTCUSDT")], ["binance", "coinbase"], {("binance", "BTCUSDT")}, "binance"),
        # None preferred: the first real venue by name; demo and unknown data come last.
        ([("synthetic", "ADAUSDT"), ("upbit", "ADAUSDT")], ["binance"], set(), "upbit"),
        ([("unknown", "ADAUSDT"), ("upbit", "ADAUSDT")], ["binance"], set(), "upbit"),
        # The demo venue when EXCHANGES says so (`cryptostream up --source synthetic` does).
        ([("binance", "BTCUSDT"), ("synthetic", "BTCUSDT")], ["synthetic"], set(), "synthetic"),
    ],
)
def test_a_symbol_alone_means_the_venue_the_rule_picks(
    stored: list[MarketKey], preferred: list[str], configured: set[MarketKey], expected: str
) -> None:
    symbol = stored[0][1]
    assert resolve(catalog(stored, preferred, configured), symbol) == (expected, symbol)


def test_a_named_exchange_is_that_market_or_an_error_saying_where_the_symbol_trades() -> None:
    cat = catalog([("binance", "BTCUSDT"), ("coinbase", "BTCUSDT"), ("binance", "ETHUSDT")], ["binance"])
    assert resolve(cat, "BTCUSDT", "coinbase") == ("coinbase", "BTCUSDT")
    with pytest.raises(InputError) as missing:
        resolve(cat, "ETHUSDT", "coinbase")
    assert missing.value.message == (
        "no market ETHUSDT on coinbase; ETHUSDT trades on binance: pass one of those as exchange, "
        "or leave exchange out"
    )
    assert missing.value.extensions == {"code": "UNKNOWN_MARKET", "venues": ["binance"]}
    assert missing.value.status == 404
    with pytest.raises(InputError) as unknown:
        resolve(cat, "BTCUSDT", "kraken")
    assert unknown.value.message.startswith("unknown exchange 'kraken' (venues: binance, coinbase); ")
    assert "BTCUSDT trades on binance, coinbase" in unknown.value.message
    with pytest.raises(InputError) as nowhere:
        resolve(cat, "PEPEUSDT")
    assert nowhere.value.extensions["code"] == "UNKNOWN_SYMBOL"
    assert "known symbols: BTCUSDT, ETHUSDT" in nowhere.value.message


def test_requests_are_answered_from_the_cache_and_unknown_names_refresh_it_at_most_once_a_second() -> None:
    store = StoredMarkets([("binance", "BTCUSDT")])
    cat = MarketCatalog(store, set(), ["binance"], ttl=60)

    async def scenario() -> None:
        for _ in range(100):
            await cat.resolve(["BTCUSDT"], None)
        assert store.asked == 1, "no store round trip per request"
        await asyncio.sleep(1.05)
        for _ in range(100):  # nonsense in a burst: one more look at the store, not a hundred
            with pytest.raises(InputError):
                await cat.resolve(["NOPEUSDT"], None)
        assert store.asked == 2
        store.held.append(("coinbase", "SOLUSDT"))  # a market starts trading
        await asyncio.sleep(1.05)
        assert await cat.resolve(["SOLUSDT"], None) == [("coinbase", "SOLUSDT")]
        assert store.asked == 3

    asyncio.run(scenario())


def test_the_listing_has_every_known_market_with_its_flags_and_stored_span() -> None:
    cat = MarketCatalog(
        StoredMarkets([("binance", "BTCUSDT"), ("synthetic", "BTCUSDT")]),
        {("coinbase", "BTCUSDT")},
        ["coinbase", "binance"],
    )
    cat.live.add(("binance", "ETHUSDT"))
    rows = asyncio.run(cat.listing()).to_pylist()
    first, last = (datetime.fromtimestamp(ms / 1000).astimezone() for ms in (T, T + 60_000))
    assert [(r["exchange"], r["symbol"], r["demo"], r["preferred"]) for r in rows] == [
        ("binance", "BTCUSDT", False, False),
        ("binance", "ETHUSDT", False, True),  # seen live, nothing stored yet
        ("coinbase", "BTCUSDT", False, True),  # configured: the venue a symbol-only request gets
        ("synthetic", "BTCUSDT", True, False),
    ]
    assert (rows[0]["first_candle"], rows[0]["last_candle"]) == (first, last)
    assert rows[1]["first_candle"] is None and rows[2]["last_candle"] is None


def test_configured_markets_keep_the_pairs_each_exchange_lists(tmp_path: Path) -> None:
    started = time.monotonic()
    pairs = configured_markets(["binance", "coinbase", "synthetic"], ["BTCUSD", "BTCUSDT"], tmp_path)
    assert pairs == {
        ("binance", "BTCUSDT"),  # Binance lists no BTCUSD
        ("coinbase", "BTCUSD"),
        ("coinbase", "BTCUSDT"),
        ("synthetic", "BTCUSD"),  # the demo market trades what it is asked to
        ("synthetic", "BTCUSDT"),
    }
    assert time.monotonic() - started < 1.0, "read once at start-up from the shipped market lists"


class SlowMarkets(StoredMarkets):
    """A store whose market list takes as long as the test says (``gate``)."""

    def __init__(self, markets: list[MarketKey]) -> None:
        super().__init__(markets)
        self.gate = asyncio.Event()
        self.gate.set()

    async def markets(self) -> pa.Table:
        await self.gate.wait()
        return await super().markets()


async def test_a_stale_list_is_answered_while_the_next_is_fetched_behind_it() -> None:
    """With 130 markets the list took seconds to make, and every query past the ttl waited for it: stalls
    of 1-11 s every ~10 s on a dashboard. Only a request needing a fresher list than the one held waits."""
    store = SlowMarkets([("binance", "BTCUSDT")])
    cat = MarketCatalog(store, set(), ["binance"], ttl=0.05)
    assert await cat.known() == {("binance", "BTCUSDT")}  # the first list: waited for
    store.held.append(("binance", "ETHUSDT"))
    store.gate.clear()  # the next list takes until the gate opens
    await asyncio.sleep(0.1)  # past the ttl
    started = time.monotonic()
    assert await asyncio.wait_for(cat.known(), 1) == {("binance", "BTCUSDT")}  # at once, the held list
    assert await asyncio.wait_for(cat.resolve(["BTCUSDT"], None), 1) == [("binance", "BTCUSDT")]
    assert time.monotonic() - started < 0.5 and store.asked == 1
    store.gate.set()
    for _ in range(100):  # the refresh behind it lands
        if ("binance", "ETHUSDT") in await cat.known():
            break
        await asyncio.sleep(0.01)
    assert ("binance", "ETHUSDT") in await cat.known() and store.asked >= 2
