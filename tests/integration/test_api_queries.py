"""GraphQL queries over real HTTP (uvicorn on a free port) against the real database, seeded through the
processor's database sink with candles a naive batch computation made from a synthetic market."""

from __future__ import annotations

import math
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
    SYMBOLS,
    api_settings,
    error_messages,
    graphql,
    iso,
    roll_up,
    seed_market,
)
from tests.reference import Key, assert_candles_equal

pytestmark = pytest.mark.integration

CANDLE_FIELDS = "symbol bucket open high low close volume tradeCount vwap buyVolume sellVolume"
COLUMN_FIELDS = "symbol interval count bucket open high low close volume tradeCount vwap buyVolume sellVolume"


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
    out = {}
    for r in rows:
        key = (r["symbol"], int(datetime.fromisoformat(r["bucket"]).timestamp() * 1000))
        assert key not in out
        out[key] = {
            **r,
            "trade_count": r["tradeCount"],
            "buy_volume": r["buyVolume"],
            "sell_volume": r["sellVolume"],
        }
    return out


def _candles(client: httpx.Client, **args: Any) -> list[dict[str, Any]]:
    body = graphql(
        client,
        "query($symbol: String!, $interval: String!, $from: DateTime, $to: DateTime, $limit: Int!) "
        "{ candles(symbol: $symbol, interval: $interval, from: $from, to: $to, limit: $limit) "
        f"{{ {CANDLE_FIELDS} }} }}",
        {"interval": "1s", "limit": 10_000, **args},
    )
    assert "errors" not in body, body["errors"]
    rows: list[dict[str, Any]] = body["data"]["candles"]
    return rows


def test_candles_equal_a_batch_computation_over_the_same_trades(
    client: httpx.Client, seeded: dict[str, Any]
) -> None:
    for symbol in SYMBOLS:
        expected = {k: v for k, v in seeded["candles"].items() if k[0] == symbol}
        rows = _candles(client, symbol=symbol)
        assert [r["bucket"] for r in rows] == sorted(r["bucket"] for r in rows)
        assert_candles_equal(_by_key(rows), expected)


def test_limit_keeps_the_newest_rows_oldest_first_and_lowercase_symbols_work(
    client: httpx.Client, seeded: dict[str, Any]
) -> None:
    newest = sorted(k for k in seeded["candles"] if k[0] == "ETHUSDT")[-25:]
    rows = _candles(client, symbol="eth-usdt", limit=25)
    assert [(r["symbol"], r["bucket"]) for r in rows] == [(s, iso(b)) for s, b in newest]


def test_from_to_selects_a_half_open_window(client: httpx.Client, seeded: dict[str, Any]) -> None:
    start, end = T0 + 30_000, T0 + 90_000
    rows = _candles(client, symbol="SOLUSDT", **{"from": iso(start), "to": iso(end)})
    expected = sorted(b for s, b in seeded["candles"] if s == "SOLUSDT" and start <= b < end)
    assert [r["bucket"] for r in rows] == [iso(b) for b in expected] and expected


def test_columnar_form_carries_the_same_values_as_the_object_form(client: httpx.Client) -> None:
    body = graphql(
        client,
        f'{{ candleColumns(symbol: "BTCUSDT", limit: 10000) {{ {COLUMN_FIELDS} }} '
        f'candles(symbol: "BTCUSDT", limit: 10000) {{ {CANDLE_FIELDS} }} }}',
    )
    assert "errors" not in body, body.get("errors")
    cols, rows = body["data"]["candleColumns"], body["data"]["candles"]
    assert cols["symbol"] == "BTCUSDT" and cols["interval"] == "1s" and cols["count"] == len(rows) > 300
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
    expected = roll_up({k: v for k, v in seeded["candles"].items() if k[0] == "BTCUSDT"}, ms)
    rows = _candles(client, symbol="BTCUSDT", interval=interval)
    assert_candles_equal(_by_key(rows), expected)


