"""The markets each exchange lists: its own id for a pair, the pair's base and quote, and whether it trades.

Exchange ids are never built from strings (``DOTUSD`` split by a list of known quotes became ``DO-TUSD``,
issue #14). Each exchange publishes its markets with base and quote, and that is what we read:

* Binance spot ``GET {BINANCE_REST_URL}/api/v3/exchangeInfo`` (:func:`parse_binance`);
* Coinbase Exchange ``GET {COINBASE_REST_URL}/products`` (:func:`parse_coinbase`).

A :class:`Catalog` is one exchange's list. :func:`refresh` fetches it live and keeps the answer in a cache
folder; when the exchange is unreachable or answers garbage it falls back to that cache, then to the
snapshot shipped in ``cryptostream/data/markets`` (where it came from: the README there), so start-up
works offline. :func:`resolve` maps SYMBOLS onto the configured exchanges; a symbol none of them trades
stops start-up with one line naming it and the closest listed pairs. :func:`whole_market` is what
``SYMBOLS=all`` (or a count, ``SYMBOLS=500``) means: every trading market of the lists, in a fixed order.

Spellings: ``DOT-USD``, ``DOT/USD``, ``dot_usd`` are split at the separator, so they are never ambiguous;
``DOTUSD`` / ``dotusd`` are looked up by concatenation in the catalog, which knows base and quote. The
internal symbol of a market is always ``base + quote`` (``DOTUSD``, ``1INCHUSD``), the same string
:func:`~cryptostream.symbols.normalize_symbol` makes of any spelling, and the key trades are stored under.
"""

from __future__ import annotations

import difflib
import gzip
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import Any

import httpx
import orjson

from cryptostream.errors import CryptostreamError, SettingsError, UnsupportedSymbol
from cryptostream.symbols import normalize_symbol, split_pair

__all__ = [
    "EXCHANGES",
    "Catalog",
    "Market",
    "MarketListError",
    "UnlistedSymbols",
    "cached",
    "listed_on",
    "local_catalogs",
    "parse_binance",
    "parse_coinbase",
    "refresh",
    "resolve",
    "snapshot",
    "whole_market",
]

log = logging.getLogger(__name__)

EXCHANGES = ("binance", "coinbase")
TRADING = "trading"
REFRESH_TIMEOUT_SECONDS = 5.0
CLOSEST = 5  # matches named when a symbol is not listed


class MarketListError(CryptostreamError):
    """A market list (live answer, cache file or snapshot) is not in the shape we read."""


class UnlistedSymbols(SettingsError):
    """SYMBOLS names a symbol no market list searched has trading (:func:`resolve`)."""


@dataclass(frozen=True, slots=True)
class Market:
    """One pair as one exchange lists it."""

    exchange: str  # "binance" | "coinbase"
    symbol: str  # internal name, base + quote: BTCUSDT, DOTUSD, 1INCHUSD
    base: str
    quote: str
    native: str  # the exchange's own id: Binance BTCUSDT, Coinbase BTC-USD
    status: str  # "trading", or the exchange's word for why not (break, delisted, trading_disabled)

    @property
    def trading(self) -> bool:
        return self.status == TRADING


def _market(exchange: str, native: Any, base: Any, quote: Any, status: str) -> Market | None:
    """A :class:`Market`, or ``None`` when its names are not ones we can stream and store.

    Skipped: names that do not normalize (Binance lists a few non-ASCII tickers), and an id that is not
    its base and quote spelled together (trades arrive under the id and must match the stored symbol).
    """
    if not all(isinstance(name, str) and name for name in (native, base, quote)):
        return None
    try:
        symbol = normalize_symbol(f"{base}{quote}")
        if normalize_symbol(native) != symbol:
            return None
    except UnsupportedSymbol:
        return None
    return Market(exchange, symbol, base.upper(), quote.upper(), native, status)


def _entries(payload: Any, key: str | None, what: str) -> list[dict[str, Any]]:
    rows = payload.get(key) if key is not None and isinstance(payload, dict) else payload
    if not isinstance(rows, list):
        shape = f"an object with a {key!r} list" if key is not None else "a list"
        raise MarketListError(f"{what}: expected {shape}, got {str(payload)[:120]!r}")
    return [row for row in rows if isinstance(row, dict)]


def _nonempty(markets: list[Market], what: str) -> list[Market]:
    if not markets:
        raise MarketListError(f"{what}: no usable market in the answer")
    return markets


