"""The original project's REST and Plotly routes under load, with the previous serializer as the baseline.

Seeds the embedded PostgreSQL with 3 symbols x ``--hours`` of 1 s candles and volatility, runs the API under
uvicorn on loopback in its own process, and drives the original README's routes with their parameters
(``/api/ohlc/`` with limits 100-5000 and a date range, ``/api/ohlc/latest``, ``/api/volatility/``,
``/api/symbols``, the five ``/api/viz/*`` figures at 500 points, ``/health``) from ``--users`` concurrent
clients without think time for ``--duration`` seconds. Another process polls ``/health`` at a steady
rate meanwhile. Both run in their own processes so the client's CPU is not the server's; on a 2-core
machine they still share the cores. The same poller also polls an empty ASGI app under the same uvicorn
options in a process of its own (:func:`empty_app`, "the floor"): what the machine's load alone adds to a
poll, which the API cannot beat. The API's figure over the floor's is what the API itself adds.

Modes, same run, same data: ``cached``, the API as it ships (answers kept for ``API_CACHE_SECONDS`` = 1 s
and computed once for everyone asking the same); ``columnar``, the same with nothing kept (every request
computed); ``baseline``, nothing kept and the serializers this benchmark replaced, patched in the server
process only (:func:`use_baseline`): a Python dict per row with ``isoformat()`` per time, on the event loop,
and a ``plotly.graph_objects.Figure`` per request with ``update_layout(template="plotly_dark")``.
Targets (issue 16): >= 300 requests/s at 10 users, p95 <= 100 ms, ``/health`` p99 <= 20 ms.

    .venv/bin/python -m bench.bench_rest [--duration 30] [--users 10] [--hours 4]
                                         [--modes baseline,columnar,cached]

DATABASE_URL uses a real server instead of the embedded one (its ohlc_1s and volatility_1s are replaced).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cryptostream.embedded import EmbeddedPostgres  # noqa: E402
from cryptostream.migrate import upgrade  # noqa: E402
from cryptostream.procs import free_port  # noqa: E402
from cryptostream.settings import load_settings  # noqa: E402

T0 = 1_699_992_000_000  # 2023-11-14T20:00:00Z: a few hours stay within one UTC day
DAY = "2023-11-14"
SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
LIMITS = [100, 500, 1000, 5000]
CANDLE_COLUMNS = ["exchange", "symbol", "bucket", "open", "high", "low", "close", "volume"]
CANDLE_COLUMNS += ["trade_count", "vwap", "buy_volume", "sell_volume"]
VOLATILITY_COLUMNS = ["exchange", "symbol", "bucket", "volatility", "window_seconds"]


# ------------------------------------------------------------------------------------------ the mix
def _symbol(r: random.Random) -> dict[str, Any]:
    return {"symbol": r.choice(SYMBOLS)}


# (route name, weight, request maker): the original README's routes with its parameters, limits up to 5000
MIX: list[tuple[str, int, Callable[[random.Random], tuple[str, dict[str, Any]]]]] = [
    ("ohlc", 3, lambda r: ("/api/ohlc/", {**_symbol(r), "limit": r.choice(LIMITS)})),
    (
        "ohlc date range",
        1,
        lambda r: ("/api/ohlc/", {**_symbol(r), "limit": 100, "start_date": DAY, "end_date": DAY}),
    ),
    ("ohlc latest", 2, lambda r: ("/api/ohlc/latest", _symbol(r))),
    ("volatility", 2, lambda r: ("/api/volatility/", {**_symbol(r), "limit": r.choice(LIMITS)})),
    ("symbols", 1, lambda r: ("/api/symbols", {})),
    ("viz candlestick", 1, lambda r: ("/api/viz/candlestick", {**_symbol(r), "limit": 500})),
    ("viz price-line", 1, lambda r: ("/api/viz/price-line", {**_symbol(r), "limit": 500})),
    ("viz volatility", 1, lambda r: ("/api/viz/volatility", {**_symbol(r), "limit": 500})),
    ("viz volume", 1, lambda r: ("/api/viz/volume", {**_symbol(r), "limit": 500})),
    (
        "viz multi-symbol",
        1,
        lambda r: ("/api/viz/multi-symbol", {"symbols": ",".join(r.sample(SYMBOLS, 2)), "limit": 500}),
    ),
    ("health", 1, lambda r: ("/health", {})),
]


# ------------------------------------------------------------------------------------------ baseline
def baseline_rows(table: Any, names: list[str]) -> list[dict[str, Any]]:
    """The REST serializer before issue 16 (``graphql_api/rest.py`` ``_rows``): a dict per row."""
    import pyarrow as pa

    columns: list[list[Any]] = []
    for name in names:
        column = table["bucket" if name == "timestamp" else name]
        if pa.types.is_timestamp(column.type):
            columns.append([None if t is None else t.isoformat() for t in column.to_pylist()])
        else:
            columns.append(column.to_pylist())
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]


def baseline_figure(kind: str, *args: Any) -> Any:
    """The figures before issue 16 (``graphql_api/viz.py``): a Plotly ``Figure`` built per request."""
    import plotly.graph_objects as go

    from graphql_api.viz import COLORS

    def x(t: Any) -> list[Any]:
        return [b.isoformat() for b in t["bucket"].to_pylist()]

    def dark(fig: Any, title: str, y_title: str, height: int, **more: Any) -> Any:
        fig.update_layout(
            title=title,
            xaxis_title="Time",
            yaxis_title=y_title,
            template="plotly_dark",
            height=height,
            **more,
        )
        return fig

    fig = go.Figure()
    if kind == "multi_symbol_figure":
        for i, (label, t) in enumerate(args[0].items()):
            if t.num_rows:
                line = {"color": COLORS[i % len(COLORS)], "width": 2}
                fig.add_trace(
                    go.Scatter(x=x(t), y=t["close"].to_pylist(), mode="lines", name=label, line=line)
                )
        return dark(fig, "Multi-Symbol Price Comparison", "Price (USD)", 600)
    label, t = args
    if kind == "candlestick_figure":
        ohlc = {k: t[k].to_pylist() for k in ("open", "high", "low", "close")}
        fig = go.Figure(data=[go.Candlestick(x=x(t), **ohlc, name=label)])
        return dark(fig, f"{label} Price Chart (Candlestick)", "Price (USD)", 600)
    if kind == "price_line_figure":
        line = {"color": COLORS[0], "width": 2}
        fig.add_trace(
            go.Scatter(x=x(t), y=t["close"].to_pylist(), mode="lines", name="Close Price", line=line)
        )
        return dark(fig, f"{label} Closing Price Over Time", "Price (USD)", 500)
    if kind == "volume_figure":
        fig.add_trace(go.Bar(x=x(t), y=t["volume"].to_pylist(), name="Volume", marker_color=COLORS[2]))
        return dark(fig, f"{label} Trading Volume", "Volume", 400)
    fig.add_trace(
        go.Scatter(
            x=x(t),
            y=t["volatility"].to_pylist(),
            mode="lines",
            name="Volatility",
            fill="tozeroy",
            line={"color": COLORS[1], "width": 2},
            hovertemplate="<b>%{fullData.name}</b><br>Time: %{x}<br>Volatility: %{y:.6f}<br><extra></extra>",
        )
    )
    return dark(
        fig, f"{label} Volatility Over Time", "Volatility (Std of Log Returns)", 500, hovermode="x unified"
    )


def use_baseline() -> None:
    """Put the previous serializers back, in this (server) process only: the routes look both up by name."""
    from fastapi.responses import Response

    from graphql_api import rest, viz

    async def encode_rows(table: Any, names: list[str]) -> Any:
        return baseline_rows(table, names)  # serialized by orjson with the envelope, as before

    async def figure_response(build: Callable[..., Any], *args: Any, rows: int) -> Response:
        return Response(baseline_figure(build.__name__, *args).to_json(), media_type="application/json")

    rest.encode_rows = encode_rows  # type: ignore[assignment]
    viz.figure_response = figure_response  # type: ignore[assignment]


# ------------------------------------------------------------------------------------------ server child
async def empty_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The floor: an ASGI app that answers every request at once with a fixed body, under the same uvicorn
    options as the API. What the machine's load alone adds to a poll of it, the API cannot do better than."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b'{"status":"healthy"}'})


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from graphql_api.app import create_app
    from graphql_api.server import uvicorn_config

    if args.mode == "floor":
        config = uvicorn_config(empty_app, "127.0.0.1", args.port, log_level="warning")  # type: ignore[arg-type]
        uvicorn.Server(config).run()
        return
    if args.mode == "baseline":
        use_baseline()
    cache = 1.0 if args.mode == "cached" else 0.0  # the default API_CACHE_SECONDS, or nothing kept
    settings = load_settings(
        database_url=args.database_url, kafka_bootstrap=None, log_level="WARNING", api_cache_seconds=cache
    )
    uvicorn.Server(uvicorn_config(create_app(settings), "127.0.0.1", args.port, log_level="warning")).run()


@contextlib.contextmanager
def api_process(database_url: str, mode: str) -> Iterator[tuple[str, int]]:
    port = free_port()
    command = [sys.executable, "-m", "bench.bench_rest", "serve", "--port", str(port)]
    child = subprocess.Popen([*command, "--database-url", database_url, "--mode", mode], cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if child.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the API process did not start")
            time.sleep(0.2)
        yield url, child.pid
    finally:
        child.terminate()
        child.wait(30)


# ------------------------------------------------------------------------------------------ data
async def seed(dsn: str, hours: float) -> int:
    """``hours`` of 1 s candles and volatility per symbol on binance (a random walk each)."""
    n = int(hours * 3600)
    rng = np.random.default_rng(7)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("TRUNCATE ohlc_1s, volatility_1s")
        for start, symbol in zip((65_000.0, 3_500.0, 150.0), SYMBOLS, strict=True):
            close = start * np.exp(np.cumsum(rng.normal(0, 2e-4, n)))
            open_ = np.concatenate([[start], close[:-1]])
            spread = np.abs(rng.normal(0, start * 1e-4, n))
            volume = rng.lognormal(0, 1, n)
            trades = rng.integers(1, 50, n)
            buckets = [datetime.fromtimestamp((T0 + i * 1000) / 1000, tz=UTC) for i in range(n)]
            candles = [
                (
                    "binance",
                    symbol,
                    buckets[i],
                    o,
                    max(o, c) + s,
                    min(o, c) - s,
                    c,
                    v,
                    t,
                    (o + c) / 2,
                    v / 2,
                    v / 2,
                )
                for i, (o, c, s, v, t) in enumerate(
                    zip(
                        open_.tolist(),
                        close.tolist(),
                        spread.tolist(),
                        volume.tolist(),
                        trades.tolist(),
                        strict=True,
                    )
                )
            ]
            await conn.copy_records_to_table("ohlc_1s", records=candles, columns=CANDLE_COLUMNS)
            vol = np.abs(rng.normal(2e-4, 5e-5, n)).tolist()
            rows = [("binance", symbol, buckets[i], vol[i], 60) for i in range(n)]
            await conn.copy_records_to_table("volatility_1s", records=rows, columns=VOLATILITY_COLUMNS)
    finally:
        await conn.close()
    return n


# ------------------------------------------------------------------------------------------ load
def load_process(url: str, users: int, warmup: float, duration: float, out: Any) -> None:
    out.put(asyncio.run(_load(url, users, warmup, duration)))


async def _load(url: str, users: int, warmup: float, duration: float) -> dict[str, Any]:
    names, weights = [m[0] for m in MIX], [m[1] for m in MIX]
    makers = {m[0]: m[2] for m in MIX}
    samples: dict[str, list[float]] = {name: [] for name in names}
    errors: dict[str, int] = {}
    begin = time.perf_counter() + warmup
    end = begin + duration

    async def user(seed: int) -> None:
        r = random.Random(seed)
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
            while True:
                name = r.choices(names, weights)[0]
                path, params = makers[name](r)
                started = time.perf_counter()
                if started >= end:
                    return
                response = await client.get(path, params=params)
                body = response.content
                done = time.perf_counter()
                if response.status_code != 200 or not body:
                    errors[name] = errors.get(name, 0) + 1
                elif started >= begin:
                    samples[name].append((done - started) * 1000)

    await asyncio.gather(*(user(i) for i in range(users)))
    return {"samples": samples, "errors": errors}


def health_process(urls: list[str], rate: float, warmup: float, duration: float, out: Any) -> None:
    """Polls ``/health`` of each of ``urls`` at ``rate``, the polls of one half a period after the other's."""

    async def both() -> list[list[float]]:
        return await asyncio.gather(
            *(_health(url, rate, warmup, duration, i / (rate * len(urls))) for i, url in enumerate(urls))
        )

    out.put(asyncio.run(both()))


