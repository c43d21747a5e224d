"""Raw exchange messages (tests/data/exchanges, as pasted in the parsers' docstrings) through the parsers.

Feeds are built with explicit markets from the shipped market lists (cryptostream/data/markets), no network.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson
import pytest

from cryptostream.errors import SettingsError
from cryptostream.markets import Market, snapshot
from cryptostream.settings import load_settings
from ingest.backfill import BackfillError, BinanceHistory, CoinbaseHistory
from ingest.exchanges import Binance, CoinbaseAdvanced, CoinbaseExchange, build
from ingest.exchanges import coinbase as coinbase_module
from ingest.exchanges.coinbase import advanced_is_buyer_maker, maker_side_is_buyer_maker
from ingest.validation import FieldError, epoch_to_ms, iso_to_ms

DATA = Path(__file__).parent.parent / "data" / "exchanges"
RECEIVED = 1_800_000_000_000


def raw(name: str) -> bytes:
    return (DATA / name).read_bytes().strip()


def settings(**overrides):
    values = {"symbols": "BNBBTC,BTCUSDT,NKNUSDT,BTCUSD", "backfill": False}
    values.update(overrides)
    return load_settings(**values)


LISTS = {"binance": snapshot("binance"), "coinbase": snapshot("coinbase")}


def markets(exchange: str, *spellings: str) -> list[Market]:
    found = [LISTS[exchange].lookup(spelling) for spelling in spellings]
    assert None not in found, f"{spellings} not all listed on {exchange}"
    return found


BINANCE = markets("binance", "BNBBTC", "BTCUSDT", "NKNUSDT")
COINBASE = markets("coinbase", "BTC-USD", "DOT-USD", "ARB-USD", "USDT-USD")


# ------------------------------------------------------------------------------------------------ Binance
def test_binance_trade_maps_every_field_and_keeps_both_times():
    (trade,) = Binance(settings(), BINANCE).parse(raw("binance_trade.json"), RECEIVED).trades
    assert trade.exchange == "binance"
    assert trade.symbol == "BNBBTC"
    assert trade.price == 0.001 and trade.quantity == 100.0
    assert trade.timestamp == 1672515782136  # T, the trade time
    assert trade.trade_id == 12345
    assert trade.is_buyer_maker is True  # m: the buyer was the maker, the taker sold
    assert trade.received_at == RECEIVED


def test_binance_microsecond_trade_time_is_cut_to_the_exact_millisecond():
    (trade,) = Binance(settings(), BINANCE).parse(raw("binance_trade_us.json"), RECEIVED).trades
    assert trade.timestamp == 1735689600123
    assert trade.is_buyer_maker is False and trade.trade_id == 4370000000


def test_binance_aggtrade_uses_the_aggregate_id():
    feed = Binance(settings(binance_stream="aggTrade"), BINANCE)
    (trade,) = feed.parse(raw("binance_aggtrade.json"), RECEIVED).trades
    assert (trade.symbol, trade.trade_id, trade.price, trade.quantity) == ("NKNUSDT", 15683430, 0.3528, 58.0)
    assert trade.timestamp == 1633998523963 and trade.is_buyer_maker is False
    assert feed.url().endswith("/stream?streams=bnbbtc@aggTrade/btcusdt@aggTrade/nknusdt@aggTrade")


def test_binance_streams_are_named_by_binance_symbols_of_the_markets():
    feed = Binance(settings(), markets("binance", "1INCH-USDT", "ETH-BTC", "USDT-TRY"))
    assert (
        feed.url()
        == "wss://stream.binance.com:9443/stream?streams=1inchusdt@trade/ethbtc@trade/usdttry@trade"
    )
    assert feed.symbols == {"1INCHUSDT", "ETHBTC", "USDTTRY"}


def test_a_feed_takes_only_markets_of_its_own_exchange():
    with pytest.raises(
        SettingsError, match="the binance feed needs markets binance lists, got DOT-USD .coinbase."
    ):
        Binance(settings(), markets("coinbase", "DOT-USD"))
    with pytest.raises(SettingsError, match="the coinbase feed needs markets coinbase lists, got none"):
        CoinbaseExchange(settings(), [])


def test_binance_control_frames():
    feed = Binance(settings(), BINANCE)
    assert feed.parse(raw("binance_server_shutdown.json"), RECEIVED).shutdown
    wrapped = b'{"stream":"btcusdt@trade","data":{"e":"serverShutdown","E":1770123456789}}'
    assert feed.parse(wrapped, RECEIVED).shutdown
    assert feed.parse(b'{"event":{"e":"serverShutdown","E":1770123456789}}', RECEIVED).shutdown
    error = feed.parse(raw("binance_error.json"), RECEIVED)
    assert error.error == "2: Invalid request: unknown variable" and not error.trades
    assert feed.parse(b'{"result":null,"id":1}', RECEIVED).alive


def test_binance_rest_rows_parse_like_the_stream():
    trades, rejects = Binance(settings(binance_stream="aggTrade"), BINANCE).parse_history(
        "BTCUSDT", orjson.loads(raw("binance_rest_aggtrades.json")), RECEIVED
    )
    assert not rejects
    assert [(t.trade_id, t.price, t.quantity, t.timestamp, t.is_buyer_maker) for t in trades] == [
        (26129, 0.01633102, 4.70443515, 1498793709153, True)
    ]
    trades, rejects = Binance(settings(), BINANCE).parse_history(
        "BTCUSDT", orjson.loads(raw("binance_rest_historical_trades.json")), RECEIVED
    )
    assert not rejects
    assert [(t.trade_id, t.price, t.quantity, t.timestamp, t.is_buyer_maker) for t in trades] == [
        (28457, 4.000001, 12.0, 1499865549590, True)
    ]


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"{not json", "malformed_json"),
        (b"[1,2]", "not_an_object"),
        (
            b'{"stream":"x","data":{"e":"trade","s":"BTCUSDT","t":1,"p":"1","q":"1","m":true}}',
            "missing_field",
        ),
        (
            b'{"stream":"x","data":{"e":"trade","s":"BTCUSDT","t":1,"p":"NaN","q":"1","T":1700000000000,"m":true}}',
            "non_finite_price",
        ),
        (
            b'{"stream":"x","data":{"e":"trade","s":"BTCUSDT","t":1,"p":"0","q":"1","T":1700000000000,"m":true}}',
            "non_positive_price",
        ),
        (
            b'{"stream":"x","data":{"e":"trade","s":"BTCUSDT","t":1,"p":"1","q":"-2","T":1700000000000,"m":true}}',
            "negative_quantity",
        ),
        (
            b'{"stream":"x","data":{"e":"trade","s":"ETHUSDT","t":1,"p":"1","q":"1","T":1700000000000,"m":true}}',
            "unknown_symbol",
        ),
        (
            b'{"stream":"x","data":{"e":"trade","s":"$$","t":1,"p":"1","q":"1","T":1700000000000,"m":true}}',
            "bad_symbol",
        ),
        (
            b'{"stream":"x","data":{"e":"trade","s":"BTCUSDT","t":1,"p":"abc","q":"1","T":1700000000000,"m":true}}',
            "wrong_type",
        ),
        (
            b'{"stream":"x","data":{"e":"trade","s":"BTCUSDT","t":1,"p":"1","q":"1","T":17,"m":true}}',
            "bad_timestamp",
        ),
        (
            b'{"stream":"x","data":{"e":"trade","s":"BTCUSDT","t":1,"p":"1","q":"1","T":1700000000000,"m":"yes"}}',
            "wrong_type",
        ),
        # "2".isdigit() and "²".isdigit() are both true, but int() reads only the first: the parse raised
        (
            '{"stream":"x","data":{"e":"trade","s":"BTCUSDT","t":"12²","p":"1","q":"1","T":1700000000000,"m":true}}'.encode(),
            "wrong_type",
        ),
        (
            '{"stream":"x","data":{"e":"trade","s":"BTCUSDT","t":1,"p":"1","q":"1","T":"170000000000²","m":true}}'.encode(),
            "wrong_type",
        ),
        (
            b'{"stream":"x","data":{"e":"trade","s":"BTCUSDT","t":1,"p":"1_0","q":"1","T":1700000000000,"m":true}}',
            "wrong_type",
        ),
        (
            b'{"stream":"x","data":{"e":"trade","s":"BTCUSDT","t":1,"p":" 1",'
            b'"q":"1","T":1700000000000,"m":true}}',
            "wrong_type",
        ),
    ],
)
def test_bad_binance_frames_are_rejected_with_a_reason_and_the_raw_payload(frame, reason):
    parsed = Binance(settings(), BINANCE).parse(frame, RECEIVED)
    assert not parsed.trades
    (rejected,) = parsed.rejected
    assert rejected.reason == reason
    assert rejected.raw == frame


# ------------------------------------------------------------------------------------------------ Coinbase
def test_coinbase_match_side_is_the_makers_side():
    feed = CoinbaseExchange(settings(), COINBASE)
    (trade,) = feed.parse(raw("coinbase_match.json"), RECEIVED).trades
    assert (trade.exchange, trade.symbol, trade.trade_id) == ("coinbase", "BTCUSD", 10)
    assert (trade.price, trade.quantity) == (400.23, 5.23512)
    assert trade.timestamp == iso_to_ms("2014-11-07T08:19:27.028459Z") == 1415348367028
    # side "sell": a resting sell order was hit, the taker bought, so the buyer is NOT the maker
    assert trade.is_buyer_maker is False
    (last,) = feed.parse(raw("coinbase_last_match.json"), RECEIVED).trades
    assert last.trade_id == 9 and last.is_buyer_maker is True  # side "buy": the buyer rested on the book


def test_coinbase_control_frames():
    feed = CoinbaseExchange(settings(), COINBASE)
    assert feed.subscriptions() == [
        {
            "type": "subscribe",
            "product_ids": ["BTC-USD", "DOT-USD", "ARB-USD", "USDT-USD"],  # not DO-TUSD, AR-BUSD, USD-TUSD
            "channels": ["matches", "heartbeat"],
        }
    ]
    assert feed.parse(raw("coinbase_subscriptions.json"), RECEIVED).alive
    heartbeat = feed.parse(raw("coinbase_heartbeat.json"), RECEIVED)
    assert heartbeat.alive and heartbeat.last_ids == {"BTCUSD": 20} and not heartbeat.trades
    assert feed.parse(raw("coinbase_error.json"), RECEIVED).error == (
        "Failed to subscribe: FOO-BAR is not a valid product"
    )


def test_coinbase_rest_rows_use_the_same_side_mapping():
    trades, rejects = CoinbaseExchange(settings(), COINBASE).parse_history(
        "BTCUSD", orjson.loads(raw("coinbase_rest_trades.json")), RECEIVED
    )
    assert not rejects
    assert [(t.trade_id, t.is_buyer_maker, t.timestamp) for t in trades] == [
        (74, True, 1415398768578),
        (73, False, 1415322523642),
    ]


def test_coinbase_advanced_batches_snapshot_and_update_with_nanosecond_times():
    feed = CoinbaseAdvanced(settings(), COINBASE)
    assert feed.subscriptions() == [
        {
            "type": "subscribe",
            "product_ids": ["BTC-USD", "DOT-USD", "ARB-USD", "USDT-USD"],
            "channel": "market_trades",
        },
        {"type": "subscribe", "channel": "heartbeats"},
    ]
    assert feed.parse(raw("coinbase_advanced_subscriptions.json"), RECEIVED).alive
    snapshot = feed.parse(raw("coinbase_advanced_snapshot.json"), RECEIVED).trades
    assert [t.trade_id for t in snapshot] == [1068572090, 1068572089]
    (trade,) = feed.parse(raw("coinbase_advanced_update.json"), RECEIVED).trades
    assert (trade.symbol, trade.trade_id, trade.price, trade.quantity) == (
        "BTCUSD",
        1068572091,
        65083.67,
        0.01034361,
    )
    assert trade.timestamp == 1786309548167  # 2026-08-09T21:05:48.167634Z, cut to the millisecond
    assert feed.sequence_gaps == 1  # sequence_num jumped from 1 to 9
    assert feed.parse(raw("coinbase_advanced_heartbeats.json"), RECEIVED).alive
    assert feed.parse(raw("coinbase_advanced_error.json"), RECEIVED).error == "failure to subscribe"


def test_advanced_trade_side_mapping_is_the_documented_choice():
    """Advanced Trade ``side`` is read as the maker's side, like the Exchange feed (see coinbase.py).

    The same trade (same id, same matching engine) must get the same direction from either feed and from
    the REST backfill; flipping ADVANCED_SIDE_IS_MAKER is the one switch if Coinbase says otherwise.
    """
    assert coinbase_module.ADVANCED_SIDE_IS_MAKER is True
    for side in ("BUY", "SELL"):
        assert advanced_is_buyer_maker(side) == maker_side_is_buyer_maker(side.lower())
    assert advanced_is_buyer_maker("SELL") is False  # maker sold -> taker bought -> buyer is not the maker
    assert advanced_is_buyer_maker("BUY") is True
    with pytest.raises(FieldError):
        advanced_is_buyer_maker("UNKNOWN")


def test_a_trade_id_with_a_digit_int_cannot_read_is_rejected_and_the_batch_goes_on():
    frame = orjson.loads(raw("coinbase_advanced_update.json"))
    good = frame["events"][0]["trades"][0]
    frame["events"][0]["trades"].append({**good, "trade_id": "1068572092\u00b2"})
    parsed = CoinbaseAdvanced(settings(), COINBASE).parse(orjson.dumps(frame), RECEIVED)
    assert [t.trade_id for t in parsed.trades] == [1068572091]
    assert [r.reason for r in parsed.rejected] == ["wrong_type"]


def test_one_bad_trade_in_an_advanced_batch_does_not_spoil_the_others():
    frame = orjson.loads(raw("coinbase_advanced_update.json"))
    good = frame["events"][0]["trades"][0]
    bad = {**good, "trade_id": "1068572092", "price": "-1"}
    frame["events"][0]["trades"].append(bad)
    parsed = CoinbaseAdvanced(settings(), COINBASE).parse(orjson.dumps(frame), RECEIVED)
    assert [t.trade_id for t in parsed.trades] == [1068572091]
    (rejected,) = parsed.rejected
    assert rejected.reason == "non_positive_price" and orjson.loads(rejected.raw) == bad


# ------------------------------------------------------------------------------------------------ times
@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("2026-08-09T21:05:48.251397169Z", 1786309548251),
        ("2026-08-09T21:05:48.2Z", 1786309548200),
        ("2026-08-09T21:05:48Z", 1786309548000),
        ("2026-08-09T23:05:48.999+02:00", 1786309548999),
        ("2026-08-09 21:05:48.999999999+0000", 1786309548999),
    ],
)
def test_iso_times_are_exact_to_the_millisecond(text, ms):
    assert iso_to_ms(text) == ms


@pytest.mark.parametrize(
    ("value", "ms"),
    [(1786309548251, 1786309548251), (1786309548251397, 1786309548251), (1786309548251397169, 1786309548251)],
)
def test_epoch_numbers_in_ms_us_and_ns(value, ms):
    assert epoch_to_ms(value) == ms


@pytest.mark.parametrize(
    "bad",
    [
        "yesterday",
        "2026-13-01T00:00:00Z",
        "2026-02-30T00:00:00Z",  # timegm rolled it over to March 2
        "2026-08-09T21:05:61Z",
        "2026-08-09T21:05:48+99:99",
        "\uff12\uff10\uff12\uff16-08-09T21:05:48Z",  # fullwidth digits: int() reads them, a time has none
        17,
        True,
        None,
        "17000000000\u00b2",
    ],
)
def test_bad_times_raise_a_field_error(bad):
    with pytest.raises(FieldError):
        iso_to_ms(bad) if isinstance(bad, str) else epoch_to_ms(bad)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"binance_ws_url": "https://stream.binance.com"}, "BINANCE_WS_URL must start with ws:// or wss://"),
        ({"binance_rest_url": "api.binance.com"}, "BINANCE_REST_URL must start with http:// or https://"),
        ({"coinbase_ws_url": "ws-feed.exchange.coinbase.com"}, "COINBASE_WS_URL must start with ws://"),
        ({"coinbase_rest_url": "ftp://x"}, "COINBASE_REST_URL must start with http://"),
    ],
)
def test_bad_endpoint_settings_fail_in_one_line_naming_the_setting(overrides, message):
    both = {"binance": BINANCE, "coinbase": COINBASE}
    with pytest.raises(SettingsError, match=message):
        build(settings(exchanges="binance,coinbase", backfill=True, **overrides), httpx.AsyncClient(), both)


def test_build_makes_a_feed_only_for_exchanges_that_list_a_symbol():
    feeds = build(
        settings(exchanges="binance,coinbase"), httpx.AsyncClient(), {"binance": [], "coinbase": COINBASE}
    )
    assert [type(feed) for feed in feeds] == [CoinbaseExchange]
    # the demo venue is no live exchange: refused by the settings or by build, naming it either way
    with pytest.raises(SettingsError, match="EXCHANGES .*synthetic"):
        build(settings(exchanges="synthetic"), httpx.AsyncClient(), {})


# -------------------------------------------------------------------------------------------- REST history
def history_client(rows: bytes, seen: list[httpx.URL]) -> httpx.AsyncClient:
    """An HTTP client whose transport answers every request with ``rows`` (an injected test double)."""

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        return httpx.Response(200, content=rows, headers={"Content-Type": "application/json"})

    return httpx.AsyncClient(transport=httpx.MockTransport(answer))


async def test_coinbase_history_asks_for_the_product_id_of_the_market():
    seen: list[httpx.URL] = []
    async with history_client(raw("coinbase_rest_trades.json"), seen) as http:
        history = CoinbaseHistory(http, "https://api.exchange.coinbase.com", COINBASE)
        rows = await history.fetch("DOTUSD", 73, 74)
        with pytest.raises(BackfillError, match="ETHUSD is not one of this feed's markets .BTCUSD, DOTUSD"):
            await history.fetch("ETHUSD", 1, 2)
    assert [row["trade_id"] for row in rows] == [74, 73]
    assert seen[0].path == "/products/DOT-USD/trades"  # the heuristic asked for /products/DO-TUSD/trades


async def test_binance_history_asks_for_the_binance_symbol_of_the_market():
    seen: list[httpx.URL] = []
    async with history_client(raw("binance_rest_historical_trades.json"), seen) as http:
        history = BinanceHistory(http, "https://api.binance.com", markets("binance", "1INCH-USDT"), "trade")
        await history.fetch("1INCHUSDT", 28457, 28457)
    assert (seen[0].path, seen[0].params["symbol"]) == ("/api/v3/historicalTrades", "1INCHUSDT")
