"""API latency over real HTTP and real WebSockets, with baselines measured in the same run.

1. Queries: p50/p99 of fetching the newest 1,000 1 s candles (bucket + OHLCV) over HTTP, as objects and as
   columns, from an API process reading the embedded PostgreSQL. Baseline: the object form on graphql-core's
   ordinary executor (no column-wise completion). Targets: p50 <= 15 ms, p99 <= 40 ms.
2. Fan-out: N WebSocket subscribers (graphql-transport-ws) of live 1 s candles on ONE API process; candle
   messages are produced to the candles topic (as the processor does) and the time from produce to each
   subscriber's receipt is measured, with the API process's CPU per delivery. Modes (``--fanout``):
   ``shared``, updates executed and encoded once per subscription shape, each update's WebSocket frame built
   once per operation id and written straight to every socket (``graphql_api/wsprotocol.py``); ``asgi``,
   the same but each frame sent through ASGI (Starlette, uvicorn, websockets) per socket, as before;
   ``arrow`` (the baseline), the selection set memoized per event but strawberry's result path and send
   per subscriber; ``plain``, graphql-core's executor, the selection set run per subscriber too. Targets:
   p99 <= 50 ms with 2,000 subscribers, p99 <= 200 ms with 10,000, in every run, none dropped.

The server runs in its own process (as in production) and the subscribers in ``--clients`` other processes
(light clients: websockets' sans-I/O protocol on plain asyncio transports), so the client's CPU does not
count against the server's; on a 2-core machine they still compete for the cores. Two costs of running
the subscribers here that remote clients would not put on the server are kept out of its figures: the
subscribers' garbage collector (their connections are frozen out of it once connected: a full collection
of them took 300 ms and stamped every frame read meanwhile that late), and, with ``--subscriber-wait poll``
(the default), most of the wake-ups of the subscribers' processes that the API's ``send()`` ran (one a
frame; now about one an update and process); ``block`` keeps them, for comparison. The receiver's TCP,
which loopback also runs inside the API's ``send()``, stays counted.

    .venv/bin/python bench/bench_api.py [--requests 300] [--subscribers 2000] [--events 40]
        [--fanout arrow,shared] [--runs 5] [--clients 2] [--subscriber-wait poll,block] [--skip-queries]

BENCH_VERBOSE=1 also prints the slowest delivery of each event;
BENCH_PROFILE=/tmp/api writes a cProfile of each API process (/tmp/api.plain, /tmp/api.arrow).
DATABASE_URL / KAFKA_BOOTSTRAP use real services instead of the embedded ones.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import asyncpg
import httpx
import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cryptostream.embedded import EmbeddedKafka, EmbeddedPostgres  # noqa: E402
from cryptostream.kafka import ensure_topics, start_producer, wait_for_broker  # noqa: E402
from cryptostream.migrate import upgrade  # noqa: E402
from cryptostream.procs import free_port, raise_open_files  # noqa: E402
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
        create_app(settings, executor=executor, shared_updates=bool(args.shared)),
        "127.0.0.1",
        args.port,
        log_level="warning",
        **({} if args.frames else {"ws": "websockets-sansio"}),  # uvicorn's own: every frame through ASGI
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
    database_url: str,
    executor: str,
    kafka: str = "",
    topic: str = "crypto-candles",
    shared: bool = True,
    frames: bool = True,
) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, __file__, "serve", "--port", str(port), "--database-url", database_url]
    command += ["--executor", executor, "--kafka", kafka, "--topic", topic, "--shared", str(int(shared))]
    command += ["--frames", str(int(frames))]
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


def run_queries(database_url: str, requests: int) -> None:
    print("1,000 x 1 s candles (bucket + OHLCV) over HTTP, sequential requests (ms):")
    baseline = "objects, graphql-core executor (baseline)"
    results: dict[str, tuple[float, float, int]] = {}
    with api_process(database_url, "plain") as url:
        results[baseline] = time_queries(url, QUERIES["objects"], requests)
    with api_process(database_url, "arrow") as url:
        results["objects, column-wise executor"] = time_queries(url, QUERIES["objects"], requests)
        results["columns (candleColumns)"] = time_queries(url, QUERIES["columns"], requests)
    for name, (p50, p99, size) in results.items():
        speedup = results[baseline][0] / p50
        print(f"  {name:44s} p50 {p50:6.2f}  p99 {p99:6.2f}  ({size / 1024:.0f} KiB)  p50 x{speedup:.1f}")
    for name in ("objects, column-wise executor", "columns (candleColumns)"):
        p50, p99, _ = results[name]
        verdict = "met" if p50 <= 15 and p99 <= 40 else "NOT met"
        print(f"  target p50 <= 15 ms, p99 <= 40 ms, {name}: {verdict}")


# ------------------------------------------------------------------------------------------ 2. fan-out
# How each API process of the fan-out runs: (executor, live updates shared per subscription shape, frames
# written straight to the transport)
MODES = {
    "plain": ("plain", False, True),  # graphql-core's executor, strawberry's result path per subscriber
    "arrow": ("arrow", False, True),  # the selection set memoized per event, strawberry's path per subscriber
    "asgi": ("arrow", True, False),  # encoded once per shape, each frame sent through ASGI per socket
    "shared": ("arrow", True, True),  # encoded and framed once, the same bytes written to every socket
}
LABELS = {
    "plain": "per-subscriber execution and send",
    "arrow": "per-subscriber send (baseline)",
    "asgi": "encoded once, sent through ASGI",
    "shared": "encoded once, frames written direct",
}


# How the subscribers' processes wait for frames (``--subscriber-wait``). On loopback the API's ``send()``
# runs the receiver's side too, and when the receiving process sleeps in epoll it pays for waking it: a cost
# no server sending to remote clients has (their machines wake their own processes).
#   poll:  once a frame has woken a subscribers' process, its loop looks for more every 0.5 ms (sleeping in
#          between) instead of sleeping in epoll, until a look finds none: the API's send() wakes each process
#          about once an update, not once a frame. Receipts are stamped up to 0.5 ms late.
#   block: they wait in epoll, as an event loop does by default; each frame sent to a sleeping one wakes it.
NAPS = {"poll": 0.0005, "block": 0.0}


def subscriber_process(ws_url: str, n: int, ready: Any, events: int, out: Any, nap: float = 0.0) -> None:
    """``n`` graphql-transport-ws subscribers in one process; sends back (event, receive time) pairs and
    the number of subscriptions the server ended (dropped)."""
    with asyncio.Runner(loop_factory=_client_loop()) as runner:
        runner.run(_subscribers(ws_url, n, ready, events, out, nap))


def _client_loop() -> Any:
    """uvloop's event loop where there is one (the API runs on it too): the subscribers' processes take less
    of the CPU the server on the same two cores needs (2026-12-04: 12.7-13.7 us per delivery against
    16.4-18.7 on asyncio's loop, in runs hours apart)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


class _Subscriber(asyncio.Protocol):
    """One graphql-transport-ws subscriber, as light as a client gets: no task and no queue per connection,
    each message stamped with the time its bytes arrived. websockets' sans-I/O protocol does the handshake
    and every frame the client sends (masked, pongs included); the server's frames (unmasked, unfragmented
    text, pings, a close) are read here, at a third of the CPU of websockets' generic reader. 10,000 of these
    must keep up with the server on the two cores they share with it."""

    def __init__(self, ws_url: str, messages: tuple[str, str], state: dict[str, Any]) -> None:
        from websockets.client import ClientProtocol
        from websockets.typing import Subprotocol
        from websockets.uri import parse_uri

        self.ws = ClientProtocol(parse_uri(f"{ws_url}/graphql"), subprotocols=[Subprotocol(TRANSPORT_WS)])
        self.messages = messages
        self.state = state
        self.transport: asyncio.Transport | None = None
        self.done = asyncio.get_running_loop().create_future()
        self.open = False  # handshake done: frames are read by _read_frames
        self.buffer = b""
        self.doze: _Doze | None = None  # --subscriber-wait poll, once every subscriber is connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport
        self.ws.send_request(self.ws.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if self.doze is not None:
            self.doze.saw()
        if self.open:
            self._read_frames(data, now)
        else:
            self._handshake(data)
        self._flush()

    def _handshake(self, data: bytes) -> None:
        from websockets.http11 import Response

        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Response):
                if event.status_code != 101:
                    self._finish(RuntimeError(f"handshake refused: {event.status_code}"))
                    return
                self.open = True
                self.ws.send_text(self.messages[0].encode())  # connection_init; nothing comes before its ack

    def _read_frames(self, data: bytes, now: float) -> None:
        buffer = self.buffer + data if self.buffer else data
        i, end = 0, len(buffer)
        while end - i >= 2:
            opcode, length, header = buffer[i] & 0x0F, buffer[i + 1] & 0x7F, 2
            if length == 126:
                if end - i < 4:
                    break
                length, header = int.from_bytes(buffer[i + 2 : i + 4], "big"), 4
            elif length == 127:
                if end - i < 10:
                    break
                length, header = int.from_bytes(buffer[i + 2 : i + 10], "big"), 10
            if end - i < header + length:
                break
            if not buffer[i] & 0x80 or buffer[i + 1] & 0x80:
                raise RuntimeError("the bench client reads unmasked, unfragmented server frames only")
            payload = buffer[i + header : i + header + length]
            i += header + length
            if opcode == 0x1:
                self._message(payload, now)
            elif opcode == 0x9:
                self.ws.send_pong(payload)
            elif opcode == 0x8:
                self._finish(None)
        self.buffer = buffer[i:]

    def _message(self, data: bytes, now: float) -> None:
        message = orjson.loads(data)
        kind = message.get("type")
        if kind == "next":
            event = int(message["payload"]["data"]["candles"]["close"])
            self.state["events_seen"].append(event)
            self.state["times"].append(now)
            if event >= self.state["events"]:
                self._finish(None)
        elif kind == "connection_ack":
            self.ws.send_text(self.messages[1].encode())  # subscribe
            self.state["connected"] += 1
            if self.state["connected"] == self.state["n"]:
                self.state["all_connected"].set()
        else:  # error or complete: the server ended this subscription (dropped it)
            self.state["ended"] += 1
            self._finish(None)

    def _flush(self) -> None:
        assert self.transport is not None
        for chunk in self.ws.data_to_send():
            if chunk:
                self.transport.write(chunk)

    def _finish(self, error: BaseException | None) -> None:
        if not self.done.done():
            if error is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(error)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(None)


TRANSPORT_WS = "graphql-transport-ws"


class _Doze:
    """``--subscriber-wait poll``: while frames keep coming, the loop looks for more every ``nap`` seconds
    (a callback always ready keeps it out of epoll) rather than sleeping until the next frame wakes it; after
    a look that found none it sleeps in epoll again, and the next frame wakes it once."""

    __slots__ = ("dozing", "loop", "nap", "seen")

    def __init__(self, loop: asyncio.AbstractEventLoop, nap: float) -> None:
        self.loop = loop
        self.nap = nap
        self.seen = False  # bytes arrived since the last look
        self.dozing = False

    def saw(self) -> None:
        self.seen = True
        if not self.dozing:
            self.dozing = True
            self.loop.call_soon(self._look)

    def _look(self) -> None:
        if not self.seen:
            self.dozing = False
            return
        self.seen = False
        time.sleep(self.nap)
        self.loop.call_soon(self._look)


async def _subscribers(ws_url: str, n: int, ready: Any, events: int, out: Any, nap: float) -> None:
    loop = asyncio.get_running_loop()
    init = orjson.dumps({"type": "connection_init"}).decode()
    subscribe = orjson.dumps(
        {"id": "1", "type": "subscribe", "payload": {"query": SUBSCRIPTION, "variables": {"s": ["BTCUSDT"]}}}
    ).decode()
    state: dict[str, Any] = {
        # each receipt as two machine numbers, not a tuple: no object the collector tracks per delivery
        "events_seen": array("q"),
        "times": array("d"),
        "connected": 0,
        "ended": 0,
        "n": n,
        "events": events,
        "all_connected": asyncio.Event(),
    }
    host, port = ws_url.removeprefix("ws://").rsplit(":", 1)
    clients: list[_Subscriber] = []
    for i in range(n):
        _, client = await loop.create_connection(
            lambda: _Subscriber(ws_url, (init, subscribe), state), host, int(port)
        )
        clients.append(client)
        if i % 100 == 99:
            await asyncio.sleep(0.02)  # do not flood the server's accept queue
    await asyncio.wait_for(state["all_connected"].wait(), 300)
    # A full collection of this process's objects (thousands of connections) takes 300 ms here: one during
    # the run stamps every frame read meanwhile 300 ms late (2026-12-04: the outliers of event 2 and 24 of
    # every 10,000 run, each right after a collection in the subscribers). The connections' objects live
    # until the end, so they leave the collector's generations; what the run allocates is still collected.
    gc.collect()
    gc.freeze()
    if nap:
        doze = _Doze(loop, nap)
        for client in clients:
            client.doze = doze
    ready.set()
    cpu = time.process_time()
    try:
        await asyncio.wait_for(asyncio.gather(*(c.done for c in clients)), 300)
    finally:
        used = time.process_time() - cpu
        received = list(zip(state["events_seen"], state["times"], strict=True))
        out.put((received, state["ended"], used))
        for c in clients:
            if c.transport is not None:
                c.transport.close()


def send_floor(nap: float, sockets: int = 2_000, size: int = 300, rounds: int = 20) -> float:
    """The kernel's part of a delivery on this machine, in this run: CPU microseconds (user + system) per
    ``send()`` of a ``size``-byte frame to each of ``sockets`` loopback sockets read by another process that
    waits for them as the subscribers' processes do (``nap``: see :data:`NAPS`). On loopback the sender's
    ``send()`` also runs the receiver's TCP (and wakes it, if it sleeps in epoll); nothing the API does per
    delivery can cost less."""
    with socket.create_server(("127.0.0.1", 0), backlog=sockets) as listener:
        ready, stop = mp.Event(), mp.Event()
        reader = mp.Process(target=_drain, args=(listener.getsockname()[1], sockets, ready, stop, nap))
        reader.start()
        try:
            peers = [listener.accept()[0] for _ in range(sockets)]
            ready.wait(60)
            frame = bytes(size)
            samples = []
            for _ in range(rounds):
                started = time.process_time()
                for peer in peers:
                    peer.send(frame)
                samples.append((time.process_time() - started) / sockets * 1e6)
                time.sleep(0.05)  # the reader catches up: every send finds it waiting
            for peer in peers:
                peer.close()
            return statistics.median(samples)
        finally:
            stop.set()
            reader.join(10)


def _drain(port: int, sockets: int, ready: Any, stop: Any, nap: float) -> None:
    """The floor's reader: ``sockets`` connections, every byte read as it comes, waiting in epoll (``nap``
    0) or, once woken, looking every ``nap`` seconds until a look finds nothing (as :class:`_Doze`)."""
    import selectors

    selector = selectors.DefaultSelector()
    for _ in range(sockets):
        conn = socket.create_connection(("127.0.0.1", port))
        conn.setblocking(False)
        selector.register(conn, selectors.EVENT_READ)
    ready.set()
    looking = False
    while not stop.is_set():
        if looking:
            time.sleep(nap)
        ready_keys = selector.select(0 if looking else 0.2)
        looking = bool(nap and ready_keys)
        for key, _ in ready_keys:
            try:
                if not key.fileobj.recv(65536):  # type: ignore[union-attr]
                    selector.unregister(key.fileobj)
            except OSError:
                selector.unregister(key.fileobj)


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


class Fanout(NamedTuple):
    p50: float
    p99: float
    deliveries: int
    expected: int
    ended: int  # subscriptions the server ended (dropped for falling behind)
    cpu_us: float  # API process CPU per delivery
    client_us: float  # the subscriber processes' CPU per delivery (from subscribed to done)


def time_fanout(
    url: str, bootstrap: str, topic: str, subscribers: int, events: int, clients: int, nap: float
) -> Fanout:
    ctx = mp.get_context("spawn")
    ready = [ctx.Event() for _ in range(clients)]
    out = ctx.Queue()
    shares = [subscribers // clients + (i < subscribers % clients) for i in range(clients)]
    ws_url = url.replace("http://", "ws://")
    procs = [
        ctx.Process(
            target=subscriber_process, args=(ws_url, shares[i], ready[i], events, out, nap), daemon=True
        )
        for i in range(clients)
    ]
    for p in procs:
        p.start()
    for event in ready:
        if not event.wait(300):
            raise RuntimeError("subscribers did not connect within 300 s")
    deadline = time.monotonic() + 300  # 10,000 subscriptions take the API a while to set up
    while _registered(url) < subscribers:
        if time.monotonic() > deadline:
            raise RuntimeError("the API did not register every subscriber")
        time.sleep(0.5)
    time.sleep(1)  # let the connection burst settle
    server = _server_pid(url)
    cpu_before = _cpu_seconds(server)
    sent = asyncio.run(_produce(bootstrap, topic, events, interval=0.25))
    received: list[tuple[int, float]] = []
    ended = 0
    client_cpu = 0.0
    for _ in procs:
        got, stopped, used = out.get(timeout=300)
        received.extend(got)
        ended += stopped
        client_cpu += used
    cpu = _cpu_seconds(server) - cpu_before
    for p in procs:
        p.join(30)
    latencies = [(t - sent[e]) * 1000 for e, t in received if e in sent]
    p50, p99 = percentiles(latencies)
    if os.environ.get("BENCH_VERBOSE"):
        by_event: dict[int, list[float]] = {}
        for e, t in received:
            by_event.setdefault(e, []).append((t - sent[e]) * 1000)
        print(
            "    per event, first-last: "
            + " ".join(f"{e}:{min(v):.0f}-{max(v):.0f}" for e, v in sorted(by_event.items()))
        )
    per = 1e6 / max(1, len(received))
    return Fanout(p50, p99, len(latencies), subscribers * events, ended, cpu * per, client_cpu * per)


def _registered(url: str) -> int:
    try:
        return int(httpx.get(f"{url}/health", timeout=30).json()["subscribers"])
    except httpx.TimeoutException:  # busy setting up subscriptions
        return 0


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
    child.add_argument("--shared", type=int, default=1)
    child.add_argument("--frames", type=int, default=1)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--subscribers", type=int, default=2000)
    parser.add_argument("--events", type=int, default=40)
    parser.add_argument("--fanout", default="arrow,asgi,shared", help=f"fan-out modes: {', '.join(MODES)}")
    parser.add_argument("--runs", type=int, default=1, help="fan-out runs per mode")
    parser.add_argument("--clients", type=int, default=2, help="subscriber client processes")
    parser.add_argument(
        "--subscriber-wait",
        default="poll",
        help="how the subscribers' processes wait for frames, comma-separated: poll (once woken, they look "
        "every 0.5 ms until none come: the API's send() wakes them about once an update, not once a frame; "
        "receipts up to 0.5 ms late), block (asleep in epoll: a send to a sleeping one wakes it)",
    )
    parser.add_argument("--target", type=float, default=0, help="p99 target (ms); default by --subscribers")
    parser.add_argument("--skip-queries", action="store_true", help="run the fan-out only")
    args = parser.parse_args()
    if args.role == "serve":
        serve(args)
        return
    waits = args.subscriber_wait.split(",")
    if unknown := [w for w in waits if w not in NAPS]:  # before the services start, not after
        parser.error(f"--subscriber-wait: {', '.join(unknown)}? (poll, block)")
    # the API, its subscribers and the floor's reader inherit it: a socket per subscriber on each side
    files = 2 * max(args.subscribers, 2_000) + 4_096
    soft, _ = raise_open_files(files)
    if 0 <= soft < files:
        print(f"open files are limited to {soft} here: fewer subscribers than asked may connect (ulimit -Hn)")

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

        if not args.skip_queries:
            run_queries(database_url, args.requests)

        print(
            f"\nFan-out: {args.subscribers} subscribers, one API process, {args.events} candles at 4/s, "
            f"{args.runs} run(s) per mode (ms; CPU = the API process's per delivery):"
        )
        floors = {wait: send_floor(NAPS[wait]) for wait in waits}
        for wait, floor in floors.items():
            print(
                f"  the floor, this run, subscribers {wait}: {floor:.1f} us of CPU per send() of a 300-byte "
                "frame to 2,000 loopback sockets read by another process (the kernel's part of a delivery)"
            )
        fan: dict[tuple[str, str], list[Fanout]] = {}
        for run in range(args.runs):
            for wait in waits:
                for mode in args.fanout.split(","):
                    executor, shared, frames = MODES[mode]
                    topic = f"bench-candles-{mode}-{wait}-{run}-{int(time.time())}"
                    asyncio.run(
                        ensure_topics(load_settings(kafka_bootstrap=bootstrap, kafka_candles_topic=topic))
                    )
                    with api_process(
                        database_url, executor, kafka=bootstrap, topic=topic, shared=shared, frames=frames
                    ) as url:
                        r = time_fanout(
                            url, bootstrap, topic, args.subscribers, args.events, args.clients, NAPS[wait]
                        )
                    fan.setdefault((mode, wait), []).append(r)
                    print(
                        f"  run {run + 1} {LABELS[mode]:36s} {wait:5s} p50 {r.p50:7.1f}  p99 {r.p99:7.1f}  "
                        f"CPU {r.cpu_us:5.1f} us (clients {r.client_us:4.1f})  "
                        f"({r.deliveries}/{r.expected} deliveries, {r.ended} dropped)",
                        flush=True,
                    )
        target = args.target if args.target else (200.0 if args.subscribers > 2000 else 50.0)
        for (mode, wait), runs in fan.items():
            worst = max(r.p99 for r in runs)
            cpu = statistics.median(r.cpu_us for r in runs)
            verdict = "met" if worst <= target and all(r.ended == 0 for r in runs) else "NOT met"
            p99s = " ".join(f"{r.p99:.0f}" for r in runs)
            print(
                f"  {LABELS[mode]}, subscribers {wait}: p99 per run {p99s}; "
                f"median CPU {cpu:.1f} us/delivery ({cpu / floors[wait]:.1f}x the send() floor); "
                f"target p99 <= {target:.0f} ms in every run: {verdict}"
            )


if __name__ == "__main__":
    main()
