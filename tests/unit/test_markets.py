"""Markets come from the exchanges' own lists, never from string heuristics (issue #14).

The shipped snapshots are real exchange answers (cryptostream/data/markets/README.md); the refresh tests
talk to a real local HTTP server that answers with the raw samples in tests/data/exchanges, an empty
port, or garbage.
"""

from __future__ import annotations

import gzip
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import orjson
import pytest

from cryptostream.errors import SettingsError
from cryptostream.markets import (
    EXCHANGES,
    Catalog,
    Market,
    MarketListError,
    cached,
    listed_on,
    local_catalogs,
    parse_binance,
    parse_coinbase,
    refresh,
    resolve,
    snapshot,
    whole_market,
)

DATA = Path(__file__).parent.parent / "data" / "exchanges"
CATALOGS = {name: snapshot(name) for name in EXCHANGES}
BOTH = ["binance", "coinbase"]


def fixture(name: str) -> bytes:
    return (DATA / name).read_bytes()


def natives(resolved: dict[str, list[Market]]) -> dict[str, list[str]]:
    return {name: [m.native for m in markets] for name, markets in resolved.items()}


# ------------------------------------------------------------------------------------------------ the issue
# (pair, Binance id or None when Binance does not list it, Coinbase id)
ISSUE_PAIRS = [
    ("DOT-USD", None, "DOT-USD"),  # the heuristic made DO-TUSD
    ("ARB-USD", None, "ARB-USD"),  # AR-BUSD
    ("BNB-USD", None, "BNB-USD"),  # BN-BUSD
    ("USDT-USD", None, "USDT-USD"),  # USD-TUSD
    ("BTC-USDT", "BTCUSDT", "BTC-USDT"),
    ("ETH-BTC", "ETHBTC", "ETH-BTC"),
    ("1INCH-USD", None, "1INCH-USD"),
]


@pytest.mark.parametrize(("pair", "binance", "coinbase"), ISSUE_PAIRS)
def test_the_issue_pairs_map_to_the_exchanges_own_ids(pair, binance, coinbase):
    resolved = resolve([pair], BOTH, CATALOGS)
    assert natives(resolved) == {"binance": [binance] if binance else [], "coinbase": [coinbase]}
    base, quote = pair.split("-")
    for market in (*resolved["binance"], *resolved["coinbase"]):
        assert (market.symbol, market.base, market.quote) == (base + quote, base, quote)
        assert market.trading


@pytest.mark.parametrize(
    ("pair", "closest"),
    [
        ("DOT-USD", "DOTUSDT (binance)"),
        ("ARB-USD", "ARBUSDT (binance)"),
        ("BNB-USD", "BNBUSDT (binance)"),
        ("USDT-USD", "USDTDAI (binance)"),
        ("1INCH-USD", "1INCHUSDT (binance)"),
    ],
)
def test_a_pair_binance_does_not_list_is_a_clear_error_with_the_closest_pairs(pair, closest):
    with pytest.raises(SettingsError) as caught:
        resolve([pair], ["binance"], CATALOGS)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"SYMBOLS: {pair} is not listed on binance; closest: {pair.split('-')[0]}")
    assert closest in message


def test_the_default_symbols_trade_on_both_exchanges():
    resolved = resolve(["BTCUSDT", "ETHUSDT", "SOLUSDT"], BOTH, CATALOGS)
    assert natives(resolved) == {
        "binance": ["BTCUSDT", "ETHUSDT", "SOLUSDT"],
        "coinbase": ["BTC-USDT", "ETH-USDT", "SOL-USDT"],
    }


# ------------------------------------------------------------------------------------------------ spellings
@pytest.mark.parametrize(
    "spelling", ["DOT-USD", "DOTUSD", "DOT/USD", "dot_usd", "dotusd", " Dot-Usd ", "DOT:USD"]
)
def test_every_spelling_finds_the_same_market(spelling):
    market = CATALOGS["coinbase"].lookup(spelling)
    assert market == Market("coinbase", "DOTUSD", "DOT", "USD", "DOT-USD", "trading")


@pytest.mark.parametrize("spelling", ["BTC-USDT", "BTCUSDT", "BTC/USDT", "btc_usdt", "btcusdt"])
def test_binance_spellings_find_its_symbol(spelling):
    assert CATALOGS["binance"].lookup(spelling).native == "BTCUSDT"


def test_a_concatenation_is_split_by_the_list_not_by_guessing():
    coinbase = CATALOGS["coinbase"]
    assert (coinbase.lookup("USDTUSD").base, coinbase.lookup("USDTUSD").quote) == ("USDT", "USD")
    assert (coinbase.lookup("ARBUSD").base, coinbase.lookup("ARBUSD").quote) == ("ARB", "USD")
    assert coinbase.lookup("DO-TUSD") is None  # a separator is taken at its word
    assert CATALOGS["binance"].lookup("BTCUSD") is None  # Binance has no USD book


