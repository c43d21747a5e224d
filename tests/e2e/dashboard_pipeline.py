"""The pipeline the dashboard tests watch: real broker, real PostgreSQL, a real processor with a trained
model, the real API under uvicorn, and synthetic markets streaming trades (ten minutes of history first,
then live, stamped with the wall clock): the demo venue's SYMBOLS, and a second venue trading BTCUSDT
(``binance`` here, generated too) so the page has a venue to switch to. ``EXCHANGES=synthetic``, as
``cryptostream up --source synthetic`` sets it: a symbol alone means the demo market.

The processor and the trade stream run in a thread with their own event loop; the API runs under
:class:`graphql_api.server.BackgroundServer` and can be stopped and started again on the same port, as a
restart would. Tests stay synchronous (Playwright's sync API).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson

from cryptostream.feeds import FEED_KEY
from cryptostream.kafka import ensure_topics, start_producer
from cryptostream.migrate import upgrade
from cryptostream.models import Trade
from cryptostream.procs import free_port
from cryptostream.settings import Settings, load_settings
from graphql_api.app import create_app
from graphql_api.server import BackgroundServer
from ingest.publisher import Publisher
from ingest.synthetic import SyntheticMarket
from processor.model import registry
from processor.model.dataset import build_dataset
from processor.model.scorer import ModelScorer
from processor.model.synthetic import synthetic_candles
from processor.model.train import fit_and_report
from processor.service import Processor
from tests.e2e.polling import graphql, wait_until
from tests.integration.helpers import create_database, sinks_for

__all__ = ["DEMO", "OTHER", "SYMBOLS", "DashboardPipeline"]

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
DEMO = "synthetic"
OTHER = ("binance", ["BTCUSDT"])  # the second venue and what it trades
HISTORY_SECONDS = 600
RATE = 45.0  # trades per second over the three symbols (the demo venue)
OTHER_RATE = 8.0

T = TypeVar("T")


def _in_thread(fn: Callable[[], T]) -> T:
    """``fn()`` in a thread of its own: it may run an event loop (``asyncio.run``), which the test's thread
    cannot while Playwright's sync API holds one there (a browser fixture set up first)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result()


def _train(model_dir: Path) -> ModelScorer:
    """A small walk-forward-trained model (its report is what the page shows), saved under MODEL_DIR."""
    candles = {"S0": synthetic_candles(1200, seed=70, signal=0.2, gap_rate=0.1)}
    result = fit_and_report(build_dataset(candles, 20), folds=3, candidates=("logit",))
    registry.save(model_dir, result.model_file, result.report)
    return ModelScorer(result.model_file)


