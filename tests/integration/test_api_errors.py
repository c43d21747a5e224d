"""Failures that are not the user's: the API logs them with the traceback and shows no internals."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import pytest_asyncio

from graphql_api.app import create_app
from graphql_api.server import BackgroundServer
from tests.integration.api_helpers import api_settings, graphql

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def unmigrated(database_url: str) -> AsyncIterator[str]:
    """A database nobody ran the migrations on (a real mistake: the tables do not exist)."""
    name = f"unmigrated_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
        yield database_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await conn.close()


@pytest.fixture(scope="module")
def client(unmigrated: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    app = create_app(api_settings(unmigrated, tmp_path_factory.mktemp("errors")))
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def test_graphql_masks_a_store_failure_names_it_as_rest_does_and_logs_it(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    """A store that is down or not migrated: no internals, but a code a client can tell from a bug by (it
    was "Internal error", where REST answers 503 STORE_UNAVAILABLE)."""
    with caplog.at_level(logging.ERROR, logger="graphql_api.schema"):
        body = graphql(client, '{ candles(symbol: "BTCUSDT") { close } symbols }')
    assert body["data"] is None
    assert [(e["message"], e["extensions"]) for e in body["errors"]] == [
        ("the store is unavailable or not migrated; see the server log", {"code": "STORE_UNAVAILABLE"})
    ]
    assert "ohlc" not in str(body) and "relation" not in str(body)
    said = [r for r in caplog.records if r.getMessage().startswith("GraphQL: the store failed: relation")]
    assert len(said) == 1 and said[0].exc_info, caplog.records  # not migrated: ours to see, with traceback


def test_a_database_that_does_not_answer_is_a_line_a_minute_not_a_traceback_a_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, unused_tcp_port: int
) -> None:
    """An outage failed every request alike, each logged with its traceback (and the read pool retried its
    floor connection with one more each time): the log buried what came before it."""
    down = f"postgresql://postgres@127.0.0.1:{unused_tcp_port}/postgres"  # nothing listens there
    caplog.set_level(logging.INFO)
    with BackgroundServer(create_app(api_settings(down, tmp_path))) as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for _ in range(10):
                response = http.get("/api/ohlc/", params={"symbol": "BTCUSDT"})
                assert response.status_code == 503 and response.json()["code"] == "STORE_UNAVAILABLE"
                body = graphql(http, '{ candles(symbol: "BTCUSDT") { close } }')
                assert [e["extensions"]["code"] for e in body["errors"]] == ["STORE_UNAVAILABLE"]
            assert http.get("/health").json()["database"] is False
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "GET /api/ohlc/: the store does not answer: ConnectionRefusedError: [Errno 111] Connection refused",
        "GraphQL: the store does not answer: ConnectionRefusedError: [Errno 111] Connection refused",
    ], errors
    assert not [r.getMessage() for r in caplog.records if r.exc_info and r.levelno >= logging.WARNING]
    # the market list, tried again by each request past its 5 s: said once too (the list held is used)
    stale = [r.getMessage() for r in caplog.records if r.name == "graphql_api.catalog"]
    assert len(stale) <= 1, stale
    assert all(m.startswith("market list not refreshed (the one held is used)") for m in stale), stale


def test_rest_answers_503_with_a_hint_not_a_traceback(client: httpx.Client) -> None:
    response = client.get("/api/ohlc/", params={"symbol": "BTCUSDT"})
    assert response.status_code == 503
    assert response.json() == {
        "detail": "the store is unavailable or not migrated; see the server log",
        "code": "STORE_UNAVAILABLE",
    }


def test_health_notices_the_schema_gone_under_a_running_api_and_back(
    fresh_postgres: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A table dropped or renamed under the running API failed every read while `/health` said healthy:
    its ping was a bare `SELECT 1`. The ping now asks for the candles table."""
    from cryptostream.migrate import upgrade

    upgrade(fresh_postgres)
    caplog.set_level(logging.WARNING)

    def health(http: httpx.Client) -> dict:
        return http.get("/health").json()

    def until(http: httpx.Client, status: str) -> dict:
        deadline = time.monotonic() + 30
        while (answer := health(http))["status"] != status:
            assert time.monotonic() < deadline, answer
            time.sleep(0.2)
        return answer

    async def sql(statement: str) -> None:
        conn = await asyncpg.connect(fresh_postgres)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    with BackgroundServer(create_app(api_settings(fresh_postgres, tmp_path))) as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert until(http, "healthy")["database"] is True
            asyncio.run(sql("ALTER TABLE ohlc_1s RENAME TO ohlc_1s_away"))
            gone = until(http, "degraded")
            assert gone["database"] is False
            said = "the store (database) has no candles table: run `cryptostream migrate`"
            assert gone["problems"] == [said]
            asyncio.run(sql("ALTER TABLE ohlc_1s_away RENAME TO ohlc_1s"))
            assert until(http, "healthy")["database"] is True
    said = [r.getMessage() for r in caplog.records if r.name == "cryptostream.store"]
    assert said == ["the database has no ohlc_1s table (dropped? run `cryptostream migrate`)"]  # once