def test_a_concatenation_two_markets_share_asks_for_a_separator():
    markets = [
        Market("coinbase", "ABCDEF", "AB", "CDEF", "AB-CDEF", "trading"),
        Market("coinbase", "ABCDEF", "ABC", "DEF", "ABC-DEF", "trading"),
    ]
    catalog = Catalog("coinbase", markets, "test", "2026-01-01T00:00:00Z")
    assert catalog.lookup("ABC-DEF").native == "ABC-DEF"
    with pytest.raises(SettingsError, match="ABCDEF is ambiguous on coinbase .AB-CDEF or ABC-DEF.; write it"):
        catalog.lookup("ABCDEF")


# ------------------------------------------------------------------------------------------------ resolving
def test_an_unknown_symbol_fails_in_one_line_naming_it_the_exchanges_and_the_closest():
    with pytest.raises(SettingsError) as caught:
        resolve(["BTCUSDT", "DOTUSX"], BOTH, CATALOGS)
    assert str(caught.value).startswith(
        "SYMBOLS: DOTUSX is not listed on binance or coinbase; closest: DOTUSD (coinbase), "
    )
    assert "DOTUSDT (binance, coinbase)" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_every_unknown_symbol_is_named_in_the_same_line():
    with pytest.raises(SettingsError) as caught:
        resolve(["DOTUSX", "BTC-USDT", "QQQ-ZZZ"], BOTH, CATALOGS)
    message = str(caught.value)
    assert "DOTUSX is not listed" in message and "QQQ-ZZZ is not listed" in message
    assert "BTC-USDT" not in message and "\n" not in message


def test_a_listed_pair_that_does_not_trade_is_refused_with_its_status():
    with pytest.raises(
        SettingsError, match=r"DAI-USD is listed but not trading on coinbase \(DAI-USD: delisted\)"
    ):
        resolve(["DAI-USD"], BOTH, CATALOGS)


def test_a_pair_on_one_exchange_is_streamed_from_that_one_and_said_so():
    resolved = resolve(["ETH-BTC", "DOT-USD", "BTCUSDT", "btc-usdt"], BOTH, CATALOGS)
    assert natives(resolved) == {
        "binance": ["ETHBTC", "BTCUSDT"],
        "coinbase": ["ETH-BTC", "DOT-USD", "BTC-USDT"],
    }
    assert listed_on(resolved) == {"ETHBTC": BOTH, "BTCUSDT": BOTH, "DOTUSD": ["coinbase"]}


def test_an_unsupported_spelling_is_named():
    with pytest.raises(SettingsError, match="unsupported symbol 'BTC-USD-X'"):
        resolve(["BTC-USD-X"], BOTH, CATALOGS)


# ------------------------------------------------------------------------------------------------ snapshots
@pytest.mark.parametrize("exchange", EXCHANGES)
def test_the_shipped_snapshot_loads_offline_and_is_consistent(exchange):
    catalog = snapshot(exchange)
    assert len(catalog) > 500 and catalog.as_of.startswith("20")
    assert "@" in catalog.source  # the published copy it came from, with its commit
    for market in catalog:
        assert market.exchange == exchange
        assert market.symbol == market.base + market.quote
        assert market.native.replace("-", "") == market.symbol
    assert len({m.native for m in catalog}) == len(catalog)


def test_the_coinbase_snapshot_leaves_usdc_aliases_out():
    assert CATALOGS["coinbase"].lookup("BTC-USDC") is None
    assert CATALOGS["binance"].lookup("BTC-USDC").native == "BTCUSDC"


# ------------------------------------------------------------------------------------------------ parsing
def test_parse_the_real_binance_answer():
    markets = parse_binance(orjson.loads(fixture("binance_exchange_info.json")))
    assert [(m.native, m.base, m.quote, m.status) for m in markets] == [
        ("ETHBTC", "ETH", "BTC", "trading"),
        ("BNBBTC", "BNB", "BTC", "trading"),
        ("BTCUSDT", "BTC", "USDT", "trading"),
        ("DOTUSDT", "DOT", "USDT", "trading"),
        ("1INCHUSDT", "1INCH", "USDT", "trading"),
    ]