def test_latest_candle_is_the_newest_stored_one(client: httpx.Client, seeded: dict[str, Any]) -> None:
    body = graphql(
        client,
        f'{{ latestCandle(symbol: "BTCUSDT") {{ {CANDLE_FIELDS} }} '
        f'minute: latestCandle(symbol: "BTCUSDT", interval: "1m") {{ bucket close tradeCount }} }}',
    )
    assert "errors" not in body, body.get("errors")
    newest = max(k for k in seeded["candles"] if k[0] == "BTCUSDT")
    latest = body["data"]["latestCandle"]
    assert latest["bucket"] == iso(newest[1]) and latest["close"] == seeded["candles"][newest]["close"]
    minute = roll_up({k: v for k, v in seeded["candles"].items() if k[0] == "BTCUSDT"}, 60_000)
    last = max(minute)
    assert body["data"]["minute"]["bucket"] == iso(last[1])
    assert body["data"]["minute"]["tradeCount"] == minute[last]["trade_count"]


def test_volatility_and_predictions_come_back_as_stored(client: httpx.Client, seeded: dict[str, Any]) -> None:
    body = graphql(
        client,
        '{ volatility(symbol: "ETHUSDT", limit: 10000) { symbol bucket volatility windowSeconds } '
        'predictions(symbol: "BTCUSDT", limit: 5) { bucket horizonSeconds probabilityUp label modelVersion } '
        'latestPrediction(symbol: "BTCUSDT") { bucket probabilityUp } '
        'none: latestPrediction(symbol: "SOLUSDT") { bucket } }',
    )
    assert "errors" not in body, body.get("errors")
    expected = {k: v for k, v in seeded["volatility"].items() if k[0] == "ETHUSDT"}
    got = body["data"]["volatility"]
    assert len(got) == len(expected) > 100
    for row in got:
        key = ("ETHUSDT", int(datetime.fromisoformat(row["bucket"]).timestamp() * 1000))
        assert math.isclose(row["volatility"], expected[key], rel_tol=1e-12) and row["windowSeconds"] == 20
    preds = seeded["predictions"]
    assert [p["bucket"] for p in body["data"]["predictions"]] == [iso(b) for _, b, _ in preds[-5:]]
    assert (
        body["data"]["predictions"][-1]["label"] == "up"
        and body["data"]["predictions"][0]["horizonSeconds"] == 60
    )
    assert body["data"]["latestPrediction"]["probabilityUp"] == preds[-1][2]
    assert body["data"]["none"] is None


def test_symbols_lists_what_is_stored(client: httpx.Client) -> None:
    assert graphql(client, "{ symbols }")["data"]["symbols"] == sorted(SYMBOLS)


@pytest.mark.parametrize(
    ("query", "message", "code"),
    [
        ('{ candles(symbol: "DOGEUSDT") { close } }', "unknown symbol 'DOGEUSDT'", "UNKNOWN_SYMBOL"),
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


def test_oversized_and_too_deep_queries_are_refused_before_running(client: httpx.Client) -> None:
    aliases = " ".join(f"a{i}: symbols" for i in range(31))
    assert error_messages(graphql(client, f"{{ {aliases} }}")) == ["31 aliases found. Allowed: 30"]
    tokens = "{ " + " ".join(["symbols"] * 2100) + " }"
    assert error_messages(graphql(client, tokens)) == [
        "Syntax Error: Document contains more than 2000 tokens. Parsing aborted."
    ]
    deep = "{ symbols " + "{ a " * 12 + "}" * 12 + " }"
    assert "'anonymous' exceeds maximum operation depth of 10" in error_messages(graphql(client, deep))
    # The GraphiQL introspection query stays within the limits.
    body = graphql(client, get_introspection_query(descriptions=True))
    assert "errors" not in body and body["data"]["__schema"]["queryType"]["name"] == "Query"


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


def test_subscriptions_without_kafka_explain_why_over_http(client: httpx.Client) -> None:
    body = client.post(
        "/graphql",
        json={"query": 'subscription { candles(symbols: ["BTCUSDT"]) { close } }'},
        headers={"accept": "application/json"},
    )
    assert body.status_code < 500
