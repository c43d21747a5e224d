"""The distributed shape of the API: `cryptostream process` and `cryptostream serve` as separate processes,
configured only by environment variables, on the session's broker and database. A trade sent to Kafka comes
out of the live subscription and, once checkpointed, out of GraphQL and the original REST routes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import websockets
from gql import Client, gql
from gql.transport.websockets import WebsocketsTransport

from cryptostream.codec import encode_progress
from cryptostream.kafka import ensure_topics, start_producer
from cryptostream.models import Trade
from cryptostream.procs import free_port
from cryptostream.settings import load_settings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CLI = [sys.executable, "-m", "cryptostream"]


class Roles:
    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.env = env
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.url = f"http://127.0.0.1:{env['API_PORT']}"

    def start(self, role: str) -> None:
        with open(self.tmp / f"{role}.log", "wb") as out:
            self.procs[role] = subprocess.Popen(
                [*CLI, role], env=self.env, cwd=self.tmp, stdout=out, stderr=subprocess.STDOUT
            )

    def log(self, role: str) -> str:
        return (self.tmp / f"{role}.log").read_text(errors="replace")[-3000:]

    def wait(self, check: Any, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for role, proc in self.procs.items():
                assert proc.poll() is None, f"`cryptostream {role}` exited:\n{self.log(role)}"
            try:
                result = check()
                if result:
                    return result
            except (httpx.HTTPError, KeyError, TypeError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"{what} not within {timeout}s:\n{self.log('serve')}\n{self.log('process')}")

    def graphql(self, query: str) -> dict[str, Any]:
        body = httpx.post(f"{self.url}/graphql", json={"query": query}, timeout=10).json()
        assert "errors" not in body, body
        data: dict[str, Any] = body["data"]
        return data


@pytest.fixture
def roles(kafka_bootstrap: str, database_url: str, tmp_path: Path, db: Any) -> Iterator[Roles]:
    tag = os.urandom(4).hex()
    env = dict(os.environ)
    env.update(
        KAFKA_BOOTSTRAP=kafka_bootstrap,
        DATABASE_URL=database_url,
        KAFKA_TOPIC=f"trades-{tag}",
        KAFKA_CANDLES_TOPIC=f"candles-{tag}",
        KAFKA_DLQ_TOPIC=f"dlq-{tag}",
        CONSUMER_GROUP=f"group-{tag}",
        OUTPUT_DIR=str(tmp_path / "outputs"),
        STATE_DIR=str(tmp_path / "state"),
        API_PORT=str(free_port()),
        MAX_BUFFER_SECONDS="0.5",
        PARQUET_CHUNK_SECONDS="0.5",
    )
    running = Roles(env, tmp_path)
    try:
        yield running
    finally:
        for role, proc in running.procs.items():
            if proc.poll() is None:
                proc.terminate()
                try:
                    code = proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    raise
                # uvicorn stops gracefully, then re-raises SIGTERM so the exit status says why it stopped.
                clean = code == 0 or (role == "serve" and code == -signal.SIGTERM)
                assert clean, f"`cryptostream {role}` exited {code}:\n{running.log(role)}"
        assert "Application shutdown complete" in running.log("serve")


async def _send(env: dict[str, str], trade: Trade) -> None:
    """The trade, then progress past its second (as a source writes it): the processor closes windows on
    what the log says, never on its clock."""
    settings = load_settings(
        kafka_bootstrap=env["KAFKA_BOOTSTRAP"],
        kafka_topic=env["KAFKA_TOPIC"],
        kafka_candles_topic=env["KAFKA_CANDLES_TOPIC"],
        kafka_dlq_topic=env["KAFKA_DLQ_TOPIC"],
    )
    await ensure_topics(settings)
    producer = await start_producer(settings)
    try:
        key = trade.symbol.encode()
        await producer.send_and_wait(settings.kafka_topic, orjson.dumps(trade.to_dict()), key=key)
        end = trade.timestamp - trade.timestamp % 1000 + 1000
        await producer.send_and_wait(
            settings.kafka_topic, encode_progress(trade.exchange, [trade.symbol], end), key=key
        )
    finally:
        await producer.stop()


async def _first_live_candle(roles: Roles, trade: Trade) -> dict[str, Any]:
    transport = WebsocketsTransport(
        url=roles.url.replace("http", "ws") + "/graphql",
        subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
    )
    request = gql('subscription { candles(symbols: ["BTCUSDT"]) { bucket close tradeCount closed } }')
    async with Client(transport=transport, execute_timeout=None) as session:

        async def first() -> dict[str, Any]:
            async for result in session.subscribe(request):
                return dict(result["candles"])
            raise AssertionError("the subscription ended")

        waiting = asyncio.create_task(first())
        deadline = time.monotonic() + 10
        while httpx.get(f"{roles.url}/health").json()["subscribers"] < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await _send(roles.env, trade)
        return await asyncio.wait_for(waiting, 15)


async def test_serve_and_process_as_separate_processes(roles: Roles) -> None:
    roles.start("process")
    roles.start("serve")
    roles.wait(
        lambda: httpx.get(f"{roles.url}/health").json()["live_feed"] is True, 60, "the API's live feed"
    )

    page = httpx.get(f"{roles.url}/graphql", headers={"accept": "text/html"})
    assert page.status_code == 200 and "graphiql" in page.text.lower()
    assert httpx.get(f"{roles.url}/docs").status_code == 200

    # `serve` turns permessage-deflate off: offered by the client, not accepted.
    async with websockets.connect(
        roles.url.replace("http", "ws") + "/graphql", subprotocols=["graphql-transport-ws"]
    ) as ws:
        assert ws.response.headers.get("Sec-WebSocket-Extensions") is None

    now = int(time.time() * 1000)
    trade = Trade("binance", "BTCUSDT", 42_000.5, 0.5, now, 7, False)
    live = await _first_live_candle(roles, trade)
    assert live["close"] == 42_000.5 and live["tradeCount"] == 1

    stored = roles.wait(
        lambda: httpx.get(f"{roles.url}/api/ohlc/", params={"symbol": "BTCUSDT"}).json()["data"],
        30,
        "the candle in the database",
    )
    assert [(r["exchange"], r["close"], r["volume"]) for r in stored] == [("binance", 42_000.5, 0.5)]
    markets = httpx.get(f"{roles.url}/api/markets").json()["markets"]
    assert {"exchange": "binance", "symbol": "BTCUSDT", "demo": False, "preferred": True} | {
        "first_candle": stored[0]["timestamp"],
        "last_candle": stored[0]["timestamp"],
    } in markets
    other = httpx.get(f"{roles.url}/api/ohlc/", params={"symbol": "BTCUSDT", "exchange": "coinbase"})
    assert other.status_code == 200 and other.json()["data"] == []  # configured, nothing traded there
    assert roles.graphql('{ latestCandle(symbol: "btc-usdt") { close tradeCount } }')["latestCandle"] == {
        "close": 42_000.5,
        "tradeCount": 1,
    }
    status = roles.wait(
        lambda: roles.graphql("{ pipelineStatus { trades processors { alive } } }")["pipelineStatus"],
        10,
        "the processor's status",
    )
    assert status["trades"] >= 1 and status["processors"][0]["alive"] is True
    assert "cryptostream_api_subscribers" in httpx.get(f"{roles.url}/metrics").text
    # WebSocket clients came and went: none of them is an INFO line (or an error) of its own in the log
    serve_log = (roles.tmp / "serve.log").read_text(errors="replace")
    for routine in ('"WebSocket /graphql" [accepted]', "connection open", "connection closed", "Traceback"):
        assert routine not in serve_log, serve_log[-3000:]