def test_binance_statuses_and_names_it_cannot_stream():
    answer = orjson.loads(fixture("binance_exchange_info.json"))
    first = answer["symbols"][0]
    answer["symbols"] = [
        {**first, "status": "BREAK"},
        {**first, "symbol": "币安人生USDT", "baseAsset": "币安人生", "quoteAsset": "USDT"},  # not ASCII
        {**first, "symbol": "ETHBTCX"},  # an id that is not base + quote
        "not an object",
    ]
    (market,) = parse_binance(answer)
    assert (market.native, market.status, market.trading) == ("ETHBTC", "break", False)


def test_parse_the_real_coinbase_exchange_answer():
    markets = parse_coinbase(orjson.loads(fixture("coinbase_products.json")))
    assert [m.native for m in markets] == [
        "BTC-USDT",
        "BTC-USD",
        "ETH-USDT",
        "ADA-USDT",
        "XRP-USDT",
        "DOGE-USDT",
    ]
    assert all(m.trading for m in markets)
    answer = orjson.loads(fixture("coinbase_products.json"))
    answer[0]["trading_disabled"] = True
    answer[1]["status"] = "delisted"
    statuses = [m.status for m in parse_coinbase(answer)[:3]]
    assert statuses == ["trading_disabled", "delisted", "trading"]


def test_parse_the_real_coinbase_advanced_trade_answer():
    markets = parse_coinbase(orjson.loads(fixture("coinbase_advanced_products.json")))
    assert [(m.native, m.status) for m in markets] == [
        ("BTC-USD", "trading"),
        ("DOT-USD", "trading"),
        ("1INCH-USD", "trading"),
        ("DAI-USD", "delisted"),
    ]  # BTC-USDC is an alias of the BTC-USD book


@pytest.mark.parametrize("garbage", [{"symbols": []}, {"symbols": "x"}, [1, 2], "TRADING", None])
def test_garbage_is_not_a_market_list(garbage):
    with pytest.raises(MarketListError):
        parse_binance(garbage)
    with pytest.raises(MarketListError):
        parse_coinbase(garbage)


