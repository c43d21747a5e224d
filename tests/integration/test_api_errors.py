"""Failures that are not the user's: the API logs them with the traceback and shows no internals."""

from __future__ import annotations

import logging
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


def test_rest_answers_503_with_a_hint_not_a_traceback(client: httpx.Client) -> None:
    response = client.get("/api/ohlc/", params={"symbol": "BTCUSDT"})
    assert response.status_code == 503
    assert response.json() == {
        "detail": "the store is unavailable or not migrated; see the server log",
        "code": "STORE_UNAVAILABLE",
    }
