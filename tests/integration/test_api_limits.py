"""Limits of an API exposed to others, each a clear 4xx or GraphQL error while the server keeps serving:
request body size, live subscriptions per WebSocket and per client, and API_PRODUCTION (no GraphiQL, no
introspection, no public /metrics, CORS only to named origins)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pyarrow as pa
import pytest

from cryptostream.errors import SettingsError
from cryptostream.settings import Settings, load_settings
from cryptostream.store import ArchiveStore
from graphql_api.app import create_app
from graphql_api.server import BackgroundServer
from tests.integration.api_helpers import api_settings
from tests.integration.test_api_live import api
from tests.integration.test_api_websocket import TRANSPORT_WS, connection, receive, start

pytestmark = pytest.mark.integration

LIVE = 'subscription { candles(symbols: ["BTCUSDT"]) { bucket close } }'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    tmp: Path = tmp_path_factory.mktemp("limits")
    with BackgroundServer(create_app(api_settings(None, tmp, api_max_body_bytes=10_000))) as running:
        yield running


def _still_serving(url: str) -> None:
    body = httpx.post(f"{url}/graphql", json={"query": "{ symbols }"}).json()
    assert "errors" not in body, body


def test_a_body_over_the_limit_is_refused_with_413_announced_or_streamed(server: BackgroundServer) -> None:
    big = orjson.dumps({"query": "{ symbols }", "variables": {"pad": "x" * 20_000}})
    announced = httpx.post(f"{server.url}/graphql", content=big, headers={"content-type": "application/json"})
    assert announced.status_code == 413
    expected = {
        "detail": "the request body is larger than 10,000 bytes (API_MAX_BODY_BYTES)",
        "code": "BODY_TOO_LARGE",
    }
    assert announced.json() == expected

    def chunks() -> Iterator[bytes]:  # no Content-Length: the size shows only while reading
        for i in range(0, len(big), 4096):
            yield big[i : i + 4096]

    streamed = httpx.post(
        f"{server.url}/graphql", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413 and streamed.json() == expected
    # a body within the limit, streamed the same way, goes through whole
    small = orjson.dumps({"query": "{ symbols }", "variables": {"pad": "x" * 5_000}})
    ok = httpx.post(
        f"{server.url}/graphql",
        content=iter([small[:100], small[100:]]),
        headers={"content-type": "application/json"},
    )
    assert ok.status_code == 200 and "errors" not in ok.json(), ok.text
    _still_serving(server.url)


async def test_live_subscriptions_are_capped_per_websocket_and_per_client(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(api_max_subscriptions_per_connection=2, api_max_subscriptions_per_client=3)
    with api(settings) as running:
        # the second socket claims another address: a header anyone can send, so it is not believed
        forwarded = {"X-Forwarded-For": "10.0.0.9"}
        async with (
            connection(running, TRANSPORT_WS) as first,
            connection(running, TRANSPORT_WS, forwarded) as second,
        ):
            for op in ("a", "b", "c"):
                await start(first, TRANSPORT_WS, op, LIVE)
            refused = await receive(first, "c")
            (error,) = refused["payload"]["errors"]
            assert error["extensions"]["code"] == "TOO_MANY_SUBSCRIPTIONS", refused
            assert "API_MAX_SUBSCRIPTIONS_PER_CONNECTION" in error["message"]
            # the other socket of the same client: one more fits (3 per client), the next does not
            await start(second, TRANSPORT_WS, "d", LIVE)
            await start(second, TRANSPORT_WS, "e", LIVE)
            (error,) = (await receive(second, "e"))["payload"]["errors"]
            assert "API_MAX_SUBSCRIPTIONS_PER_CLIENT" in error["message"], error

            async def held() -> int:
                count: int = httpx.get(f"{running.url}/health").json()["subscribers"]
                return count

            deadline = asyncio.get_running_loop().time() + 10
            while await held() != 3:  # a, b and d run on
                assert asyncio.get_running_loop().time() < deadline, await held()
                await asyncio.sleep(0.05)
            # ending one frees its slot on that socket
            await first.send(orjson.dumps({"id": "a", "type": "complete"}).decode())
            while await held() != 2:
                assert asyncio.get_running_loop().time() < deadline, await held()
                await asyncio.sleep(0.05)
            await start(first, TRANSPORT_WS, "f", LIVE)
            while await held() != 3:
                assert asyncio.get_running_loop().time() < deadline, await held()
                await asyncio.sleep(0.05)
        _still_serving(running.url)


async def test_a_client_holds_a_few_shapes_of_a_market_however_many_subscriptions(
    make_settings: Callable[..., Settings],
) -> None:
    """An update is encoded once per subscription shape: 1,000 subscriptions of one client differing only by
    an alias made the API encode each update 1,000 times (its loop held for 40 s, /health 3-4 s). Past
    MAX_SHAPES_PER_MARKET documents following one market the next is refused; more subscriptions of one of
    them, or of another market, are not; ending one frees its place."""
    from graphql_api.limits import MAX_SHAPES_PER_MARKET

    def aliased(n: int, symbol: str = "BTCUSDT") -> str:
        return f'subscription {{ a{n}: candles(symbols: ["{symbol}"]) {{ bucket close }} }}'

    with api(make_settings()) as running:
        async with connection(running, TRANSPORT_WS) as ws:
            for n in range(MAX_SHAPES_PER_MARKET):
                await start(ws, TRANSPORT_WS, f"s{n}", aliased(n))
            await start(ws, TRANSPORT_WS, "over", aliased(MAX_SHAPES_PER_MARKET))
            (error,) = (await receive(ws, "over"))["payload"]["errors"]
            assert error["extensions"]["code"] == "TOO_MANY_SUBSCRIPTIONS", error
            said = f"BTCUSDT candles with {MAX_SHAPES_PER_MARKET} different subscription documents"
            assert said in error["message"], error
            await start(ws, TRANSPORT_WS, "same", aliased(0))  # one of those: shared, so welcome
            await start(ws, TRANSPORT_WS, "other", aliased(MAX_SHAPES_PER_MARKET, "ETHUSDT"))
            deadline = asyncio.get_running_loop().time() + 10
            while (
                held := httpx.get(f"{running.url}/health").json()["subscribers"]
            ) != MAX_SHAPES_PER_MARKET + 2:
                assert asyncio.get_running_loop().time() < deadline, held
                await asyncio.sleep(0.05)
            await ws.send(orjson.dumps({"id": "s1", "type": "complete"}).decode())
            while httpx.get(f"{running.url}/health").json()["subscribers"] != MAX_SHAPES_PER_MARKET + 1:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.05)
            await start(ws, TRANSPORT_WS, "again", aliased(MAX_SHAPES_PER_MARKET))
            while httpx.get(f"{running.url}/health").json()["subscribers"] != MAX_SHAPES_PER_MARKET + 2:
                assert asyncio.get_running_loop().time() < deadline, "the freed place was not taken"
                await asyncio.sleep(0.05)
        _still_serving(running.url)


async def test_the_per_websocket_setting_holds_above_strawberry_s_own_cap_of_100(
    make_settings: Callable[..., Settings],
) -> None:
    """strawberry refused the 101st operation of a socket itself ("Subscription limit reached", no code),
    whatever API_MAX_SUBSCRIPTIONS_PER_CONNECTION said."""
    settings = make_settings(api_max_subscriptions_per_connection=105, api_max_subscriptions_per_client=500)
    with api(settings) as running:
        async with connection(running, TRANSPORT_WS) as ws:
            for n in range(106):
                await start(ws, TRANSPORT_WS, f"s{n}", LIVE)
            (error,) = (await receive(ws, "s105"))["payload"]["errors"]
            assert error["extensions"]["code"] == "TOO_MANY_SUBSCRIPTIONS", error
            assert "API_MAX_SUBSCRIPTIONS_PER_CONNECTION" in error["message"]
            deadline = asyncio.get_running_loop().time() + 20
            while (held := httpx.get(f"{running.url}/health").json()["subscribers"]) != 105:
                assert asyncio.get_running_loop().time() < deadline, held
                await asyncio.sleep(0.1)
        _still_serving(running.url)


class _SlowMarketList(ArchiveStore):
    """An archive whose market list takes as long as the test says (a database busy with other work)."""

    def __init__(self, root: Path, gate: threading.Event) -> None:
        super().__init__(root)
        self.gate = gate

    async def markets(self) -> pa.Table:
        await asyncio.to_thread(self.gate.wait, 30)
        return await super().markets()


async def test_a_socket_s_operations_take_their_slots_in_the_order_they_came(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """A subscription took its slot only once its markets were resolved, which may wait for the market
    list; operations sent later could overtake those waiting, so which one was refused past the limit
    depended on timing (CI: the 106th of 106 got no error in 10 s; another had been refused). Slots are
    taken on arrival now: the last one sent is refused, at once, whatever the store is doing."""
    settings = make_settings(api_max_subscriptions_per_connection=2, api_max_subscriptions_per_client=50)
    gate = threading.Event()  # the market list does not answer until the test says
    try:
        with BackgroundServer(create_app(settings, _SlowMarketList(tmp_path, gate))) as running:
            async with connection(running, TRANSPORT_WS) as ws:
                for n in range(3):
                    await start(ws, TRANSPORT_WS, f"s{n}", LIVE)
                (error,) = (await receive(ws, "s2"))["payload"]["errors"]
                assert error["extensions"]["code"] == "TOO_MANY_SUBSCRIPTIONS", error
                assert not gate.is_set()
                gate.set()
                deadline = asyncio.get_running_loop().time() + 20
                while (held := httpx.get(f"{running.url}/health").json()["subscribers"]) != 2:
                    assert asyncio.get_running_loop().time() < deadline, held
                    await asyncio.sleep(0.1)
            _still_serving(running.url)
    finally:
        gate.set()


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    tmp: Path = tmp_path_factory.mktemp("production")
    settings = api_settings(None, tmp, api_production=True, cors_origins="https://dash.example")
    with BackgroundServer(create_app(settings)) as running:
        yield running


def test_production_serves_no_ide_no_introspection_no_public_metrics(production: BackgroundServer) -> None:
    url = production.url
    page = httpx.get(f"{url}/graphql", headers={"accept": "text/html"})
    assert "graphiql" not in page.text.lower() and page.status_code < 500
    body = httpx.post(f"{url}/graphql", json={"query": "{ __schema { queryType { name } } }"}).json()
    assert body["data"] is None and "introspection" in body["errors"][0]["message"].lower(), body
    assert httpx.get(f"{url}/metrics").status_code == 404
    _still_serving(url)  # ordinary queries run as before


@pytest.mark.parametrize(
    ("origin", "allowed"), [("https://dash.example", True), ("https://evil.example", False)]
)
def test_production_cors_answers_only_the_named_origins(
    production: BackgroundServer, origin: str, allowed: bool
) -> None:
    preflight = httpx.options(
        f"{production.url}/graphql",
        headers={"origin": origin, "access-control-request-method": "POST"},
    )
    assert (preflight.headers.get("access-control-allow-origin") == origin) is allowed


def test_production_refuses_cors_for_every_site_and_defaults_to_none(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="CORS_ORIGINS must name the sites allowed"):
        load_settings(api_production=True, cors_origins="*")
    assert load_settings(api_production=True, output_dir=tmp_path).cors_origins == []
    settings: Any = load_settings(output_dir=tmp_path)
    assert settings.cors_origins == ["*"]  # a local, non-production run keeps the open default


def test_a_query_over_the_cost_limit_is_refused_before_it_runs(tmp_path: Path) -> None:
    settings = api_settings(None, tmp_path, graphql_max_cost=20_000)
    fields = "bucket open high low close"  # 5 fields
    with BackgroundServer(create_app(settings)) as running:

        def ask(query: str, **variables: Any) -> dict[str, Any]:
            answer: dict[str, Any] = httpx.post(
                f"{running.url}/graphql", json={"query": query, "variables": variables}
            ).json()
            return answer

        # 3 aliases x 2,000 rows x 5 fields = 30,000 values: refused, with the figure
        aliased = " ".join(f'a{i}: candles(symbol: "BTCUSDT", limit: 2000) {{ {fields} }}' for i in range(3))
        (error,) = ask("{ " + aliased + " }")["errors"]
        assert error["extensions"] == {"code": "QUERY_TOO_COSTLY", "cost": 30_000, "limit": 20_000}
        assert "GRAPHQL_MAX_COST" in error["message"]
        # the same through a variable, and through the schema's default limit (100 rows) it fits
        by_variable = f'query Q($n: Int!) {{ candles(symbol: "BTCUSDT", limit: $n) {{ {fields} }} }}'
        assert ask(by_variable, n=5000)["errors"][0]["extensions"]["cost"] == 25_000
        assert "errors" not in ask(by_variable, n=3000)  # 15,000: runs (no candles stored: empty)
        assert "errors" not in ask("{ " + aliased.replace("2000", "1000") + " }")  # 15,000
        # a limit beyond GraphQL's Int is the error GraphQL gives for it, not a cost (nor a 500)
        huge = ask('{ candles(symbol: "BTCUSDT", limit: 99999999999999999999999) { close } }')
        assert "Int cannot represent non 32-bit signed integer value" in huge["errors"][0]["message"], huge
        # however the same fields are spelled: inside fragments, a variable's default, an integral float
        spelled = [
            ("{ ... on Query { " + aliased + " } }", {}),
            ("{ ...F } fragment F on Query { " + aliased + " }", {}),
            ("query Q($n: Int = 2000) { " + aliased.replace("2000", "$n") + " }", {}),
            ("query Q($n: Int!) { " + aliased.replace("2000", "$n") + " }", {"n": 2000.0}),
            # every level of fragments counts (60 levels went uncounted below the 50th)
            ("{ " + "... on Query { " * 60 + aliased + " }" * 60 + " }", {}),
            ("{ " + aliased.replace(fields, "... on Candle { " * 60 + fields + " }" * 60) + " }", {}),
        ]
        for query, variables in spelled:
            (error,) = ask(query, **variables)["errors"]
            assert error["extensions"]["cost"] == 30_000, query
        # fragments spreading fragments twice over, 40 deep: counted once each (2^40 leaves), at once
        chain = " ".join(f"fragment F{i} on Candle {{ ...F{i + 1} ...F{i + 1} }}" for i in range(40))
        nested = (
            '{ candles(symbol: "BTCUSDT", limit: 1) { ...F0 } } '
            + chain
            + " fragment F40 on Candle { close }"
        )
        started = time.monotonic()
        (error,) = ask(nested)["errors"]
        assert error["extensions"]["cost"] == 2**40 and time.monotonic() - started < 10
        # and over a WebSocket, where a query runs as over HTTP
        error = asyncio.run(_over_websocket(running, "{ " + aliased + " }"))
        assert error["extensions"]["code"] == "QUERY_TOO_COSTLY", error
        _still_serving(running.url)


async def _over_websocket(running: BackgroundServer, query: str) -> dict[str, Any]:
    """The first error of ``query`` sent as a graphql-transport-ws operation."""
    async with connection(running, TRANSPORT_WS) as ws:
        await start(ws, TRANSPORT_WS, "1", query)
        reply = await receive(ws, "1")
    errors = reply["payload"] if reply["type"] == "error" else reply["payload"].get("errors", [])
    assert errors, reply
    first: dict[str, Any] = errors[0]
    return first