# ------------------------------------------------------------------------------------------------ refresh
class Answers:
    """A real HTTP server on 127.0.0.1 answering each path with a fixed (status, body)."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes]] = {}
        self.requests: list[str] = []
        answers = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                answers.requests.append(self.path)
                status, body = answers.routes.get(self.path, (404, b'{"message":"NotFound"}'))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture
def answers() -> Iterator[Answers]:
    server = Answers()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


async def test_refresh_reads_the_live_binance_list_and_caches_it(answers, tmp_path):
    answers.routes["/api/v3/exchangeInfo"] = (200, fixture("binance_exchange_info.json"))
    async with httpx.AsyncClient() as http:
        catalog = await refresh("binance", http, answers.url + "/", tmp_path)
    assert catalog.source == f"{answers.url}/api/v3/exchangeInfo"
    assert [m.native for m in catalog] == ["ETHBTC", "BNBBTC", "BTCUSDT", "DOTUSDT", "1INCHUSDT"]
    again = cached("binance", tmp_path)
    assert again is not None and again.markets == catalog.markets
    assert again.source.startswith("the cache ") and catalog.source in again.source
    assert [p.name for p in tmp_path.iterdir()] == ["binance.json.gz"]  # no temporary file left behind


async def test_refresh_reads_the_live_coinbase_products(answers, tmp_path):
    answers.routes["/products"] = (200, fixture("coinbase_products.json"))
    async with httpx.AsyncClient() as http:
        catalog = await refresh("coinbase", http, answers.url, tmp_path)
    assert catalog.lookup("BTCUSDT").native == "BTC-USDT"
    assert catalog.lookup("DOT-USD") is None  # this answer does not list it
    assert answers.requests == ["/products"]


async def test_an_unreachable_exchange_falls_back_to_the_cache_then_the_snapshot(
    answers, tmp_path, unused_tcp_port, caplog
):
    dead = f"http://127.0.0.1:{unused_tcp_port}"
    async with httpx.AsyncClient() as http:
        with caplog.at_level(logging.WARNING, logger="cryptostream.markets"):
            first = await refresh("coinbase", http, dead, tmp_path)
        assert first.source == snapshot("coinbase").source and first.markets == snapshot("coinbase").markets
        (record,) = [r for r in caplog.records if r.name == "cryptostream.markets"]
        assert record.getMessage().startswith(
            f"coinbase: market list not refreshed from {dead}/products (Connect"
        )
        assert "using 520 markets from bmoscon/cryptofeed" in record.getMessage()

        answers.routes["/products"] = (200, fixture("coinbase_products.json"))
        await refresh("coinbase", http, answers.url, tmp_path)
        later = await refresh("coinbase", http, dead, tmp_path)
    assert later.source.startswith(f"the cache {tmp_path / 'coinbase.json.gz'}")
    assert [m.native for m in later] == [
        "BTC-USDT",
        "BTC-USD",
        "ETH-USDT",
        "ADA-USDT",
        "XRP-USDT",
        "DOGE-USDT",
    ]


@pytest.mark.parametrize(
    ("status", "body", "why"),
    [
        (200, b"<html>maintenance</html>", "JSONDecodeError"),
        (200, b'{"symbols": []}', "MarketListError: exchangeInfo: no usable market"),
        (
            200,
            b'{"code": -1003, "msg": "Too many requests"}',
            "MarketListError: exchangeInfo: expected an object",
        ),
        (418, b'{"code": -1003, "msg": "banned"}', "HTTPStatusError"),
        (503, b"", "HTTPStatusError"),
    ],
)
async def test_a_garbage_answer_falls_back_and_keeps_the_cache(answers, tmp_path, caplog, status, body, why):
    answers.routes["/api/v3/exchangeInfo"] = (200, fixture("binance_exchange_info.json"))
    async with httpx.AsyncClient() as http:
        good = await refresh("binance", http, answers.url, tmp_path)
        answers.routes["/api/v3/exchangeInfo"] = (status, body)
        with caplog.at_level(logging.WARNING, logger="cryptostream.markets"):
            fallback = await refresh("binance", http, answers.url, tmp_path)
    assert fallback.markets == good.markets and fallback.source.startswith("the cache ")
    (record,) = [r for r in caplog.records if r.name == "cryptostream.markets"]
    assert why in record.getMessage()
    assert cached("binance", tmp_path).markets == good.markets  # garbage never overwrites a good cache


async def test_a_corrupt_cache_is_skipped_for_the_snapshot(tmp_path, unused_tcp_port, caplog):
    (tmp_path / "binance.json.gz").write_bytes(b"not gzip")
    (tmp_path / "coinbase.json.gz").write_bytes(snapshot("binance").to_bytes())  # another exchange's list
    async with httpx.AsyncClient() as http:
        with caplog.at_level(logging.WARNING, logger="cryptostream.markets"):
            binance = await refresh("binance", http, f"http://127.0.0.1:{unused_tcp_port}", tmp_path)
            coinbase = await refresh("coinbase", http, f"http://127.0.0.1:{unused_tcp_port}", tmp_path)
    assert binance.source == snapshot("binance").source
    assert coinbase.source == snapshot("coinbase").source
    assert "is not a market list" in caplog.text and "lists binance markets, not coinbase" in caplog.text


def test_the_file_format_round_trips_and_keeps_only_what_a_market_needs():
    catalog = Catalog(
        "binance", parse_binance(orjson.loads(fixture("binance_exchange_info.json"))), "src", "t"
    )
    data = catalog.to_bytes()
    doc = orjson.loads(gzip.decompress(data))
    assert doc["markets"][0] == {"id": "ETHBTC", "base": "ETH", "quote": "BTC", "status": "trading"}
    assert Catalog.from_bytes(data, "binance", "here").markets == catalog.markets
    assert (
        data == catalog.to_bytes()
    )  # deterministic: a snapshot rebuilt from the same answer is the same file


def test_the_whole_market_is_every_trading_pair_once_biggest_quotes_and_coins_first():
    every = whole_market(CATALOGS.values())
    assert len(every) == len(set(every)) == len({m.symbol for c in CATALOGS.values() for m in c if m.trading})
    assert "DAIUSD" not in every  # delisted on Coinbase, not listed on Binance
    assert every[:3] == ["BTCUSD", "ETHUSD", "USDTUSD"]
    usdt = [s for s in every if s.endswith("USDT") and s[:-4] in ("BTC", "ETH", "SOL", "1000SATS")]
    assert usdt == ["BTCUSDT", "ETHUSDT", "SOLUSDT", "1000SATSUSDT"]  # most-listed coins first
    shuffled = [Catalog(c.exchange, list(reversed(c.markets)), c.source, c.as_of) for c in CATALOGS.values()]
    assert whole_market(reversed(shuffled)) == every  # the lists' contents decide, not their order


def test_local_catalogs_prefer_the_cache_to_the_snapshot(tmp_path):
    mine = Catalog("coinbase", [Market("coinbase", "ABCUSD", "ABC", "USD", "ABC-USD", "trading")], "t", "now")
    (tmp_path / "coinbase.json.gz").write_bytes(mine.to_bytes())
    found = local_catalogs(BOTH, tmp_path)
    assert [m.symbol for m in found["coinbase"]] == ["ABCUSD"]
    assert len(found["binance"]) == len(CATALOGS["binance"])
