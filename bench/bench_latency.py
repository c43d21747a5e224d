"""Speed of truth: how long after its second ends a closed 1 s candle reaches a live subscriber.

Runs ``cryptostream up --source synthetic`` as a user would (embedded broker and database, ingest,
processor, API as child processes) and subscribes to the closed 1 s candles of every symbol over the API's
GraphQL WebSocket (graphql-transport-ws). For each closed candle: receipt time minus the end of its second
(bucket + 1 s), on this machine's clock, which every process shares.

Two configurations, in the same run:

* **progress** (the default): the source writes how far its event time is complete every
  PROGRESS_INTERVAL_MS, so a second closes as soon as the source says it is over.
* **baseline, no progress**: the source's progress is pushed out beyond the run (PROGRESS_INTERVAL_MS=60000
  and a run shorter than that), so windows close on the trade watermark, MAX_BUFFER_SECONDS (5 s) behind
  the newest trade: the only way a fixed-buffer pipeline can close them without reading a clock.

Target (issue 13): p99 <= 1.5 s with progress.

    .venv/bin/python bench/bench_latency.py [--seconds 40] [--rate 50]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import orjson
import websockets

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cryptostream.procs import free_port  # noqa: E402

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
QUERY = "subscription ($s: [String!]!) { candles(symbols: $s) { exchange symbol bucket closed } }"
TARGET_P99_S = 1.5


async def wait_ready(api: str, deadline: float) -> None:
    async with httpx.AsyncClient(timeout=2) as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                health = (await http.get(f"{api}/health")).json()
                if health.get("live_feed"):
                    return
            await asyncio.sleep(0.5)
    raise RuntimeError(f"{api} did not come up")


async def measure(port: int, seconds: float, warmup: float) -> list[float]:
    """Delays (s) of closed candles received during ``seconds`` after ``warmup`` seconds."""
    delays: list[float] = []
    url = f"ws://127.0.0.1:{port}/graphql"
    async with websockets.connect(url, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        await ws.send(orjson.dumps({"type": "connection_init"}).decode())
        assert orjson.loads(await ws.recv())["type"] == "connection_ack"
        payload = {"query": QUERY, "variables": {"s": SYMBOLS}}
        await ws.send(orjson.dumps({"id": "1", "type": "subscribe", "payload": payload}).decode())
        start = time.monotonic()
        while time.monotonic() - start < warmup + seconds:
            try:
                raw = await asyncio.wait_for(ws.recv(), timeout=1.0)
            except TimeoutError:
                continue
            received = time.time()
            message = orjson.loads(raw)
            if message.get("type") != "next":
                continue
            candle = message["payload"]["data"]["candles"]
            if candle["closed"] and time.monotonic() - start >= warmup:
                end = datetime.fromisoformat(candle["bucket"]).timestamp() + 1.0
                delays.append(received - end)
    return delays


def run_up(env: dict[str, str], seconds: float, warmup: float, rate: float) -> list[float]:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        run_env = {
            **env,
            "STATE_DIR": f"{tmp}/state",
            "OUTPUT_DIR": f"{tmp}/outputs",
            "MODEL_DIR": f"{tmp}/models",
            "LOG_LEVEL": "WARNING",
        }
        argv = [sys.executable, "-m", "cryptostream", "up", "--source", "synthetic", "--port", str(port)]
        argv += ["--symbols", ",".join(SYMBOLS), "--rate", str(rate)]
        proc = subprocess.Popen(argv, env=run_env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            asyncio.run(wait_ready(f"http://127.0.0.1:{port}", time.monotonic() + 120))
            return asyncio.run(measure(port, seconds, warmup))
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


def summary(name: str, delays: list[float]) -> tuple[float, float]:
    a = np.asarray(delays)
    p50, p95, p99 = (float(np.percentile(a, q)) for q in (50, 95, 99))
    print(f"{name:<40} {len(a):>7} {p50:>8.3f} {p95:>8.3f} {p99:>8.3f} {a.max():>8.3f}")
    return p50, p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=40.0, help="measured seconds per configuration")
    parser.add_argument("--warmup", type=float, default=8.0, help="seconds ignored at the start")
    parser.add_argument("--rate", type=float, default=50.0, help="synthetic trades per second")
    args = parser.parse_args()
    if args.seconds + args.warmup >= 55:
        parser.error("--seconds + --warmup must stay under 55: the baseline's progress comes after 60 s")
    base_env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP", "DATABASE_URL")}
    print(f"closed 1 s candles of {len(SYMBOLS)} symbols at {args.rate:g} trades/s, {args.seconds:g} s each")
    print(f"{'configuration':<40} {'candles':>7} {'p50 s':>8} {'p95 s':>8} {'p99 s':>8} {'max s':>8}")
    progress = run_up(base_env, args.seconds, args.warmup, args.rate)
    p50, p99 = summary("progress (default, every 200 ms)", progress)
    baseline = run_up({**base_env, "PROGRESS_INTERVAL_MS": "60000"}, args.seconds, args.warmup, args.rate)
    b50, b99 = summary("baseline: trade watermark, 5 s buffer", baseline)
    print(f"p50 {b50 / p50:.1f}x and p99 {b99 / p99:.1f}x faster than the baseline")
    print(f"target p99 <= {TARGET_P99_S} s: {'met' if p99 <= TARGET_P99_S else 'NOT met'}")


if __name__ == "__main__":
    main()
