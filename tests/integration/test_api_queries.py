"""GraphQL queries over real HTTP (uvicorn on a free port) against the real database, seeded through the
processor's database sink with candles a naive batch computation made from synthetic markets on several
venues (one symbol on two of them)."""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest
import pytest_asyncio
from graphql import get_introspection_query

from graphql_api.app import create_app
from graphql_api.server import BackgroundServer
from tests.conftest import T0
from tests.integration.api_helpers import (
    DEMO_LAST,
    DEMO_ONLY,
    SECOND,
    SYMBOLS,
    api_settings,
    buckets,
    error_messages,
    graphql,
    iso,
    of_market,
    roll_up,
    seed_market,
)
from tests.reference import Key, assert_candles_equal, rows_by_key

pytestmark = pytest.mark.integration

CANDLE_FIELDS = "exchange symbol bucket open high low close volume tradeCount vwap buyVolume sellVolume"
COLUMN_FIELDS = (
    "exchange symbol interval count bucket open high low close volume tradeCount vwap buyVolume sellVolume"
)
BINANCE = "binance"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def seeded(database_url: str) -> AsyncIterator[dict[str, Any]]:
    yield await seed_market(database_url)


@pytest.fixture(scope="module")
def client(
    seeded: dict[str, Any], database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    app = create_app(api_settings(database_url, tmp_path_factory.mktemp("api")))
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def _by_key(rows: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    return rows_by_key(
        {
            **r,
            "bucket": datetime.fromisoformat(r["bucket"]),
            "trade_count": r["tradeCount"],
            "buy_volume": r["buyVolume"],
            "sell_volume": r["sellVolume"],
        }
        for r in rows
    )


def _candles(client: httpx.Client, **args: Any) -> list[dict[str, Any]]:
    body = graphql(
        client,
        "query($symbol: String!, $exchange: String, $interval: String!, $from: DateTime, $to: DateTime, "
        "$limit: Int!) { candles(symbol: $symbol, exchange: $exchange, interval: $interval, from: $from, "
        f"to: $to, limit: $limit) {{ {CANDLE_FIELDS} }} }}",
        {"interval": "1s", "limit": 10_000, **args},
    )
    assert "errors" not in body, body["errors"]
    rows: list[dict[str, Any]] = body["data"]["candles"]
    return rows


def test_candles_equal_a_batch_computation_over_the_same_trades(
    client: httpx.Client, seeded: dict[str, Any]
) -> None:
    for symbol in SYMBOLS:
        expected = of_market(seeded["candles"], BINANCE, symbol)
        rows = _candles(client, symbol=symbol, exchange=BINANCE)
        assert [r["bucket"] for r in rows] == sorted(r["bucket"] for r in rows)
        assert_candles_equal(_by_key(rows), expected)


def test_one_symbol_on_two_venues_is_two_candle_series_each_its_own_batch_result(
    client: httpx.Client, seeded: dict[str, Any]
) -> None:
    series = {}
    for exchange in ("binance", "coinbase"):
        rows = _candles(client, symbol="BTCUSDT", exchange=exchange)
        assert {r["exchange"] for r in rows} == {exchange}
        assert_candles_equal(_by_key(rows), of_market(seeded["candles"], exchange, "BTCUSDT"))
        series[exchange] = {r["bucket"]: r["close"] for r in rows}
    shared = series["binance"].keys() & series["coinbase"].keys()
    assert len(shared) > 100 and any(series["binance"][b] != series["coinbase"][b] for b in shared)
    # Minutes roll up each venue's own seconds.
    for exchange in ("binance", "coinbase"):
        minutes = _candles(client, symbol="BTCUSDT", exchange=exchange, interval="1m")
        expected = roll_up(of_market(seeded["candles"], exchange, "BTCUSDT"), 60_000)
        assert_candles_equal(_by_key(minutes), expected)


def test_a_symbol_alone_follows_the_venue_rule(client: httpx.Client, seeded: dict[str, Any]) -> None:
    """BTCUSDT trades on binance and coinbase: the first of EXCHANGES (binance,coinbase). DOGEUSDT only on the
    demo venue: that one. ADAUSDT on the demo venue and upbit, neither preferred: the real venue first."""
    picked = {}
    for symbol in ("BTCUSDT", DEMO_ONLY[1], DEMO_LAST[0][1]):
        body = graphql(
            client,
            "query($s: String!) { candleColumns(symbol: $s, limit: 10000) { exchange symbol count bucket } "
            "latestCandle(symbol: $s) { exchange } volatility(symbol: $s, limit: 1) { exchange } }",
            {"s": symbol},
        )
        assert "errors" not in body, body["errors"]
        data = body["data"]
        cols = data["candleColumns"]
        picked[symbol] = cols["exchange"]
        assert cols["bucket"] == buckets(seeded["candles"], cols["exchange"], symbol)
        assert data["latestCandle"]["exchange"] == cols["exchange"]
        assert [v["exchange"] for v in data["volatility"]] == [cols["exchange"]]
    assert picked == {"BTCUSDT": "binance", "DOGEUSDT": "synthetic", "ADAUSDT": "upbit"}


def test_with_coinbase_first_in_exchanges_a_symbol_alone_means_coinbase(
    seeded: dict[str, Any], database_url: str, tmp_path: Any
) -> None:
    app = create_app(api_settings(database_url, tmp_path, exchanges=["coinbase", "binance"]))
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        rows = _candles(http, symbol="BTCUSDT")
        body = graphql(http, '{ predictions(symbol: "BTCUSDT", limit: 100) { exchange probabilityUp } }')
    assert {r["exchange"] for r in rows} == {"coinbase"}
    assert_candles_equal(_by_key(rows), of_market(seeded["candles"], *SECOND))
    predictions = body["data"]["predictions"]
    assert len(predictions) == 10 and {p["exchange"] for p in predictions} == {"coinbase"}


def test_markets_lists_venue_symbol_demo_flag_and_stored_span(
    client: httpx.Client, seeded: dict[str, Any]
) -> None:
    body = graphql(client, "{ markets { exchange symbol demo preferred firstCandle lastCandle } }")
    assert "errors" not in body, body["errors"]
    listed = {(m["exchange"], m["symbol"]): m for m in body["data"]["markets"]}
    stored = {k[:2] for k in seeded["candles"]}
    for market in stored:
        span = buckets(seeded["candles"], *market)
        assert (listed[market]["firstCandle"], listed[market]["lastCandle"]) == (iso(span[0]), iso(span[-1]))
        assert listed[market]["demo"] is (market[0] == "synthetic")
    # Configured (EXCHANGES x SYMBOLS, as each exchange lists them) but nothing stored yet.
    configured = {("coinbase", "ETHUSDT"), ("coinbase", "SOLUSDT")}
    assert set(listed) == stored | configured
    assert all(listed[m]["firstCandle"] is None and listed[m]["lastCandle"] is None for m in configured)
    preferred = sorted(m for m, row in listed.items() if row["preferred"])
    assert preferred == sorted([("binance", s) for s in SYMBOLS] + [DEMO_ONLY, ("upbit", "ADAUSDT")])
    assert [(m["exchange"], m["symbol"]) for m in body["data"]["markets"]] == sorted(listed)


def test_limit_keeps_the_newest_rows_oldest_first_and_lowercase_symbols_work(
    client: httpx.Client, seeded: dict[str, Any]
) -> None:
    newest = buckets(seeded["candles"], BINANCE, "ETHUSDT")[-25:]
    rows = _candles(client, symbol="eth-usdt", exchange="Binance", limit=25)
    assert [(r["exchange"], r["symbol"], r["bucket"]) for r in rows] == [
        (BINANCE, "ETHUSDT", iso(b)) for b in newest
    ]


def test_from_to_selects_a_half_open_window(client: httpx.Client, seeded: dict[str, Any]) -> None:
    start, end = T0 + 30_000, T0 + 90_000
    rows = _candles(client, symbol="SOLUSDT", **{"from": iso(start), "to": iso(end)})
    expected = [b for b in buckets(seeded["candles"], BINANCE, "SOLUSDT") if start <= b < end]
    assert [r["bucket"] for r in rows] == [iso(b) for b in expected] and expected


def test_columnar_form_carries_the_same_values_as_the_object_form(client: httpx.Client) -> None:
    body = graphql(
        client,
        f'{{ candleColumns(symbol: "BTCUSDT", limit: 10000) {{ {COLUMN_FIELDS} }} '
        f'candles(symbol: "BTCUSDT", limit: 10000) {{ {CANDLE_FIELDS} }} }}',
    )
    assert "errors" not in body, body.get("errors")
    cols, rows = body["data"]["candleColumns"], body["data"]["candles"]
    assert cols["exchange"] == BINANCE and cols["symbol"] == "BTCUSDT" and cols["interval"] == "1s"
    assert cols["count"] == len(rows) > 300
    assert [iso(ms) for ms in cols["bucket"]] == [r["bucket"] for r in rows]
    for column, field in (
        ("open", "open"),
        ("close", "close"),
        ("tradeCount", "tradeCount"),
        ("vwap", "vwap"),
    ):
        assert cols[column] == [r[field] for r in rows]


@pytest.mark.parametrize(("interval", "ms"), [("1m", 60_000), ("5m", 300_000)])
def test_coarser_intervals_roll_up_the_1s_candles_exactly(
    client: httpx.Client, seeded: dict[str, Any], interval: str, ms: int
) -> None:
    expected = roll_up(of_market(seeded["candles"], BINANCE, "BTCUSDT"), ms)
    rows = _candles(client, symbol="BTCUSDT", interval=interval)
    assert_candles_equal(_by_key(rows), expected)


def test_latest_candle_is_the_newest_stored_one(client: httpx.Client, seeded: dict[str, Any]) -> None:
    body = graphql(
        client,
        f'{{ latestCandle(symbol: "BTCUSDT") {{ {CANDLE_FIELDS} }} '
        f'minute: latestCandle(symbol: "BTCUSDT", interval: "1m") {{ bucket close tradeCount }} }}',
    )
    assert "errors" not in body, body.get("errors")
    newest = max(of_market(seeded["candles"], BINANCE, "BTCUSDT"))
    latest = body["data"]["latestCandle"]
    assert latest["bucket"] == iso(newest[2]) and latest["close"] == seeded["candles"][newest]["close"]
    minute = roll_up(of_market(seeded["candles"], BINANCE, "BTCUSDT"), 60_000)
    last = max(minute)
    assert body["data"]["minute"]["bucket"] == iso(last[2])
    assert body["data"]["minute"]["tradeCount"] == minute[last]["trade_count"]


def test_volatility_and_predictions_come_back_as_stored(client: httpx.Client, seeded: dict[str, Any]) -> None:
    body = graphql(
        client,
        '{ volatility(symbol: "ETHUSDT", limit: 10000) { exchange symbol bucket volatility windowSeconds } '
        'predictions(symbol: "BTCUSDT", limit: 5) { exchange bucket horizonSeconds probabilityUp label '
        "modelVersion } "
        'latestPrediction(symbol: "BTCUSDT") { bucket probabilityUp } '
        'coinbase: latestPrediction(symbol: "BTCUSDT", exchange: "coinbase") { exchange probabilityUp } '
        'none: latestPrediction(symbol: "SOLUSDT") { bucket } }',
    )
    assert "errors" not in body, body.get("errors")
    expected = of_market(seeded["volatility"], BINANCE, "ETHUSDT")
    got = body["data"]["volatility"]
    assert len(got) == len(expected) > 100
    for row in got:
        key = (row["exchange"], row["symbol"], int(datetime.fromisoformat(row["bucket"]).timestamp() * 1000))
        assert math.isclose(row["volatility"], expected[key], rel_tol=1e-12) and row["windowSeconds"] == 20
    preds = [p for p in seeded["predictions"] if p[0] == BINANCE]
    assert [p["bucket"] for p in body["data"]["predictions"]] == [iso(p[2]) for p in preds[-5:]]
    assert {p["exchange"] for p in body["data"]["predictions"]} == {BINANCE}
    assert (
        body["data"]["predictions"][-1]["label"] == "up"
        and body["data"]["predictions"][0]["horizonSeconds"] == 60
    )
    assert body["data"]["latestPrediction"]["probabilityUp"] == preds[-1][3]
    coinbase = [p for p in seeded["predictions"] if p[0] == "coinbase"]
    assert body["data"]["coinbase"] == {"exchange": "coinbase", "probabilityUp": coinbase[-1][3]}
    assert body["data"]["none"] is None


def test_symbols_lists_what_is_stored_on_any_venue(client: httpx.Client) -> None:
    assert graphql(client, "{ symbols }")["data"]["symbols"] == sorted([*SYMBOLS, "ADAUSDT", "DOGEUSDT"])


@pytest.mark.parametrize(
    ("query", "message", "code"),
    [
        ('{ candles(symbol: "PEPEUSDT") { close } }', "unknown symbol 'PEPEUSDT'", "UNKNOWN_SYMBOL"),
        (
            '{ candles(symbol: "ETHUSDT", exchange: "kraken") { close } }',
            "unknown exchange 'kraken' (venues: binance, coinbase, synthetic, upbit); ETHUSDT trades on "
            "binance, coinbase",
            "UNKNOWN_MARKET",
        ),
        (
            '{ candleColumns(symbol: "DOGEUSDT", exchange: "binance") { count } }',
            "no market DOGEUSDT on binance; DOGEUSDT trades on synthetic: pass one of those as exchange",
            "UNKNOWN_MARKET",
        ),
        (
            '{ latestPrediction(symbol: "BTCUSDT", exchange: "bin ance") { bucket } }',
            "exchange must be a venue name such as binance",
            "BAD_USER_INPUT",
        ),
        ('{ candles(symbol: "$$$") { close } }', "symbols look like BTCUSDT", "BAD_USER_INPUT"),
        (
            '{ candles(symbol: "BTCUSDT", limit: 0) { close } }',
            "limit must be between 1 and 10000",
            "BAD_USER_INPUT",
        ),
        ('{ candles(symbol: "BTCUSDT", limit: 10001) { close } }', "got 10001", "BAD_USER_INPUT"),
        (
            '{ candles(symbol: "BTCUSDT", interval: "7m") { close } }',
            "interval must be one of 1s, 1m",
            "BAD_USER_INPUT",
        ),
        (
            '{ candles(symbol: "BTCUSDT", from: "2024-01-02T00:00:00Z", to: "2024-01-01") { close } }',
            "from must not be after to",
            "BAD_USER_INPUT",
        ),
        (
            '{ volatility(symbol: "BTCUSDT", limit: -1) { volatility } }',
            "limit must be between",
            "BAD_USER_INPUT",
        ),
        ('{ latestCandle(symbol: "XRPUSDT") { close } }', "unknown symbol 'XRPUSDT'", "UNKNOWN_SYMBOL"),
        (
            '{ candles(symbol: "BTCUSDT", from: "0001-01-01T00:00:00+05:00") { close } }',
            "from is out of range in UTC",
            "BAD_USER_INPUT",
        ),
    ],
)
def test_bad_arguments_get_a_clear_graphql_error_not_a_500(
    client: httpx.Client, query: str, message: str, code: str
) -> None:
    body = graphql(client, query)
    assert body["data"] is None or not any(body["data"].values())  # nullable fields come back null
    (error,) = body["errors"]
    assert message in error["message"] and error["extensions"]["code"] == code


def test_malformed_requests_are_refused_with_a_4xx_or_a_graphql_error(client: httpx.Client) -> None:
    assert "Syntax Error" in error_messages(graphql(client, "{ candles(symbol: "))[0]
    assert "Cannot query field" in error_messages(graphql(client, "{ nope }"))[0]
    bad_time = graphql(client, '{ candles(symbol: "BTCUSDT", from: "yesterday") { close } }')
    assert 'Value cannot represent a DateTime: "yesterday"' in error_messages(bad_time)[0]
    response = client.post("/graphql", content=b"{not json", headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500
    assert 400 <= client.post("/graphql", json={"variables": {}}).status_code < 500
    for body in (b"1", b'"x"', b"null"):
        response = client.post("/graphql", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400 and "must be a JSON object" in response.text, body
    # GET: variables may be null, as in a POST body; variables or extensions of another shape are a 400
    ok = client.get("/graphql", params={"query": "{ symbols }", "variables": "null"})
    assert ok.status_code == 200 and "errors" not in ok.json(), ok.text
    for name in ("variables", "extensions"):
        refused = client.get("/graphql", params={"query": "{ symbols }", name: "1"})
        assert refused.status_code == 400 and f"`{name}` must be an object or null" in refused.text


def _codes(body: dict[str, Any]) -> list[str | None]:
    return [(e.get("extensions") or {}).get("code") for e in body["errors"]]


def test_oversized_and_too_deep_queries_are_refused_before_running(client: httpx.Client) -> None:
    """Each limit's refusal says which limit in `extensions.code`, as the cost limit's does."""
    aliases = " ".join(f"a{i}: symbols" for i in range(31))
    refused = graphql(client, f"{{ {aliases} }}")
    assert error_messages(refused) == ["31 aliases found. Allowed: 30"]
    assert _codes(refused) == ["TOO_MANY_ALIASES"]
    tokens = "{ " + " ".join(["symbols"] * 2100) + " }"
    refused = graphql(client, tokens)
    said = "Syntax Error: Document contains more than 2000 tokens. Parsing aborted."
    assert error_messages(refused) == [said]
    assert _codes(refused) == ["TOO_MANY_TOKENS"]
    deep = "{ symbols " + "{ a " * 12 + "}" * 12 + " }"
    refused = graphql(client, deep)
    assert "'anonymous' exceeds maximum operation depth of 10" in error_messages(refused)
    assert "QUERY_TOO_DEEP" in _codes(refused)
    assert _codes(graphql(client, "{ nope }")) == [None]  # any other invalid document: no limit's code
    # The GraphiQL introspection query stays within the limits.
    body = graphql(client, get_introspection_query(descriptions=True))
    assert "errors" not in body and body["data"]["__schema"]["queryType"]["name"] == "Query"


def test_several_operations_need_an_operation_name_as_the_spec_says(client: httpx.Client) -> None:
    document = 'query A { symbols } query B { latestCandle(symbol: "BTCUSDT") { exchange } }'
    assert graphql(client, document) == {
        "data": None,
        "errors": [
            {
                "message": "The document has 2 operations (A, B): send operationName to say which one to run",
                "extensions": {"code": "OPERATION_NAME_REQUIRED"},
            }
        ],
    }
    named = client.post("/graphql", json={"query": document, "operationName": "B"}).json()
    assert named == {"data": {"latestCandle": {"exchange": BINANCE}}}
    assert graphql(client, "query A { symbols }")["data"]["symbols"]  # one operation needs no name


def test_too_many_fields_are_refused_with_the_limit_named(client: httpx.Client) -> None:
    repeated = "{ " + " ".join(["symbols"] * 999) + " }"
    refused = graphql(client, repeated)
    assert error_messages(refused) == [
        "999 fields found. Allowed: 500 per request (each repeated field counts); "
        "select fewer fields or split the request"
    ]
    assert _codes(refused) == ["TOO_MANY_FIELDS"]
    assert "errors" not in graphql(client, "{ " + " ".join(["symbols"] * 500) + " }")


def _graphiql_example(client: httpx.Client) -> str:
    page = client.get("/graphql", headers={"accept": "text/html"}).text
    (literal,) = re.findall(r"const EXAMPLE_QUERY = (\".*?[^\\]\");", page)
    example: str = json.loads(literal)
    return example


def test_graphiql_opens_with_an_example_of_this_api_that_runs(client: httpx.Client) -> None:
    example = _graphiql_example(client)
    assert "Welcome to GraphiQL" not in example and example.startswith("# cryptostream")
    recent = graphql(client, example)  # as the run button sends it: one operation, no operationName
    assert "errors" not in recent, recent
    assert recent["data"]["candles"] and recent["data"]["latestPrediction"]["label"] in ("up", "down")
    # the subscription in its comments is valid too; over plain HTTP it gets the pointer to WebSockets
    subscription = "\n".join(line[2:] for line in example.splitlines() if line.startswith("# "))
    subscription = subscription[subscription.index("subscription Live") :]
    live = graphql(client, subscription)
    assert [e["extensions"]["code"] for e in live["errors"]] == ["SUBSCRIPTION_NEEDS_WEBSOCKET"]


def test_graphiql_is_served_to_browsers_and_cors_follows_the_settings(client: httpx.Client) -> None:
    page = client.get("/graphql", headers={"accept": "text/html"})
    assert page.status_code == 200 and "graphiql" in page.text.lower()
    pre = client.options(
        "/graphql", headers={"origin": "http://example.org", "access-control-request-method": "POST"}
    )
    assert pre.headers.get("access-control-allow-origin") in ("*", "http://example.org")


def test_pipeline_status_says_the_feed_is_off_without_kafka(client: httpx.Client) -> None:
    body = graphql(client, "{ pipelineStatus { live lag processors { processor } symbols { symbol } } }")
    assert body["data"]["pipelineStatus"] == {"live": False, "lag": 0, "processors": [], "symbols": []}


def test_a_subscription_over_plain_http_is_told_to_use_a_websocket(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        body = graphql(client, 'subscription { candles(symbols: ["BTCUSDT"]) { close } }')
    (error,) = body["errors"]
    assert body["data"] is None and error["extensions"] == {"code": "SUBSCRIPTION_NEEDS_WEBSOCKET"}
    assert error["message"].startswith(
        "Subscriptions stream over a WebSocket: connect to /graphql with the graphql-transport-ws"
    )
    assert caplog.records == []  # a user's mistake, not the server's: no "Internal error" logged


def test_bounds_at_the_ends_of_the_calendar_are_an_empty_answer_not_an_internal_error(
    client: httpx.Client,
) -> None:
    """An end in year 1 or a start at the last second of 9999 was rounded to a bucket edge no datetime
    holds: "Internal error" at every interval, from the database and the archive alike."""
    early, late = "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"
    for interval in ("1s", "1m", "5m", "15m", "1h", "1d"):
        for bounds in ({"to": early}, {"from": late}):
            assert _candles(client, symbol="BTCUSDT", interval=interval, **bounds) == [], (interval, bounds)
    for field in ("volatility", "predictions"):
        body = graphql(client, f'{{ {field}(symbol: "BTCUSDT", to: "{early}") {{ bucket }} }}')
        assert body == {"data": {field: []}}, body