class DashboardPipeline:
    """``with DashboardPipeline(bootstrap, database_url, tmp) as p: p.url`` — everything running.

    ``history_seconds=0`` starts from nothing, as a first ``cryptostream up`` does; ``checkpoint_seconds``
    is ``PARQUET_CHUNK_SECONDS``, how often closed rows reach the database (a long one keeps a market that
    trades live with nothing stored); ``wide`` adds a venue of many markets: (venue, symbols, trades/s)."""

    def __init__(
        self,
        kafka_bootstrap: str,
        database_url: str,
        work: Path,
        *,
        history_seconds: int = HISTORY_SECONDS,
        checkpoint_seconds: float = 0.5,
        wide: tuple[str, list[str], float] | None = None,
    ) -> None:
        tag = uuid.uuid4().hex[:8]
        self.history_seconds = history_seconds
        self.wide = wide
        self.database_url = _in_thread(lambda: asyncio.run(create_database(database_url)))  # ours alone
        _in_thread(lambda: upgrade(self.database_url))
        self.settings: Settings = load_settings(
            kafka_bootstrap=kafka_bootstrap,
            database_url=self.database_url,
            kafka_topic=f"dash-trades-{tag}",
            kafka_candles_topic=f"dash-candles-{tag}",
            kafka_dlq_topic=f"dash-dlq-{tag}",
            consumer_group=f"dash-{tag}",
            output_dir=work / "outputs",
            state_dir=work / "state",
            model_dir=work / "models",
            symbols=SYMBOLS,
            exchanges=[DEMO],
            kafka_partitions=2,
            max_buffer_seconds=0.5,
            parquet_chunk_seconds=checkpoint_seconds,
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: BackgroundServer | None = None
        self.trading = threading.Event()  # cleared: the market goes quiet (no trades), as a stalled feed
        self.trading.set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="dashboard-pipeline", daemon=True)
        self.scorer = _train(self.settings.model_dir)

    # ------------------------------------------------------------------------------ processor + trades
    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to the test thread
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        settings = self.settings
        await ensure_topics(settings)
        processor = Processor(settings, sinks_for(settings), scorers=[self.scorer])
        work = asyncio.create_task(processor.run(self._stop), name="processor")
        producer = await start_producer(settings)
        publisher = Publisher(producer, settings.kafka_topic, batch_size=1000, queue_size=50_000)
        await publisher.start()
        markets = [
            (SyntheticMarket(SYMBOLS, rate=RATE, seed=11), RATE),
            (SyntheticMarket(OTHER[1], rate=OTHER_RATE, seed=12, exchange=OTHER[0]), OTHER_RATE),
        ]
        if self.wide is not None:
            venue, symbols, rate = self.wide
            markets.append((SyntheticMarket(symbols, rate=rate, seed=13, exchange=venue), rate))
        try:
            # History (ten minutes by default) while the processor joins its group. Arrivals speed up and
            # slow down with volatility: draw 5 s at a time until now, so live prices continue from the last
            # ones.
            now = int(time.time() * 1000)
            for market, rate in markets:
                history: list[Trade] = []
                while self.history_seconds and (not history or history[-1].timestamp < now):
                    start = history[-1].timestamp if history else now - self.history_seconds * 1000
                    history += market.generate(int(rate * 5), start)
                await publisher.put([t for t in history if t.timestamp < now])
            await asyncio.wait_for(processor.ready.wait(), 30)
            self._ready.set()
            await asyncio.gather(*(self._trade(market, publisher) for market, _ in markets))
        finally:
            await publisher.stop()
            await producer.stop()
            self._stop.set()
            await asyncio.wait_for(work, 30)

    async def _trade(self, market: SyntheticMarket, publisher: Publisher) -> None:
        """Stream ``market`` live, with the progress it writes (as ingest does), until the pipeline stops."""
        assert self._stop is not None
        async for batch in market.stream():
            if self._stop.is_set():
                return
            if self.trading.is_set():
                await publisher.put(batch)
                for progress in batch.progress:
                    await publisher.put_records(publisher.progress_records(progress))
            for feed in batch.feeds:  # the source's connection state, for the API, as ingest sends it
                message = orjson.dumps(feed.message(int(time.time() * 1000), "dashboard-test"))
                await publisher.producer.send(self.settings.kafka_candles_topic, message, key=FEED_KEY)

    # ------------------------------------------------------------------------------ the API
    def start_api(self) -> BackgroundServer:
        """The API on this pipeline's port, its live feed connected."""
        self.server = BackgroundServer(create_app(self.settings), port=self.port).start()
        self.wait_until(lambda: httpx.get(f"{self.url}/health").json()["live_feed"] is True, 30, "live feed")
        return self.server

    def stop_api(self) -> None:
        assert self.server is not None
        self.server.stop()
        self.server = None

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run ``coro`` on the pipeline's event loop (e.g. publishing more trades) and return its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # ------------------------------------------------------------------------------ queries
    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        return graphql(self.url, query, **variables)

    def candles(self, symbol: str, interval: str, limit: int, exchange: str | None = None) -> dict[str, Any]:
        """Stored candles as the API serves them (``exchange`` None: the venue a symbol alone means)."""
        query = """query($s: String!, $e: String, $i: String!, $l: Int!) {
            candleColumns(symbol: $s, exchange: $e, interval: $i, limit: $l) {
                exchange bucket open high low close volume tradeCount
            }
        }"""
        columns: dict[str, Any] = self.graphql(query, s=symbol, e=exchange, i=interval, l=limit)[
            "candleColumns"
        ]
        return columns

    def wait_until(self, check: Callable[[], bool], timeout: float, what: str) -> float:
        return wait_until(check, timeout, what, failure=self._failed, every=0.2)

    def _failed(self) -> str | None:
        return None if self._error is None else f"the pipeline failed: {self._error!r}"

    # ------------------------------------------------------------------------------ lifecycle
    def __enter__(self) -> DashboardPipeline:
        self._thread.start()
        if not self._ready.wait(60) or self._error is not None:
            raise AssertionError(f"the pipeline did not start: {self._error!r}")
        self.start_api()
        if not self.history_seconds:  # nothing to wait for but live trades
            self.wait_until(
                lambda: self.graphql("{ pipelineStatus { trades } }")["pipelineStatus"]["trades"] > 0,
                30,
                "live trades processed",
            )
            return self
        # History stored (ten minutes for every market), every symbol listed, and live seconds flowing.
        self.wait_until(
            lambda: (
                all(len(self.candles(s, "1s", 1000)["bucket"]) >= 500 for s in SYMBOLS)
                and all(len(self.candles(s, "1s", 1000, OTHER[0])["bucket"]) >= 400 for s in OTHER[1])
                and sorted(self.graphql("{ symbols }")["symbols"]) == SYMBOLS
                and self.graphql("{ pipelineStatus { trades } }")["pipelineStatus"]["trades"] > 0
            ),
            45,
            "ten minutes of stored candles for every symbol",
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.stop_api()
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(40)