async def _health(url: str, rate: float, warmup: float, duration: float, offset: float) -> list[float]:
    samples: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        begin = time.perf_counter() + warmup
        tick = begin - warmup + offset
        while tick < begin + duration:
            tick += 1 / rate
            await asyncio.sleep(max(0.0, tick - time.perf_counter()))
            started = time.perf_counter()
            response = await client.get("/health")
            response.read()
            if started >= begin:
                samples.append((time.perf_counter() - started) * 1000)
    return samples


def pct(samples: list[float], q: float) -> float:
    return float(np.percentile(samples, q)) if samples else float("nan")


def run_load(url: str, pid: int, floor: str, args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    out_load, out_health = ctx.Queue(), ctx.Queue()
    load = ctx.Process(target=load_process, args=(url, args.users, args.warmup, args.duration, out_load))
    health = ctx.Process(
        target=health_process,
        args=([url, floor], args.health_rate, args.warmup, args.duration, out_health),
    )
    server = psutil.Process(pid)
    load.start()
    health.start()
    time.sleep(args.warmup)
    cpu = server.cpu_times()
    result = out_load.get(timeout=args.warmup + args.duration + 300)
    cpu_after = server.cpu_times()
    result["health"], result["floor"] = out_health.get(timeout=120)
    load.join(30)
    health.join(30)
    result["cpu"] = cpu_after.user + cpu_after.system - cpu.user - cpu.system
    return result


def report(mode: str, result: dict[str, Any], duration: float) -> dict[str, float]:
    samples: dict[str, list[float]] = result["samples"]
    every = [v for s in samples.values() for v in s]
    rate = len(every) / duration
    print(f"\n{mode}: {len(every):,} requests in {duration:.0f} s = {rate:.0f} requests/s", end="")
    print(f"; API process CPU {result['cpu'] / max(1, len(every)) * 1000:.2f} ms per request")
    if result["errors"]:
        print(f"  errors: {result['errors']}")
    print(f"  {'route':18s} {'n':>6s} {'p50':>7s} {'p95':>7s} {'p99':>7s}  (ms)")
    for name, s in [*samples.items(), ("all", every)]:
        print(f"  {name:18s} {len(s):6d} {pct(s, 50):7.1f} {pct(s, 95):7.1f} {pct(s, 99):7.1f}")
    health, floor = result["health"], result["floor"]
    print(
        f"  /health polled alongside: n {len(health)}, "
        f"p50 {pct(health, 50):.1f}, p99 {pct(health, 99):.1f} ms; the floor (an empty uvicorn app "
        f"polled the same way meanwhile): p50 {pct(floor, 50):.1f}, p99 {pct(floor, 99):.1f} ms"
    )
    return {
        "rate": rate,
        "p95": pct(every, 95),
        "p99": pct(every, 99),
        "health99": pct(health, 99),
        "floor99": pct(floor, 99),
    }


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    sub = parser.add_subparsers(dest="role")
    child = sub.add_parser("serve")
    child.add_argument("--port", type=int, required=True)
    child.add_argument("--database-url", required=True)
    child.add_argument("--mode", choices=["baseline", "columnar", "cached", "floor"], default="cached")
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds per mode")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before")
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--hours", type=float, default=4.0, help="hours of 1 s candles per symbol")
    parser.add_argument("--health-rate", type=float, default=20.0, help="/health polls per second")
    parser.add_argument("--modes", default="baseline,columnar,cached")
    args = parser.parse_args()
    if args.role == "serve":
        serve(args)
        return

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        database_url = os.environ.get("DATABASE_URL")
        if not database_url:
            database_url = stack.enter_context(EmbeddedPostgres(Path(tmp) / "pg", fast_unsafe=True)).url
        upgrade(database_url)
        n = asyncio.run(seed(database_url, args.hours))
        print(
            f"{len(SYMBOLS)} symbols x {n:,} 1 s candles + volatility; "
            f"{args.users} users without think time, "
            f"{args.duration:.0f} s per mode; /health polled {args.health_rate:.0f}/s by another process"
        )
        figures: dict[str, dict[str, float]] = {}
        for mode in args.modes.split(","):
            with api_process(database_url, mode) as (url, pid), api_process("-", "floor") as (floor, _):
                figures[mode] = report(mode, run_load(url, pid, floor, args), args.duration)
        if "baseline" in figures:
            base = figures["baseline"]
            for mode in ("columnar", "cached"):
                if mode in figures:
                    ours = figures[mode]
                    print(
                        f"\n{mode} vs baseline: requests/s x{ours['rate'] / base['rate']:.1f}, "
                        f"p95 x{base['p95'] / ours['p95']:.1f} lower, "
                        f"p99 x{base['p99'] / ours['p99']:.1f} lower, "
                        f"/health p99 x{base['health99'] / ours['health99']:.1f} lower"
                    )
        for mode in ("columnar", "cached"):
            if mode not in figures:
                continue
            ours = figures[mode]
            print(f"targets, {mode}:")
            for label, ok in (
                (f">= 300 requests/s ({ours['rate']:.0f})", ours["rate"] >= 300),
                (f"p95 <= 100 ms ({ours['p95']:.1f})", ours["p95"] <= 100),
                (f"/health p99 <= 20 ms ({ours['health99']:.1f})", ours["health99"] <= 20),
            ):
                print(f"  {label}: {'met' if ok else 'NOT met'}")
            print(f"  (the floor's p99 in the same run: {ours['floor99']:.1f} ms)")


if __name__ == "__main__":
    main()
