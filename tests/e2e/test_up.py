"""`cryptostream up`: one command runs the whole pipeline; Ctrl+C stops it all; a next run keeps the data."""

from __future__ import annotations

import time
import urllib.request
from datetime import datetime
from pathlib import Path

import httpx
import orjson
import psutil
import pytest

from cryptostream import archive
from cryptostream.models import Trade
from tests.reference import assert_candles_equal, batch_candles, rows_by_key

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
CANDLES = """query($s: String!) { candles(symbol: $s, limit: 10000) {
  exchange symbol bucket open high low close volume tradeCount vwap buyVolume sellVolume } }"""


def _api_candles(pipeline, symbol: str) -> list[dict]:
    rows = pipeline.graphql(CANDLES, s=symbol)["candles"]
    return [
        {
            "exchange": r["exchange"],
            "symbol": r["symbol"],
            "bucket": datetime.fromisoformat(r["bucket"]),
            "open": r["open"],
            "high": r["high"],
            "low": r["low"],
            "close": r["close"],
            "volume": r["volume"],
            "trade_count": r["tradeCount"],
            "vwap": r["vwap"],
            "buy_volume": r["buyVolume"],
            "sell_volume": r["sellVolume"],
        }
        for r in rows
    ]


def _recorded(path) -> list[Trade]:
    return [Trade(**orjson.loads(line)) for line in path.read_bytes().splitlines()]


def test_up_serves_exact_candles_stops_every_child_and_a_second_run_keeps_them(start_pipeline, tmp_path):
    record = tmp_path / "run1.jsonl"
    first = start_pipeline("--source", "synthetic", "--rate", "150", "--record", str(record))
    first.wait_until(lambda: "pipeline up" in first.tail(100_000), 60, '"pipeline up" said')
    with urllib.request.urlopen(f"{first.url}/", timeout=10) as page:  # once: the link works when said
        assert page.status == 200 and b"<html" in page.read().lower()
    took = first.wait_until(
        lambda: all(_api_candles(first, s) for s in SYMBOLS),
        30,
        "candles for every default symbol over GraphQL",
    )
    print(f"first candles served {took:.1f}s after start")
    first.wait_until(lambda: len(_api_candles(first, "BTCUSDT")) >= 5, 30, "a few seconds of candles")
    children = first.descendants()
    assert len(children) >= 5, [c.cmdline() for c in children]  # broker, postgres (+ its workers), 3 roles
    assert first.interrupt() == 0, first.tail()
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"orphans after Ctrl+C: {[p.cmdline() for p in alive]}"

    trades = _recorded(record)
    expected = batch_candles(trades)
    assert len(trades) > 300 and {s for _, s, _ in expected} == set(SYMBOLS)
    assert {e for e, _, _ in expected} == {"synthetic"}  # the demo market is a venue of its own

    second = start_pipeline("--source", "synthetic", "--rate", "20")
    second.wait_until(
        lambda: second.graphql("{ symbols }")["symbols"] == SYMBOLS, 30, "the API of the second run"
    )
    stored = rows_by_key(row for s in SYMBOLS for row in _api_candles(second, s))
    last_bucket = max(bucket for _, _, bucket in expected)
    first_run = {key: row for key, row in stored.items() if key[2] <= last_bucket}
    # nothing missing (the first run's last second was closed by its final progress), nothing extra, exact
    assert_candles_equal(first_run, expected)
    assert second.interrupt() == 0, second.tail()
    # the broker forgot its log: the second run is a new lineage, found as such, with nothing guessed
    log = second.tail(200_000)
    assert "new lineage" in log and "without window state" not in log and "no checkpoint" not in log


