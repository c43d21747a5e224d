"""API latency over real HTTP and real WebSockets, with baselines measured in the same run.

1. Queries: p50/p99 of fetching the newest 1,000 1 s candles (bucket + OHLCV) over HTTP, as objects and as
   columns, from an API process reading the embedded PostgreSQL. Baseline: the object form on graphql-core's
   ordinary executor (no column-wise completion). Targets: p50 <= 15 ms, p99 <= 40 ms.
2. Fan-out: 2,000 WebSocket subscribers of live 1 s candles on ONE API process; candle messages are produced
   to the candles topic (as the processor does) and the time from produce to each subscriber's receipt is
   measured. Baseline: the same API with graphql-core's ordinary executor, which runs the subscription's
   selection set once per subscriber per event instead of once per event. Target: p99 <= 200 ms.

The server runs in its own process (as in production) and the subscribers in two other processes, so the
client's CPU does not count against the server's; on a 2-core machine they still compete for the cores.

    .venv/bin/python bench/bench_api.py [--requests 300] [--subscribers 2000] [--events 40] [--fanout arrow]

BENCH_VERBOSE=1 also prints the slowest delivery of each event and the API process's CPU per delivery;
BENCH_PROFILE=/tmp/api writes a cProfile of each API process (/tmp/api.plain, /tmp/api.arrow).
DATABASE_URL / KAFKA_BOOTSTRAP use real services instead of the embedded ones.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cryptostream.embedded import EmbeddedKafka, EmbeddedPostgres  # noqa: E402
from cryptostream.kafka import ensure_topics, start_producer, wait_for_broker  # noqa: E402
from cryptostream.migrate import upgrade  # noqa: E402
from cryptostream.procs import free_port  # noqa: E402
from cryptostream.settings import load_settings  # noqa: E402
from tests.reference import one_trade_candle  # noqa: E402

T0 = 1_700_000_000_000
COLUMNS = [
    "exchange",
    "symbol",
    "bucket",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "trade_count",
    "vwap",
    "buy_volume",
    "sell_volume",
]
OHLCV = "bucket open high low close volume"
QUERIES = {
    "objects": f'{{ candles(symbol: "BTCUSDT", limit: 1000) {{ {OHLCV} }} }}',
    "columns": f'{{ candleColumns(symbol: "BTCUSDT", limit: 1000) {{ {OHLCV} }} }}',
}
SUBSCRIPTION = (
    "subscription($s: [String!]!) { candles(symbols: $s) "
    "{ symbol bucket open high low close volume tradeCount closed } }"
)


# ------------------------------------------------------------------------------------------ server child
def serve(args: argparse.Namespace) -> None:
    """Run one API process (the child role of this script)."""
    import uvicorn

    from graphql_api.app import create_app
    from graphql_api.arrow import ArrowExecutor, PlainExecutor
    from graphql_api.server import uvicorn_config

    settings = load_settings(
        database_url=args.database_url,
        kafka_bootstrap=args.kafka or None,
        kafka_candles_topic=args.topic,
        api_max_subscribers=100_000,
        api_max_subscriptions_per_client=100_000,  # every subscriber of the bench comes from 127.0.0.1
        log_level="WARNING",
    )
    executor = PlainExecutor if args.executor == "plain" else ArrowExecutor
    config = uvicorn_config(
        create_app(settings, executor=executor), "127.0.0.1", args.port, log_level="warning"
    )
    profile = os.environ.get("BENCH_PROFILE")  # write a cProfile of the API process here
    if profile:
        import cProfile
        import signal

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:  # stop on SIGTERM without re-raising it
                signal.signal(signal.SIGTERM, lambda *_: setattr(self, "should_exit", True))
                yield

        cProfile.runctx("Server(config).run()", globals(), locals(), f"{profile}.{args.executor}")
    else:
        uvicorn.Server(config).run()


@contextlib.contextmanager
def api_process(
    database_url: str, executor: str, kafka: str = "", topic: str = "crypto-candles"
) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, __file__, "serve", "--port", str(port), "--database-url", database_url]
    command += ["--executor", executor, "--kafka", kafka, "--topic", topic]
    child = subprocess.Popen(command, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"{url}/health", timeout=1).json()
                if not kafka or health["live_feed"]:
                    break
            except httpx.HTTPError:
                pass
            if child.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the API process did not start")
            time.sleep(0.1)
        yield url
    finally:
        child.terminate()
        child.wait(30)


# ------------------------------------------------------------------------------------------ data
async def seed(dsn: str, n: int = 5_000) -> None:
    """``n`` 1 s candles of binance's BTCUSDT (a random walk), straight into the table the processor writes
    (BTCUSDT alone means binance: the first of the default EXCHANGES)."""
    rng = np.random.default_rng(7)
    close = 65_000 * np.exp(np.cumsum(rng.normal(0, 2e-4, n)))
    open_ = np.concatenate([[65_000.0], close[:-1]])
    spread = np.abs(rng.normal(0, 5, n))
    volume = rng.lognormal(0, 1, n)
    rows = [
        (
            "binance",
            "BTCUSDT",
            datetime.fromtimestamp((T0 + i * 1000) / 1000, tz=UTC),
            float(open_[i]),
            float(max(open_[i], close[i]) + spread[i]),
            float(min(open_[i], close[i]) - spread[i]),
            float(close[i]),
            float(volume[i]),
            int(rng.integers(1, 50)),
            float((open_[i] + close[i]) / 2),
            float(volume[i] / 2),
            float(volume[i] / 2),
        )
        for i in range(n)
    ]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("TRUNCATE ohlc_1s")
        await conn.copy_records_to_table("ohlc_1s", records=rows, columns=COLUMNS)
    finally:
        await conn.close()


# ------------------------------------------------------------------------------------------ 1. queries
def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def time_queries(url: str, query: str, requests: int) -> tuple[float, float, int]:
    with httpx.Client(base_url=url, timeout=30) as client:
        body = client.post("/graphql", json={"query": query})
        size = len(body.content)
        assert "errors" not in body.json(), body.text[:300]
        for _ in range(20):
            client.post("/graphql", json={"query": query})
        samples = []
        for _ in range(requests):
            started = time.perf_counter()
            response = client.post("/graphql", json={"query": query})
            response.read()
            samples.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200
    p50, p99 = percentiles(samples)
    return p50, p99, size


# ------------------------------------------------------------------------------------------ 2. fan-out
def subscriber_process(ws_url: str, n: int, ready: Any, events: int, out: Any) -> None:
    """``n`` graphql-transport-ws subscribers in one process; sends back (event, receive time) pairs."""
    asyncio.run(_subscribers(ws_url, n, ready, events, out))


async def _subscribers(ws_url: str, n: int, ready: Any, events: int, out: Any) -> None:
    import websockets

    received: list[tuple[int, float]] = []
    init = orjson.dumps({"type": "connection_init"}).decode()
    subscribe = orjson.dumps(
        {"id": "1", "type": "subscribe", "payload": {"query": SUBSCRIPTION, "variables": {"s": ["BTCUSDT"]}}}
    ).decode()

    async def one() -> None:
        async with websockets.connect(
            f"{ws_url}/graphql", subprotocols=["graphql-transport-ws"], compression=None, open_timeout=60
        ) as ws:
            await ws.send(init)
            await ws.recv()
            await ws.send(subscribe)
            connected.append(1)
            if len(connected) == n:
                all_connected.set()
            while True:
                message = orjson.loads(await ws.recv())
                if message.get("type") != "next":
                    raise RuntimeError(f"subscription ended: {message}")
                event = int(message["payload"]["data"]["candles"]["close"])
                received.append((event, time.time()))
                if event >= events:
                    return

    connected: list[int] = []
    all_connected = asyncio.Event()
    tasks = []
    for _ in range(n):
        tasks.append(asyncio.create_task(one()))
        if len(tasks) % 50 == 0:
            await asyncio.sleep(0.05)  # do not flood the server's accept queue
    await all_connected.wait()
    ready.set()
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), 300)
    finally:
        out.put(received)


async def _produce(bootstrap: str, topic: str, events: int, interval: float) -> dict[int, float]:
    settings = load_settings(kafka_bootstrap=bootstrap, kafka_candles_topic=topic)
    producer = await start_producer(settings, linger_ms=0)
    sent: dict[int, float] = {}
    try:
        for i in range(1, events + 1):
            value = one_trade_candle(T0 + i * 1000, float(i), closed=False)
            sent[i] = time.time()
            await producer.send_and_wait(topic, value, key=b"BTCUSDT")
            await asyncio.sleep(interval)
    finally:
        await producer.stop()
    return sent


def time_fanout(
    url: str, bootstrap: str, topic: str, subscribers: int, events: int
) -> tuple[float, float, int]:
    ctx = mp.get_context("spawn")
    ready = [ctx.Event() for _ in range(2)]
    out = ctx.Queue()
    halves = [subscribers // 2, subscribers - subscribers // 2]
    ws_url = url.replace("http://", "ws://")
    procs = [
        ctx.Process(target=subscriber_process, args=(ws_url, halves[i], ready[i], events, out), daemon=True)
        for i in range(2)
    ]
    for p in procs:
        p.start()
    for event in ready:
        if not event.wait(180):
            raise RuntimeError("subscribers did not connect within 180 s")
    deadline = time.monotonic() + 30
    while httpx.get(f"{url}/health").json()["subscribers"] < subscribers:
        if time.monotonic() > deadline:
            raise RuntimeError("the API did not register every subscriber")
        time.sleep(0.1)
    server = _server_pid(url)
    cpu_before = _cpu_seconds(server)
    sent = asyncio.run(_produce(bootstrap, topic, events, interval=0.25))
    cpu = _cpu_seconds(server) - cpu_before
    received: list[tuple[int, float]] = []
    for _ in procs:
        received.extend(out.get(timeout=120))
    for p in procs:
        p.join(30)
    latencies = [(t - sent[e]) * 1000 for e, t in received if e in sent]
    p50, p99 = percentiles(latencies)
    if os.environ.get("BENCH_VERBOSE"):
        by_event: dict[int, list[float]] = {}
        for e, t in received:
            by_event.setdefault(e, []).append((t - sent[e]) * 1000)
        print("    per event: " + " ".join(f"{e}:{max(v):.0f}" for e, v in sorted(by_event.items())))
        print(f"    API process CPU: {cpu:.2f} s = {cpu / max(1, len(received)) * 1e6:.0f} us per delivery")
    return p50, p99, len(latencies)


def _server_pid(url: str) -> int:
    import psutil

    port = int(url.rsplit(":", 1)[1])
    for conn in psutil.net_connections("tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
            return int(conn.pid)
    raise RuntimeError(f"no process listens on {port}")


def _cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="role")
    child = sub.add_parser("serve")
    child.add_argument("--port", type=int, required=True)
    child.add_argument("--database-url", required=True)
    child.add_argument("--executor", default="arrow")
    child.add_argument("--kafka", default="")
    child.add_argument("--topic", default="crypto-candles")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--subscribers", type=int, default=2000)
    parser.add_argument("--events", type=int, default=40)
    parser.add_argument("--fanout", default="plain,arrow", help="executors to run the fan-out with")
    args = parser.parse_args()
    if args.role == "serve":
        serve(args)
        return

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        database_url = os.environ.get("DATABASE_URL")
        if not database_url:
            database_url = stack.enter_context(EmbeddedPostgres(Path(tmp) / "pg", fast_unsafe=True)).url
        upgrade(database_url)
        asyncio.run(seed(database_url))
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP")
        if not bootstrap:
            bootstrap = stack.enter_context(EmbeddedKafka(Path(tmp) / "kafka")).bootstrap
        asyncio.run(wait_for_broker(bootstrap, settings=load_settings(kafka_bootstrap=bootstrap)))

        print("1,000 x 1 s candles (bucket + OHLCV) over HTTP, sequential requests (ms):")
        baseline = "objects, graphql-core executor (baseline)"
        results: dict[str, tuple[float, float, int]] = {}
        with api_process(database_url, "plain") as url:
            results[baseline] = time_queries(url, QUERIES["objects"], args.requests)
        with api_process(database_url, "arrow") as url:
            results["objects, column-wise executor"] = time_queries(url, QUERIES["objects"], args.requests)
            results["columns (candleColumns)"] = time_queries(url, QUERIES["columns"], args.requests)
        for name, (p50, p99, size) in results.items():
            speedup = results[baseline][0] / p50
            print(f"  {name:44s} p50 {p50:6.2f}  p99 {p99:6.2f}  ({size / 1024:.0f} KiB)  p50 x{speedup:.1f}")
        for name in ("objects, column-wise executor", "columns (candleColumns)"):
            p50, p99, _ = results[name]
            verdict = "met" if p50 <= 15 and p99 <= 40 else "NOT met"
            print(f"  target p50 <= 15 ms, p99 <= 40 ms, {name}: {verdict}")

        print(
            f"\nFan-out: {args.subscribers} subscribers, one API process, {args.events} candles at 4/s (ms):"
        )
        fan: dict[str, tuple[float, float, int]] = {}
        labels = {"plain": "per-subscriber execution (baseline)", "arrow": "one execution per event"}
        for executor, label in ((e, labels[e]) for e in args.fanout.split(",")):
            topic = f"bench-candles-{executor}-{int(time.time())}"
            asyncio.run(ensure_topics(load_settings(kafka_bootstrap=bootstrap, kafka_candles_topic=topic)))
            with api_process(database_url, executor, kafka=bootstrap, topic=topic) as url:
                fan[label] = time_fanout(url, bootstrap, topic, args.subscribers, args.events)
        for label, (p50, p99, n) in fan.items():
            print(f"  {label:44s} p50 {p50:7.1f}  p99 {p99:7.1f}  ({n} deliveries)")
        if len(fan) == 2:
            p99 = fan["one execution per event"][1]
            ratio = fan["per-subscriber execution (baseline)"][1] / p99
            verdict = "met" if p99 <= 200 else "NOT met"
            print(f"  p99 x{ratio:.1f} lower than the baseline; target p99 <= 200 ms: {verdict}")


if __name__ == "__main__":
    main()
