"""Live exchange feeds: a registry by name, and :func:`live_trades` that runs the configured ones together.

Each exchange is one small module (:mod:`~ingest.exchanges.binance`, :mod:`~ingest.exchanges.coinbase`);
the reconnect/heartbeat/stall/gap loop they share is :mod:`~ingest.exchanges.base`. ``EXCHANGES`` maps the
names ``EXCHANGES=binance,coinbase`` accepts to a factory that builds the feed (and its REST history for
gap backfill) from the settings and the markets it serves.

Which markets those are is decided once at start-up by :func:`load_markets`: each exchange's market list
(live from its REST API, else the last cached copy under ``STATE_DIR/markets``, else the snapshot shipped
with cryptostream) is matched against SYMBOLS by :func:`cryptostream.markets.resolve`. A feed subscribes
with the exchange's own ids from that list; a symbol no configured exchange trades stops start-up.
``SYMBOLS=all`` (or a count) is counted by those lists too: :func:`refresh_market_lists` fetches them before
the settings are read, and :func:`check_markets` refuses, before anything starts, a symbol no configured
exchange trades or more markets than an exchange streams on the one connection a feed opens (Binance: 1024).

:func:`live_trades` also writes each feed's progress (see :mod:`ingest.exchanges.watermark`) every
``PROGRESS_INTERVAL_MS``, keeps what a restart needs to find the gap across it in
``STATE_DIR/ingest/<exchange>.json``, and on stop ends with each feed's final progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import httpx
import orjson

from cryptostream.errors import SettingsError
from cryptostream.feeds import ENDED
from cryptostream.markets import Catalog, Market, listed_on, local_catalogs, refresh, resolve
from cryptostream.settings import Settings
from ingest.backfill import BinanceHistory, CoinbaseHistory
from ingest.exchanges.base import Exchange
from ingest.exchanges.binance import MAX_STREAMS, Binance
from ingest.exchanges.coinbase import CoinbaseAdvanced, CoinbaseExchange
from ingest.source import TradeBatch, now_ms

__all__ = [
    "EXCHANGES",
    "Binance",
    "CoinbaseAdvanced",
    "CoinbaseExchange",
    "Exchange",
    "build",
    "check_markets",
    "live_trades",
    "load_markets",
    "refresh_market_lists",
]

log = logging.getLogger(__name__)

RESTART_SECONDS = 5.0
QUEUE_BATCHES = 4096  # frames waiting for the publisher; beyond this the readers wait (back-pressure)
LOGGED_MARKETS = 20  # markets a start-up log line names; the rest are counted (SYMBOLS=all)


def _binance(settings: Settings, http: httpx.AsyncClient, markets: Sequence[Market]) -> Exchange:
    history = BinanceHistory(http, settings.binance_rest_url, markets, settings.binance_stream)
    return Binance(settings, markets, history)


def _coinbase(settings: Settings, http: httpx.AsyncClient, markets: Sequence[Market]) -> Exchange:
    history = CoinbaseHistory(http, settings.coinbase_rest_url, markets)
    if settings.coinbase_feed == "advanced":
        return CoinbaseAdvanced(settings, markets, history)
    return CoinbaseExchange(settings, markets, history)


EXCHANGES: dict[str, Callable[[Settings, httpx.AsyncClient, Sequence[Market]], Exchange]] = {
    "binance": _binance,
    "coinbase": _coinbase,
}


def _live_exchanges(settings: Settings) -> list[str]:
    names = [name for name in settings.exchanges if name in EXCHANGES]
    if not names:
        raise SettingsError(
            f"EXCHANGES names no live exchange ({', '.join(EXCHANGES)}), got {','.join(settings.exchanges)}"
        )
    return names


def _rest_url(settings: Settings, exchange: str) -> str:
    return settings.binance_rest_url if exchange == "binance" else settings.coinbase_rest_url


# Markets one feed streams at most: one connection each (Binance: streams per connection). Coinbase
# documents no such limit for a subscription.
STREAM_LIMITS = {"binance": MAX_STREAMS}


async def _refresh_all(settings: Settings, http: httpx.AsyncClient) -> dict[str, Catalog]:
    names = _live_exchanges(settings)
    folder = settings.state_dir / "markets"
    lists = await asyncio.gather(*(refresh(name, http, _rest_url(settings, name), folder) for name in names))
    return dict(zip(names, lists, strict=True))


async def refresh_market_lists(settings: Settings) -> None:
    """Fetch the market lists of the live EXCHANGES into ``STATE_DIR/markets`` (offline: keeps the cache),
    so that ``SYMBOLS=all`` read after it counts what the exchanges trade today."""
    async with httpx.AsyncClient(timeout=10.0, headers={"User-Agent": "cryptostream"}) as http:
        await _refresh_all(settings, http)


def check_markets(settings: Settings) -> None:
    """Raise a one-line :class:`SettingsError` when SYMBOLS names a symbol no live exchange of EXCHANGES
    trades (as :func:`load_markets` would, later), or more markets of an exchange than its feed can stream:
    by the market lists at hand (cached, else the snapshot), without the network."""
    names = _live_exchanges(settings)
    resolved = resolve(settings.symbols, names, local_catalogs(names, settings.state_dir / "markets"))
    for name, markets in resolved.items():
        limit = STREAM_LIMITS.get(name)
        if limit is not None and len(markets) > limit:
            raise SettingsError(
                f"SYMBOLS names {len(markets)} {name} markets; {name} streams at most {limit} on the "
                f"one connection its feed opens: name fewer (SYMBOLS=N, or EXCHANGES without {name})"
            )


async def load_markets(settings: Settings, http: httpx.AsyncClient) -> dict[str, list[Market]]:
    """Exchange -> the markets of SYMBOLS it trades, from fresh market lists; logs what each streams."""
    names = _live_exchanges(settings)
    catalogs = await _refresh_all(settings, http)
    resolved = resolve(settings.symbols, names, catalogs)
    for name in names:
        streamed = _some([m.native for m in resolved[name]]) or "nothing (it lists none of SYMBOLS)"
        log.info("%s streams %s; market list: %s", name, streamed, catalogs[name].describe())
    single = [(s, v) for s, v in listed_on(resolved).items() if len(v) < len(names)]
    if len(single) > LOGGED_MARKETS:  # SYMBOLS=all: one line, not one per market
        log.info("%d symbols trade on one exchange only: %s", len(single), _some([s for s, _ in single]))
    else:
        for symbol, venues in single:
            log.info("%s: %s only (the other exchanges do not trade it)", symbol, " and ".join(venues))
    return resolved


def _some(names: Sequence[str]) -> str:
    more = len(names) - LOGGED_MARKETS
    return ", ".join(names[:LOGGED_MARKETS]) + (f" and {more} more" if more > 0 else "")


def build(
    settings: Settings, http: httpx.AsyncClient, markets: Mapping[str, Sequence[Market]]
) -> list[Exchange]:
    """One feed per configured exchange that trades at least one of SYMBOLS (``markets`` says which)."""
    return [
        EXCHANGES[name](settings, http, markets[name])
        for name in _live_exchanges(settings)
        if markets.get(name)
    ]


async def _supervise(feed: Exchange, queue: asyncio.Queue[TradeBatch]) -> None:
    """Keep one feed running; a bug in it is logged and the feed restarted, the others never notice."""
    while True:
        try:
            await feed.run(queue.put)
        except Exception:
            log.exception("%s feed failed; restarting it in %.0fs", feed.name, RESTART_SECONDS)
            await asyncio.sleep(RESTART_SECONDS)


class ResumeFile:
    """``STATE_DIR/ingest/<exchange>.json``: per symbol the last trade id the written progress covers, and
    the feed's id space (:meth:`Exchange.id_space`) those ids count in."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def load(self, exchange: str, id_space: str) -> dict[str, dict[str, int]]:
        """What an earlier run saved for this feed; nothing (said why) when the file cannot be read, holds
        another id space, or has another shape: a wrong entry must not stop ingest, nor drop trades as
        duplicates of ids from another numbering."""
        path = self.folder / f"{exchange}.json"
        try:
            saved = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, orjson.JSONDecodeError) as exc:
            log.warning(
                "%s: ignoring unreadable %s (%s); gaps across the restart are not looked for",
                exchange,
                path,
                exc,
            )
            return {}
        if isinstance(saved, dict) and "symbols" in saved:
            if saved.get("id_space") != id_space:
                log.warning(
                    "%s: ignoring %s, saved for trade ids of %r, not %r; gaps across the restart are not "
                    "looked for",
                    exchange,
                    path,
                    saved.get("id_space"),
                    id_space,
                )
                return {}
            saved = saved["symbols"]  # (files of earlier versions hold the symbols alone)
        if not isinstance(saved, dict):
            log.warning("%s: ignoring %s: not an object of symbols", exchange, path)
            return {}
        good = {
            k: v for k, v in saved.items() if isinstance(v, dict) and _ints(v.get("id"), v.get("watermark"))
        }
        if len(good) < len(saved):
            log.warning("%s: ignoring %d malformed entr(ies) of %s", exchange, len(saved) - len(good), path)
        return good

    def save(self, exchange: str, id_space: str, state: dict[str, dict[str, int]]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{exchange}.json"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(orjson.dumps({"id_space": id_space, "symbols": state}))
        os.replace(tmp, path)


def _ints(*values: object) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def _resume(feed: Exchange, saved: dict[str, dict[str, int]]) -> None:
    """Start ``feed`` where an earlier run's progress left off: the first trade shows any gap across it."""
    for symbol, last_id in feed.watermark.restore(saved, feed.now()).items():
        feed.ids[symbol].high = last_id
    if saved:
        log.info("%s: resuming after the trades an earlier run covered (%d symbol(s))", feed.name, len(saved))


async def _progress(
    feeds: list[Exchange], queue: asyncio.Queue[TradeBatch], every_s: float, resume: ResumeFile
) -> None:
    """Every ``every_s``: each feed's progress, in order with its trades (one queue); every second its
    connection state (for the API) and what its resume file will say once Kafka holds all before it."""
    saved_at = 0.0
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(every_s)
        for feed in feeds:
            now = feed.exchange_now()  # the exchange's time: no progress until frames have told it
            progress = [] if now is None else feed.watermark.progress(now)
            if progress:
                await queue.put(TradeBatch(source=feed.name, progress=progress, stamped=now))
        if loop.time() - saved_at >= 1.0:
            saved_at = loop.time()
            feeds_now = [replace(feed.feed) for feed in feeds]
            await queue.put(TradeBatch(source="live", feeds=feeds_now, acknowledged=_saver(resume, feeds)))


def _saver(resume: ResumeFile, feeds: list[Exchange]) -> Callable[[], None]:
    """Write each feed's resume file as it is now, once Kafka acknowledged every record before this moment
    (the batch carrying it): written at once, the file could cover trades the publisher still held, and a
    crash then lost them with nothing left to say they were missing."""
    snapshot = [(feed.name, feed.id_space(), feed.watermark.resume()) for feed in feeds]

    def save() -> None:
        for name, space, state in snapshot:
            try:
                resume.save(name, space, state)
            except OSError as exc:  # progress matters more than the file: keep going, say why
                log.warning("%s: cannot write %s (%s)", name, resume.folder, exc)

    return save


async def live_trades(
    settings: Settings, feeds: list[Exchange] | None = None, *, stop: asyncio.Event | None = None
) -> AsyncIterator[TradeBatch]:
    """Batches of new (deduplicated, validated) trades from every configured exchange, concurrently, with
    each feed's progress; after ``stop``, what the feeds delivered and their final progress, then the end."""
    queue: asyncio.Queue[TradeBatch] = asyncio.Queue(maxsize=QUEUE_BATCHES)
    resume = ResumeFile(settings.state_dir / "ingest")
    async with httpx.AsyncClient(timeout=10.0, headers={"User-Agent": "cryptostream"}) as http:
        feeds = feeds if feeds is not None else build(settings, http, await load_markets(settings, http))
        for feed in feeds:
            _resume(feed, resume.load(feed.name, feed.id_space()))
        tasks = [asyncio.create_task(_supervise(feed, queue), name=f"feed-{feed.name}") for feed in feeds]
        tasks.append(
            asyncio.create_task(_progress(feeds, queue, settings.progress_interval_ms / 1000, resume))
        )
        log.info("live feeds: %s", ", ".join(f"{f.name} ({f.url()})" for f in feeds))
        stopped = asyncio.ensure_future(stop.wait()) if stop is not None else None
        try:
            while True:
                get = asyncio.ensure_future(queue.get())
                await asyncio.wait(
                    {get} if stopped is None else {get, stopped}, return_when=asyncio.FIRST_COMPLETED
                )
                if not get.done():
                    get.cancel()
                    break
                yield get.result()
            # Stopping: the feeds end, what they queued goes out, then each feed's final progress.
            await _cancel(tasks)
            while not queue.empty():
                yield queue.get_nowait()
            if settings.flush_windows_on_stop:
                await asyncio.gather(*(feed.prove_stop() for feed in feeds))
            for feed in feeds:
                now = feed.exchange_now()
                final = (
                    []
                    if now is None
                    else feed.watermark.progress(now, complete=settings.flush_windows_on_stop)
                )
                if final:
                    yield TradeBatch(source=feed.name, progress=final, stamped=now)
            for feed in feeds:
                feed.feed.enter(ENDED, now_ms())
            yield TradeBatch(
                source="live", feeds=[feed.feed for feed in feeds], acknowledged=_saver(resume, feeds)
            )
        finally:
            if stopped is not None:
                stopped.cancel()
            await _cancel(tasks)


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