def test_up_restarts_a_role_that_crashes_and_the_candles_stay_exact(start_pipeline, tmp_path):
    record = tmp_path / "trades.jsonl"
    pipeline = start_pipeline("--source", "synthetic", "--rate", "100", "--record", str(record))
    pipeline.wait_until(lambda: len(_api_candles(pipeline, "BTCUSDT")) >= 3, 40, "first candles")

    def processor() -> psutil.Process | None:
        for proc in pipeline.descendants():
            try:
                if proc.status() != psutil.STATUS_ZOMBIE and proc.cmdline()[-1:] == ["process"]:
                    return proc
            except psutil.Error:
                continue
        return None

    first = processor()
    assert first is not None
    first.kill()  # SIGKILL: no final checkpoint, no goodbye to the group
    pipeline.wait_until(lambda: (p := processor()) is not None and p.pid != first.pid, 30, "a new processor")
    assert "process exited with -9; restarting" in pipeline.tail(20_000)
    count = len(_api_candles(pipeline, "BTCUSDT"))
    pipeline.wait_until(
        lambda: len(_api_candles(pipeline, "BTCUSDT")) > count + 2, 60, "candles after the restart"
    )
    assert pipeline.interrupt() == 0, pipeline.tail()

    expected = batch_candles(_recorded(record))
    second = start_pipeline("--source", "synthetic", "--rate", "5")
    second.wait_until(lambda: bool(second.graphql("{ symbols }")["symbols"]), 30, "the API")
    stored = rows_by_key(row for s in SYMBOLS for row in _api_candles(second, s))
    last_bucket = max(bucket for _, _, bucket in expected)
    assert_candles_equal({k: r for k, r in stored.items() if k[2] <= last_bucket}, expected)
    assert second.interrupt() == 0


def test_up_started_with_sigint_ignored_still_stops_cleanly_on_sigint(start_pipeline):
    """A script's background job (`make test &`) inherits SIGINT ignored; Ctrl+C / kill -INT must work."""
    pipeline = start_pipeline("--source", "synthetic", "--rate", "20", sigint_ignored=True)
    pipeline.wait_until(
        lambda: pipeline.graphql("{ symbols }")["symbols"] == SYMBOLS, 60, "the API of the pipeline"
    )
    children = pipeline.descendants()
    assert pipeline.interrupt(timeout=60) == 0, pipeline.tail()
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"orphans after SIGINT: {[p.cmdline() for p in alive]}"
    log = pipeline.tail(200_000)
    # a clean stop reads as one (no exit codes); the broker's lack of idempotence is said once at most
    assert "serve stopped\n" in log and "stopped (exit" not in log and "stopped with exit" not in log, log
    assert log.count("idempotent producer") <= 1, log


def test_up_s_port_option_wins_over_an_api_port_in_the_environment(start_pipeline, pipeline_env):
    """``--port`` overrides API_PORT: an unusable one in the environment is not read. It was, late, by a
    second reading of the settings, after the broker and PostgreSQL had started (a newcomer's report)."""
    pipeline_env["API_PORT"] = "not-a-port"
    pipeline = start_pipeline("--source", "synthetic", "--rate", "20")
    pipeline.wait_until(
        lambda: pipeline.graphql("{ symbols }")["symbols"] == SYMBOLS, 60, "the API on the --port given"
    )
    assert pipeline.interrupt(timeout=60) == 0, pipeline.tail()


def test_up_interrupted_while_it_starts_says_so_and_leaves_nothing_running(start_pipeline):
    """Ctrl+C during start-up (here while PostgreSQL's data folder is made, seconds before any role runs)
    stopped what had started without a word: the log ended at "initializing PostgreSQL data folder"."""
    pipeline = start_pipeline("--source", "synthetic", "--rate", "20")
    deadline = time.monotonic() + 60
    while "initializing PostgreSQL data folder" not in pipeline.tail(100_000):
        assert pipeline.proc.poll() is None and time.monotonic() < deadline, pipeline.tail()
        time.sleep(0.05)
    children = pipeline.descendants()
    assert pipeline.interrupt(timeout=60) == 0, pipeline.tail()
    log = pipeline.tail(100_000)
    assert "interrupted while starting; what had started is stopped; state kept in" in log, log
    assert "Traceback" not in log and "pipeline up" not in log, log
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left running: {[p.cmdline() for p in alive]}"


