"""Where trades come from, as a user sees it: ingest reports each source's connection over the candles topic
and the API shows it in `/health` and `pipelineStatus`. Real broker, real exchange WebSocket servers (fakes
speaking the exchanges' protocols), the real ingest and the real API.

`make run` without network used to say "healthy" with 0 trades: here one exchange is unreachable from the
start and the other goes away mid-run, and health follows: healthy while one delivers, degraded (with each
source's state, since when and why) when none does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from cryptostream.settings import Settings
from ingest.exchanges import build, live_trades, load_markets
from ingest.service import run_ingest
from tests.integration.exchange_servers import FakeExchange
from tests.integration.ingest_helpers import topic_records
from tests.integration.test_api_live import api

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STATUS = (
    "{ pipelineStatus { live fed feeds { source state since lastTradeAt trades error alive delivering } } }"
)


async def _until(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = await asyncio.to_thread(check)
        if found:
            return found
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        await asyncio.sleep(0.2)


def _feeds(health: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["source"]: f for f in health["feeds"] or []}


async def test_health_follows_the_sources_one_unreachable_then_none_delivering(
    make_settings: Callable[..., Settings], unused_tcp_port: int
) -> None:
    async def hold(ex: FakeExchange, ws: Any) -> None:
        await ex.ack(ws)
        await ex.send_trades(ws, "BTCUSDT", 20)
        await ws.wait_closed()  # a quiet, healthy connection, until the server goes away

    coinbase = await FakeExchange("coinbase", ["BTC-USDT"], [hold]).start()
    settings = make_settings(
        exchanges="binance,coinbase",
        symbols="BTCUSDT",
        binance_ws_url=f"ws://127.0.0.1:{unused_tcp_port}",  # nothing listens: refused from the start
        binance_rest_url=f"http://127.0.0.1:{unused_tcp_port}",
        coinbase_ws_url=coinbase.ws_url,
        coinbase_rest_url=coinbase.rest_url,
        ws_stall_seconds=120.0,  # the quiet connection is healthy; only the server's going away ends it
        reconnect_max_seconds=0.5,
    )
    stop = asyncio.Event()
    with api(settings) as server:

        def health() -> dict[str, Any]:
            answer: dict[str, Any] = httpx.get(f"{server.url}/health").json()
            return answer

        def status() -> dict[str, Any]:
            body = httpx.post(f"{server.url}/graphql", json={"query": STATUS}).json()
            assert "errors" not in body, body
            answer: dict[str, Any] = body["data"]["pipelineStatus"]
            return answer

        # no ingest yet: nothing delivers, and the API says so rather than "healthy"
        quiet = health()
        assert quiet["status"] == "degraded" and quiet["feeds"] == [], quiet
        assert quiet["problems"] == ["no trade source reports: is ingest running?"]

        http = httpx.AsyncClient(timeout=5.0)  # the feeds' REST calls (clock, backfill) use it throughout
        feeds = build(settings, http, await load_markets(settings, http))
        ingest = asyncio.create_task(
            run_ingest(settings, live_trades(settings, feeds, stop=stop), stop, name="live")
        )
        try:
            # Coinbase delivers, Binance cannot connect: healthy, and Binance's trouble is shown
            def one_delivers() -> dict[str, Any] | None:
                h = health()
                f = _feeds(h)
                ok = f.get("coinbase", {}).get("delivering") and f["coinbase"]["trades"] == 20
                return h if ok and "binance" in f and f["binance"]["error"] else None

            h = await _until(one_delivers, "Coinbase delivering and Binance's error reported")
            assert h["status"] == "healthy" and h["problems"] == []
            binance = _feeds(h)["binance"]
            assert binance["state"] in ("connecting", "reconnecting") and not binance["delivering"]
            assert binance["error"].startswith("cannot connect") and binance["last_trade_at"] is None
            assert _feeds(h)["coinbase"]["state"] == "connected" and _feeds(h)["coinbase"]["last_trade_at"]
            s = status()
            assert s["live"] is True and s["fed"] is True
            assert {f["source"]: f["delivering"] for f in s["feeds"]} == {"binance": False, "coinbase": True}

            # Coinbase goes away too: no source delivers, health is degraded and says why, per source
            await coinbase.stop()

            def none_delivers() -> dict[str, Any] | None:
                h = health()
                return h if h["status"] == "degraded" else None

            h = await _until(none_delivers, "degraded once Coinbase is gone")
            (problem,) = h["problems"]
            assert problem.startswith(
                "no trade source delivers: binance "
            ) and "coinbase reconnecting since" in (problem), problem
            gone = _feeds(h)["coinbase"]
            assert gone["state"] == "reconnecting" and gone["since"] and gone["trades"] == 20
            assert gone["last_trade_at"] is not None and not gone["delivering"]
            assert status()["fed"] is False
        finally:
            stop.set()
            await asyncio.wait_for(ingest, 30)
            await http.aclose()
            await coinbase.stop()

    # what ingest wrote: a status a second per source, the last one saying it ended
    records = await topic_records(settings, settings.kafka_candles_topic)
    reports = [orjson.loads(r.value) for r in records if r.key == b"__feed__"]
    last = {m["source"]: m for m in reports}
    assert {source: m["state"] for source, m in last.items()} == {"binance": "ended", "coinbase": "ended"}
    assert all(m["type"] == "feed" for m in reports) and len(reports) >= 4
