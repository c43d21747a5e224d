"""Failures that are not the user's: the API logs them with the traceback and shows no internals."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterator

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
    assert any("GraphQL resolver failed" in r.getMessage() and r.exc_info for r in caplog.records)


def test_rest_answers_503_with_a_hint_not_a_traceback(client: httpx.Client) -> None:
    response = client.get("/api/ohlc/", params={"symbol": "BTCUSDT"})
    assert response.status_code == 503
    assert response.json() == {
        "detail": "the store is unavailable or not migrated; see the server log",
        "code": "STORE_UNAVAILABLE",
    }
