"""Fuzzing the API over real HTTP: generated GraphQL queries (valid and invalid, from the schema itself, by
hypothesis-graphql), arbitrary request bodies, and arbitrary REST parameters. Whatever comes in, the answer
is a GraphQL error or a 4xx with a message: never a 500, never an unhandled ("Internal error") error."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC
from typing import Any

import httpx
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_graphql import Mode, nodes, queries

from graphql_api.app import create_app
from graphql_api.schema import sdl
from graphql_api.server import BackgroundServer
from tests.integration.api_helpers import api_settings, seed_market

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SDL = sdl()
INTERNAL = "Internal error; see the server log"
USER_CODES = {"BAD_USER_INPUT", "UNKNOWN_SYMBOL", "UNKNOWN_MARKET", "LIVE_UNAVAILABLE"}

DATETIMES = st.datetimes(timezones=st.sampled_from([UTC, None])).map(lambda d: nodes.String(d.isoformat()))
SCALARS = {"DateTime": DATETIMES, "Long": st.integers(-(2**53), 2**53).map(nodes.Int)}
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def seeded(database_url: str) -> AsyncIterator[None]:
    await seed_market(database_url)
    yield


@pytest.fixture(scope="module")
def client(
    seeded: None, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    app = create_app(api_settings(database_url, tmp_path_factory.mktemp("fuzz")))
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def _handled(response: httpx.Response) -> dict[str, Any] | None:
    assert response.status_code < 500, f"HTTP {response.status_code}: {response.text[:300]}"
    if response.status_code != 200:
        assert response.text, "a refusal says why"
        return None
    body: dict[str, Any] = response.json()
    for error in body.get("errors") or []:
        assert error["message"] != INTERNAL, "an unhandled error reached a resolver"
    return body


@FUZZ
@given(query=queries(SDL, custom_scalars=SCALARS))
def test_generated_valid_queries_get_data_or_user_errors(client: httpx.Client, query: str) -> None:
    body = _handled(client.post("/graphql", json={"query": query}))
    assert body is not None
    for error in body.get("errors") or []:
        code = (error.get("extensions") or {}).get("code")
        # Valid documents fail only on argument checks, or on the server's size limits.
        assert code in USER_CODES or "aliases" in error["message"] or "tokens" in error["message"], error


@FUZZ
@given(query=queries(SDL, custom_scalars=SCALARS, mode=Mode.NEGATIVE))
def test_generated_invalid_queries_are_refused_cleanly(client: httpx.Client, query: str) -> None:
    body = _handled(client.post("/graphql", json={"query": query}))
    assert body is None or body.get("errors"), "an invalid document is never executed"


@FUZZ
@given(
    payload=st.one_of(
        st.binary(max_size=300),
        st.text(max_size=300).map(str.encode),
        st.dictionaries(
            st.sampled_from(["query", "variables", "operationName", "extensions"]),
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.text(max_size=40),
                lambda x: st.lists(x) | st.dictionaries(st.text(max_size=8), x),
                max_leaves=8,
            ),
        ).map(lambda d: json.dumps(d).encode()),
    )
)
def test_arbitrary_request_bodies_never_cause_a_500(client: httpx.Client, payload: bytes) -> None:
    _handled(client.post("/graphql", content=payload, headers={"content-type": "application/json"}))


VARIABLES_QUERY = (
    "query($s: String!, $e: String, $i: String!, $f: DateTime, $t: DateTime, $l: Int!) "
    "{ candles(symbol: $s, exchange: $e, interval: $i, from: $f, to: $t, limit: $l) { bucket close } "
    "candleColumns(symbol: $s, exchange: $e, interval: $i, from: $f, to: $t, limit: $l) { count close } }"
)
VENUES = (
    st.none()
    | st.sampled_from(["binance", "Coinbase", "synthetic", "unknown", "kraken", ""])
    | st.text(max_size=40)
)


@FUZZ
@given(
    variables=st.fixed_dictionaries(
        {
            "s": st.sampled_from(["BTCUSDT", "btc-usdt", "DOGEUSDT", "PEPEUSDT", ""]) | st.text(max_size=20),
            "e": VENUES,
            "i": st.sampled_from(["1s", "1m", "5m", "15m", "1h", "1d"]) | st.text(max_size=5),
            "f": st.none() | st.datetimes().map(lambda d: d.isoformat()) | st.text(max_size=30),
            "t": st.none() | st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
            "l": st.integers(-(2**31), 2**31 - 1) | st.integers(1, 20_000),
        }
    )
)
def test_arbitrary_variables_get_data_or_a_clear_error(
    client: httpx.Client, variables: dict[str, Any]
) -> None:
    _handled(client.post("/graphql", json={"query": VARIABLES_QUERY, "variables": variables}))


REST = [
    "/api/ohlc/",
    "/api/ohlc/latest",
    "/api/volatility/",
    "/api/viz/candlestick",
    "/api/viz/multi-symbol",
    "/api/markets",
]
PARAM = st.one_of(
    st.none(),
    st.text(max_size=30),
    st.integers(-(10**12), 10**12).map(str),
    st.sampled_from(
        [
            "BTCUSDT",
            "2023-11-14",
            "2023-11-14T22:14:00Z",
            "0",
            "500",
            "BTCUSDT,ETHUSDT",
            "nan",
            "1e309",
            "binance",
            "coinbase",
            "synthetic",
            "DOGEUSDT",
        ]
    ),
)


@FUZZ
@given(
    path=st.sampled_from(REST),
    params=st.fixed_dictionaries(
        {},
        optional=dict.fromkeys(("symbol", "symbols", "exchange", "limit", "start_date", "end_date"), PARAM),
    ),
)
def test_arbitrary_rest_parameters_never_cause_a_500(
    client: httpx.Client, path: str, params: dict[str, str | None]
) -> None:
    response = client.get(path, params={k: v for k, v in params.items() if v is not None})
    assert response.status_code < 500, f"{path} {params}: HTTP {response.status_code}: {response.text[:300]}"
    if response.status_code >= 400:
        assert response.json()["detail"], "a refusal says why"