def parse_binance(payload: Any) -> list[Market]:
    """Binance spot ``/api/v3/exchangeInfo``: ``symbols`` with base, quote and status (TRADING, BREAK).

    A Binance symbol is always its base and quote spelled together::

        {"timezone":"UTC","serverTime":1725817008719,"rateLimits":[...],"exchangeFilters":[],
         "symbols":[{"symbol":"ETHBTC","status":"TRADING","baseAsset":"ETH","baseAssetPrecision":8,
                     "quoteAsset":"BTC","quotePrecision":8,...,"permissionSets":[["SPOT","MARGIN",...]]}]}
    """
    markets = []
    for row in _entries(payload, "symbols", "exchangeInfo"):
        status = row.get("status")
        word = TRADING if status == "TRADING" else str(status).lower()
        market = _market("binance", row.get("symbol"), row.get("baseAsset"), row.get("quoteAsset"), word)
        if market is not None:
            markets.append(market)
    return _nonempty(markets, "exchangeInfo")


def parse_coinbase(payload: Any) -> list[Market]:
    """Coinbase products: the Exchange ``/products`` list, or Advanced Trade's ``{"products": [...]}``.

    Exchange (what :func:`refresh` asks for)::

        [{"id":"BTC-USD","base_currency":"BTC","quote_currency":"USD","quote_increment":"0.01",
          "base_increment":"0.00000001","display_name":"BTC-USD","min_market_funds":"1",
          "margin_enabled":false,"post_only":false,"limit_only":false,"cancel_only":false,
          "status":"online","status_message":"","trading_disabled":false,"fx_stablecoin":false,
          "max_slippage_percentage":"0.02000000","auction_mode":false,"high_bid_limit_percentage":""}]

    Advanced Trade ``/api/v3/brokerage/market/products`` (what the shipped snapshot was read from)::

        {"products":[{"product_id":"BTC-USD","base_currency_id":"BTC","quote_currency_id":"USD",
          "status":"online","trading_disabled":false,"is_disabled":false,"alias":"",
          "alias_to":["BTC-USDC"],"product_type":"SPOT","product_venue":"CBE",...}],
         "num_products":920,"pagination":{...}}

    Advanced Trade lists USDC pairs as aliases of the USD book (``"alias":"BTC-USD"``); those are left
    out, since they are the USD market under a second name and would count its trades twice.
    """
    advanced = isinstance(payload, dict)
    markets = []
    for row in _entries(payload, "products" if advanced else None, "products"):
        if advanced and (row.get("alias") or row.get("product_type", "SPOT") != "SPOT"):
            continue
        status = row.get("status")
        disabled = row.get("trading_disabled") is not False or row.get("is_disabled", False) is not False
        word = str(status).lower() if status != "online" else "trading_disabled" if disabled else TRADING
        native = row.get("product_id" if advanced else "id")
        base = row.get("base_currency_id" if advanced else "base_currency")
        quote = row.get("quote_currency_id" if advanced else "quote_currency")
        market = _market("coinbase", native, base, quote, word)
        if market is not None:
            markets.append(market)
    return _nonempty(markets, "products")


PARSERS: dict[str, Callable[[Any], list[Market]]] = {"binance": parse_binance, "coinbase": parse_coinbase}
ENDPOINTS = {"binance": "/api/v3/exchangeInfo", "coinbase": "/products"}


