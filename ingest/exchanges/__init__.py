"""Live exchange feeds: a registry by name, and :func:`live_trades` that runs the configured ones together.

Each exchange is one small module (:mod:`~ingest.exchanges.binance`, :mod:`~ingest.exchanges.coinbase`);
the reconnect/heartbeat/stall/gap loop they share is :mod:`~ingest.exchanges.base`. ``EXCHANGES`` maps the
names ``EXCHANGES=binance,coinbase`` accepts to a factory that builds the feed (and its REST history for
gap backfill) from the settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import httpx

from cryptostream.settings import Settings
from ingest.backfill import BinanceHistory, CoinbaseHistory
from ingest.exchanges.base import Exchange
from ingest.exchanges.binance import Binance
from ingest.exchanges.coinbase import CoinbaseAdvanced, CoinbaseExchange
from ingest.source import TradeBatch

__all__ = ["EXCHANGES", "Binance", "CoinbaseAdvanced", "CoinbaseExchange", "Exchange", "build", "live_trades"]

log = logging.getLogger(__name__)

RESTART_SECONDS = 5.0
QUEUE_BATCHES = 4096  # frames waiting for the publisher; beyond this the readers wait (back-pressure)


def _binance(settings: Settings, http: httpx.AsyncClient) -> Exchange:
    return Binance(settings, BinanceHistory(http, settings.binance_rest_url, settings.binance_stream))


def _coinbase(settings: Settings, http: httpx.AsyncClient) -> Exchange:
    history = CoinbaseHistory(http, settings.coinbase_rest_url)
    if settings.coinbase_feed == "advanced":
        return CoinbaseAdvanced(settings, history)
    return CoinbaseExchange(settings, history)


EXCHANGES: dict[str, Callable[[Settings, httpx.AsyncClient], Exchange]] = {
    "binance": _binance,
    "coinbase": _coinbase,
}


def build(settings: Settings, http: httpx.AsyncClient) -> list[Exchange]:
    """The feeds ``EXCHANGES`` names (settings validation already refused unknown names)."""
    return [EXCHANGES[name](settings, http) for name in settings.exchanges]


async def _supervise(feed: Exchange, queue: asyncio.Queue[TradeBatch]) -> None:
    """Keep one feed running; a bug in it is logged and the feed restarted, the others never notice."""
    while True:
        try:
            await feed.run(queue.put)
        except Exception:
            log.exception("%s feed failed; restarting it in %.0fs", feed.name, RESTART_SECONDS)
            await asyncio.sleep(RESTART_SECONDS)


async def live_trades(settings: Settings, feeds: list[Exchange] | None = None) -> AsyncIterator[TradeBatch]:
    """Batches of new (deduplicated, validated) trades from every configured exchange, concurrently."""
    queue: asyncio.Queue[TradeBatch] = asyncio.Queue(maxsize=QUEUE_BATCHES)
    async with httpx.AsyncClient(timeout=10.0, headers={"User-Agent": "cryptostream"}) as http:
        feeds = feeds if feeds is not None else build(settings, http)
        tasks = [asyncio.create_task(_supervise(feed, queue), name=f"feed-{feed.name}") for feed in feeds]
        log.info("live feeds: %s", ", ".join(f"{f.name} ({f.url()})" for f in feeds))
        try:
            while True:
                yield await queue.get()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