def test_up_replaying_a_file_serves_it_and_stays_up_after_the_file_ends(
    start_pipeline, pipeline_env, tmp_path
):
    """`up --source replay`: ingest ending at the end of the file is not a crash. It was restarted five times
    (the file replayed again, every copy dead-lettered as late) until `up` gave up and stopped the API."""
    pipeline_env["REPLAY_SPEED"] = "0"
    start_ms = 1_735_689_600_000  # 2025-01-01, the day the dump's name says
    trades = [
        Trade("binance", "BTCUSDT", 100.0 + i % 7, 0.5, start_ms + 200 * i, i + 1, i % 2 == 0)
        for i in range(300)
    ]
    dump = tmp_path / "BTCUSDT-trades-2025-01-01.csv"  # Binance's dump: id,price,qty,quote,time,maker,best
    dump.write_text(
        "".join(
            f"{t.trade_id},{t.price},{t.quantity},{t.price * t.quantity},{t.timestamp},"
            f"{str(t.is_buyer_maker).lower()},true\n"
            for t in trades
        )
    )
    expected = batch_candles(trades)
    pipeline = start_pipeline("--source", "replay", "--path", str(dump))
    pipeline.wait_until(
        lambda: len(_api_candles(pipeline, "BTCUSDT")) == len(expected), 60, "the replayed candles"
    )
    pipeline.wait_until(lambda: "ingest finished" in pipeline.tail(200_000), 30, "ingest finished")
    time.sleep(3)  # past the first restart's delay (2 s): nothing replays the file again
    assert pipeline.proc.poll() is None, pipeline.tail()
    # the file done, its source is finished: healthy, where /health said "replay silent" (degraded) once
    # the ended replay's last report was older than 10 s
    health: dict = {}

    def stale_and_finished() -> bool:
        health.update(httpx.get(f"{pipeline.url}/health", timeout=10).json())
        feeds = [(f["source"], f["state"], f["alive"]) for f in health["feeds"]]
        return feeds == [("replay", "finished", False)]

    pipeline.wait_until(stale_and_finished, 30, "the replay's last report older than 10 s")
    assert health["status"] == "healthy" and health["problems"] == [], health
    assert health["feeds"][0]["trades"] == 300, health
    assert_candles_equal(rows_by_key(_api_candles(pipeline, "BTCUSDT")), expected)
    log = pipeline.tail(200_000)
    assert "restarting" not in log and log.count("replay BTCUSDT-trades-2025-01-01.csv: 300 trades") == 1, log
    assert pipeline.interrupt() == 0, pipeline.tail()


def test_up_stopped_right_after_start_still_keeps_what_it_replayed(start_pipeline, pipeline_env, tmp_path):
    """Ctrl+C just after "pipeline up": ingest had replayed the file, but the processor, stopped before the
    group gave it its partitions, had nothing to read and stored nothing, and the in-memory broker forgot the
    file's trades (a reviewer: 2 of 2 tries, 0 of 207 candles kept). It waits for its partitions first."""
    pipeline_env["REPLAY_SPEED"] = "0"
    start_ms = 1_735_689_600_000
    trades = [
        Trade("binance", "BTCUSDT", 100.0 + i % 7, 0.5, start_ms + 200 * i, i + 1, i % 2 == 0)
        for i in range(300)
    ]
    dump = tmp_path / "BTCUSDT-trades-2025-01-01.csv"
    dump.write_text(
        "".join(
            f"{t.trade_id},{t.price},{t.quantity},{t.price * t.quantity},{t.timestamp},"
            f"{str(t.is_buyer_maker).lower()},true\n"
            for t in trades
        )
    )
    pipeline = start_pipeline("--source", "replay", "--path", str(dump))
    pipeline.wait_until(lambda: "pipeline up" in pipeline.tail(200_000), 60, '"pipeline up" said')
    time.sleep(0.5)
    assert pipeline.interrupt() == 0, pipeline.tail()
    stored = archive.load_candles(Path(pipeline_env["OUTPUT_DIR"]), "binance", "BTCUSDT", limit=None)
    assert_candles_equal(rows_by_key(stored.to_pylist()), batch_candles(trades))