class Catalog:
    """The markets one exchange lists, looked up by any user spelling."""

    def __init__(self, exchange: str, markets: Sequence[Market], source: str, as_of: str) -> None:
        self.exchange = exchange
        self.markets = tuple(markets)
        self.source = source  # where the list came from (a URL, a cache file, the shipped snapshot)
        self.as_of = as_of  # when the exchange said so, ISO 8601 UTC
        self._by_pair = {(m.base, m.quote): m for m in self.markets}
        self._by_symbol: dict[str, list[Market]] = {}
        for market in self.markets:
            self._by_symbol.setdefault(market.symbol, []).append(market)

    def __len__(self) -> int:
        return len(self.markets)

    def __iter__(self) -> Iterator[Market]:
        return iter(self.markets)

    def describe(self) -> str:
        return f"{len(self)} markets from {self.source} as of {self.as_of}"

    def lookup(self, spelling: str) -> Market | None:
        """The market ``spelling`` names here, or ``None`` if this exchange does not list it."""
        pair = split_pair(spelling)
        if pair is not None:
            return self._by_pair.get(pair)
        found = self._by_symbol.get(normalize_symbol(spelling), [])
        if len(found) > 1:
            options = " or ".join(f"{m.base}-{m.quote}" for m in found)
            raise SettingsError(
                f"SYMBOLS: {spelling} is ambiguous on {self.exchange} ({options}); write it with a separator"
            )
        return found[0] if found else None

    # ---------------------------------------------------------------------------- the file format
    def to_bytes(self) -> bytes:
        """The gzipped JSON of snapshots and caches: only what a :class:`Market` needs."""
        rows = [{"id": m.native, "base": m.base, "quote": m.quote, "status": m.status} for m in self.markets]
        doc = {"exchange": self.exchange, "source": self.source, "as_of": self.as_of, "markets": rows}
        return gzip.compress(orjson.dumps(doc, option=orjson.OPT_INDENT_2), mtime=0)

    @classmethod
    def from_bytes(cls, data: bytes, exchange: str, where: str) -> Catalog:
        """Read :meth:`to_bytes`; ``where`` names the file when it is not a list of ``exchange``."""
        try:
            doc = orjson.loads(gzip.decompress(data))
            if doc["exchange"] != exchange:
                raise MarketListError(f"{where} lists {doc['exchange']} markets, not {exchange}")
            markets = [_market(exchange, r["id"], r["base"], r["quote"], r["status"]) for r in doc["markets"]]
            return cls(exchange, [m for m in markets if m is not None], doc["source"], doc["as_of"])
        except (OSError, EOFError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise MarketListError(f"{where} is not a market list ({type(exc).__name__}: {exc})") from exc


def snapshot(exchange: str) -> Catalog:
    """The market list shipped with cryptostream (works offline; see data/markets/README.md)."""
    resource = files("cryptostream").joinpath("data", "markets", f"{exchange}.json.gz")
    return Catalog.from_bytes(resource.read_bytes(), exchange, f"the shipped {exchange} snapshot")


def _cache_file(exchange: str, folder: Path) -> Path:
    return folder / f"{exchange}.json.gz"


def cached(exchange: str, folder: Path) -> Catalog | None:
    """The last list :func:`refresh` fetched into ``folder``, or ``None`` (missing or unreadable)."""
    path = _cache_file(exchange, folder)
    try:
        catalog = Catalog.from_bytes(path.read_bytes(), exchange, str(path))
    except FileNotFoundError:
        return None
    except (OSError, MarketListError) as exc:
        log.warning("%s: ignoring the cached market list: %s", exchange, exc)
        return None
    return Catalog(exchange, catalog.markets, f"the cache {path} (of {catalog.source})", catalog.as_of)


def _save(catalog: Catalog, folder: Path) -> None:
    """Write the cache atomically: a reader sees the old list or the new one, never half of one."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{catalog.exchange}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(catalog.to_bytes())
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, _cache_file(catalog.exchange, folder))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


async def refresh(exchange: str, client: httpx.AsyncClient, base_url: str, cache_folder: Path) -> Catalog:
    """The live market list of ``exchange`` (cached in ``cache_folder``), else the cache, else the snapshot.

    Never raises for an unreachable exchange or a garbage answer: start-up must work offline. It logs one
    line saying why the live list was not used and which list is used instead.
    """
    url = f"{base_url.rstrip('/')}{ENDPOINTS[exchange]}"
    try:
        response = await client.get(url, timeout=REFRESH_TIMEOUT_SECONDS)
        response.raise_for_status()
        markets = PARSERS[exchange](response.json())
    except (httpx.HTTPError, httpx.InvalidURL, ValueError, MarketListError) as exc:
        fallback = cached(exchange, cache_folder) or snapshot(exchange)
        why = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        log.warning(
            "%s: market list not refreshed from %s (%s); using %s", exchange, url, why, fallback.describe()
        )
        return fallback
    catalog = Catalog(exchange, markets, url, datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    try:
        _save(catalog, cache_folder)
    except OSError as exc:
        log.warning(
            "%s: cannot cache the market list in %s (%s); using it uncached", exchange, cache_folder, exc
        )
    return catalog


# -------------------------------------------------------------------------------------------- resolving
def _closest(spelling: str, catalogs: Sequence[Catalog]) -> str:
    """Up to :data:`CLOSEST` trading pairs like ``spelling``: same base first, then by difflib similarity.

    The base is the part before the separator, or for a concatenation any listed base it starts with:
    a guess that only orders suggestions, never names a market.
    """
    symbol = normalize_symbol(spelling)
    pair = split_pair(spelling)
    venues: dict[str, list[str]] = {}
    bases: dict[str, str] = {}
    for catalog in catalogs:
        for market in catalog:
            if market.trading:
                venues.setdefault(market.symbol, []).append(catalog.exchange)
                bases[market.symbol] = market.base

    def same_base(candidate: str) -> bool:
        base = bases[candidate]
        return base == pair[0] if pair is not None else symbol.startswith(base)

    def rank(candidate: str) -> tuple[bool, float, str]:
        similarity = difflib.SequenceMatcher(None, symbol, candidate).ratio()
        return (not same_base(candidate), -similarity, candidate)

    similar = difflib.get_close_matches(symbol, venues, n=CLOSEST, cutoff=0.6)
    hits = sorted({*similar, *filter(same_base, venues)}, key=rank)[:CLOSEST]
    return ", ".join(f"{hit} ({', '.join(venues[hit])})" for hit in hits) or "none"


def _unresolved(spelling: str, found: Mapping[str, Market | None], catalogs: Sequence[Catalog]) -> str:
    listed = {name: m for name, m in found.items() if m is not None}
    if listed:
        where = ", ".join(f"{name} ({m.native}: {m.status})" for name, m in listed.items())
        return f"{spelling} is listed but not trading on {where}"
    return f"{spelling} is not listed on {' or '.join(found)}; closest: {_closest(spelling, catalogs)}"


def resolve(
    symbols: Sequence[str], exchanges: Sequence[str], catalogs: Mapping[str, Catalog]
) -> dict[str, list[Market]]:
    """Each exchange -> the markets of ``symbols`` it trades (in the order of ``symbols``).

    A symbol may trade on only some of the exchanges (it is streamed from those; see :func:`listed_on`).
    One that trades on none raises :class:`UnlistedSymbols`, one line naming it, the exchanges searched and
    the closest pairs they list.
    """
    resolved: dict[str, list[Market]] = {name: [] for name in exchanges}
    problems: list[str] = []
    for spelling in symbols:
        try:
            found = {name: catalogs[name].lookup(spelling) for name in exchanges}
        except UnsupportedSymbol as exc:
            problems.append(str(exc))
            continue
        trading = {name: m for name, m in found.items() if m is not None and m.trading}
        if not trading:
            problems.append(_unresolved(spelling, found, [catalogs[name] for name in exchanges]))
        for name, market in trading.items():
            if market not in resolved[name]:
                resolved[name].append(market)
    if problems:
        raise UnlistedSymbols("SYMBOLS: " + "; ".join(problems))
    return resolved


def listed_on(resolved: Mapping[str, Sequence[Market]]) -> dict[str, list[str]]:
    """Symbol -> the exchanges it is streamed from (to tell the user which come from one venue only)."""
    venues: dict[str, list[str]] = {}
    for exchange, markets in resolved.items():
        for market in markets:
            venues.setdefault(market.symbol, []).append(exchange)
    return venues


# ----------------------------------------------------------------------------------------- whole market
def local_catalogs(exchanges: Sequence[str], folder: Path) -> dict[str, Catalog]:
    """Each of ``exchanges`` -> its market list without the network: the cache :func:`refresh` keeps in
    ``folder``, else the shipped snapshot."""
    return {name: cached(name, folder) or snapshot(name) for name in exchanges}


def whole_market(catalogs: Iterable[Catalog]) -> list[str]:
    """Every symbol trading in ``catalogs``, once, in a fixed order: quote currencies with the most
    markets first (USD, USDT, BTC, ...), within one quote the coins listed in the most markets first
    (BTC, ETH, SOL, ...), ties alphabetically. The first N of it are the big markets (BTCUSD, ETHUSD, ...),
    and the order depends on the lists alone, not on the order of their entries."""
    pairs: dict[str, Market] = {}
    for catalog in catalogs:
        for market in catalog:
            if market.trading:
                pairs.setdefault(market.symbol, market)
    quotes = Counter(m.quote for m in pairs.values())
    bases = Counter(m.base for m in pairs.values())
    ranked = sorted(pairs.values(), key=lambda m: (-quotes[m.quote], m.quote, -bases[m.base], m.base))
    return [m.symbol for m in ranked]
