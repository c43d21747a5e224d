"""``cryptostream import``: the original project's archive, with its split rows, into the database and the
current archive, served with the merged values; twice is the same as once."""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import asyncpg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cryptostream import archive
from cryptostream.store import ArchiveStore, DatabaseStore

pytestmark = pytest.mark.integration

SECOND = datetime(2025, 11, 10, 2, 18, 8, tzinfo=UTC)
MS = int(SECOND.timestamp() * 1000)


def original_file(path: Path, rows: list[tuple[int, float, float, float, float, float]]) -> None:
    """A file as the course project's processor wrote it: pandas' ns timestamps, its seven columns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "timestamp": pa.array([r[0] * 1_000_000 for r in rows], pa.timestamp("ns", tz="UTC")),
            "open": [r[1] for r in rows],
            "high": [r[2] for r in rows],
            "low": [r[3] for r in rows],
            "close": [r[4] for r in rows],
            "volume": [r[5] for r in rows],
            "symbol": ["BTCUSD"] * len(rows),
        }
    )
    pq.write_table(table, path)


@pytest.fixture
def original(tmp_path: Path) -> Path:
    root = tmp_path / "original-outputs"
    day = root / "ohlc" / "symbol=BTCUSD" / "date=2025-11-10"
    # 02:18:08 emitted twice as trades came in; 02:18:09 split across two flushes (two files)
    original_file(day / "part-1.parquet", [
        (MS, 105828.33, 105828.33, 105828.33, 105828.33, 0.000091),
        (MS + 400, 105828.33, 105830.00, 105820.00, 105825.00, 0.5),
        (MS + 1000, 105799.00, 105801.00, 105797.67, 105800.00, 0.2),
    ])  # fmt: skip
    original_file(day / "part-2.parquet", [
        (MS + 1500, 105800.50, 105805.00, 105799.00, 105799.75, 0.039019),
        (MS + 2000, 105799.75, 105799.75, 105799.75, 105799.75, 1.0),
    ])  # fmt: skip
    (day / "notes.parquet").write_bytes(b"not parquet at all")  # skipped with a reason, never a failure
    vol = root / "volatility" / "symbol=BTCUSD" / "date=2025-11-10" / "v.parquet"
    vol.parent.mkdir(parents=True)
    pq.write_table(
        pa.table(
            {
                "timestamp": pa.array(
                    [MS * 1_000_000, (MS + 1000) * 1_000_000], pa.timestamp("ns", tz="UTC")
                ),
                "volatility": [float("nan"), 0.000012],
                "symbol": ["BTCUSD", "BTCUSD"],
            }
        ),
        vol,
    )
    return root


MERGED = {  # bucket offset -> (open, high, low, close, volume)
    0: (105828.33, 105830.00, 105820.00, 105825.00, 0.000091 + 0.5),
    1000: (105799.00, 105805.00, 105797.67, 105799.75, 0.2 + 0.039019),
    2000: (105799.75, 105799.75, 105799.75, 105799.75, 1.0),
}


def run_import(original: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    argv = [
        sys.executable,
        "-m",
        "cryptostream",
        "import",
        str(original),
        "--exchange",
        "Coinbase",
        "--no-progress",
    ]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)


def assert_merged(table: pa.Table) -> None:
    rows = table.to_pylist()
    assert [int(r["bucket"].timestamp() * 1000) - MS for r in rows] == sorted(MERGED)
    for row in rows:
        o, h, lo, c, v = MERGED[int(row["bucket"].timestamp() * 1000) - MS]
        assert (row["exchange"], row["symbol"]) == ("coinbase", "BTCUSD")
        assert (row["open"], row["high"], row["low"], row["close"]) == (o, h, lo, c)
        assert math.isclose(row["volume"], v, rel_tol=1e-12)
        assert row["trade_count"] is None and row["vwap"] is None  # never made up


async def test_the_original_archive_is_imported_merged_and_served(
    original: Path, tmp_path: Path, fresh_postgres: str
):
    from cryptostream.migrate import upgrade

    await asyncio.to_thread(upgrade, fresh_postgres)
    output = tmp_path / "outputs"
    env = {**os.environ, "DATABASE_URL": fresh_postgres, "OUTPUT_DIR": str(output)}
    for _ in range(2):  # importing again rewrites the same rows and files
        done = await asyncio.to_thread(run_import, original, env)
        assert done.returncode == 0, done.stderr[-3000:]
    assert "skipping" in done.stderr and "notes.parquet" in done.stderr
    assert "3 ohlc rows" in done.stderr and "2 volatility rows" in done.stderr
    # the same archive from another path: still one copy (the file was named by the source's path)
    copy = tmp_path / "copy-of-original"
    shutil.copytree(original, copy)
    done = await asyncio.to_thread(run_import, copy, env)
    assert done.returncode == 0, done.stderr[-3000:]

    conn = await asyncpg.connect(fresh_postgres)
    try:
        assert await conn.fetchval("SELECT count(*) FROM ohlc_1s") == 3
        assert await conn.fetchval("SELECT count(*) FROM volatility_1s") == 2
    finally:
        await conn.close()
    files = sorted(p.relative_to(output).as_posix() for p in output.rglob("*.parquet"))
    assert len(files) == 2 and all(f.split("/")[1:3] == ["exchange=coinbase", "symbol=BTCUSD"] for f in files)

    db = await DatabaseStore.connect(fresh_postgres)
    try:
        assert_merged(await db.candles("coinbase", "BTCUSD", limit=10))
        # read as rows (few asked for) and as columns (many): the same, the fields never recorded null
        assert (await db.candles("coinbase", "BTCUSD", limit=1000)).equals(
            await db.candles("coinbase", "BTCUSD", limit=10)
        )
        minute = (await db.candles("coinbase", "BTCUSD", interval="1m", limit=1)).to_pylist()[0]
        assert (minute["open"], minute["close"], minute["trade_count"]) == (105828.33, 105799.75, None)
        assert (await db.candles("coinbase", "BTCUSD", interval="1m", limit=1000)).to_pylist()[-1] == minute
        vol = (await db.volatility("coinbase", "BTCUSD", limit=10)).to_pylist()
        assert math.isnan(vol[0]["volatility"]) and vol[1]["volatility"] == 0.000012
    finally:
        await db.close()
    assert_merged(await ArchiveStore(output).candles("coinbase", "BTCUSD", limit=10))
    # and the folder it came from reads the same in place, as the unknown venue
    in_place = await ArchiveStore(original).candles("unknown", "BTCUSD", limit=10)
    assert_merged(in_place.set_column(0, "exchange", pa.array(["coinbase"] * in_place.num_rows)))


def test_a_folder_s_symbol_is_normalized_and_each_row_lands_in_its_own_day(tmp_path: Path):
    """``symbol=btc-usd`` was imported as the market "btc-usd" (unreachable), a folder named no symbol as
    it was, and rows in a ``date=`` folder of another day under that day (a day-bounded read missed them)."""
    root = tmp_path / "original"
    original_file(root / "ohlc" / "symbol=btc-usd" / "date=2025-11-11" / "part-0.parquet", [
        (MS, 1.0, 2.0, 0.5, 1.5, 1.0),  # 2025-11-10, in the next day's folder
        (MS + 86_400_000, 2.0, 3.0, 1.5, 2.5, 1.0),
    ])  # fmt: skip
    original_file(root / "ohlc" / "symbol=NOT_A-SYMBOL!!" / "date=2025-11-10" / "part-0.parquet", [
        (MS, 1.0, 2.0, 0.5, 1.5, 1.0),
    ])  # fmt: skip
    env = {**os.environ, "OUTPUT_DIR": str(tmp_path / "out")}
    env.pop("DATABASE_URL", None)
    done = run_import(root, env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "skipping" in done.stderr and "NOT_A-SYMBOL!!" in done.stderr
    markets = archive.list_markets(tmp_path / "out")
    assert markets == [("coinbase", "BTCUSD")]
    for day, bucket in ((date(2025, 11, 10), MS), (date(2025, 11, 11), MS + 86_400_000)):
        rows = archive.load_candles(tmp_path / "out", "coinbase", "BTCUSD", start=day, end=day).to_pylist()
        assert [int(r["bucket"].timestamp() * 1000) for r in rows] == [bucket], day


def test_a_folder_without_the_older_layout_is_one_clear_line(tmp_path: Path):
    env = {**os.environ, "OUTPUT_DIR": str(tmp_path / "out")}
    done = run_import(tmp_path, env)
    assert done.returncode == 2
    assert (
        done.stderr.strip().splitlines()[-1].startswith("cryptostream: ")
        and "older archive layout" in done.stderr
    )


def test_a_second_split_across_files_opens_and_closes_by_time_not_file_name(tmp_path: Path):
    """The original project named its flushes part-0 ... part-14, and "part-10" sorts before "part-9": a
    second split across those two took its open and close from the wrong file (a reviewer: 1 of 69
    candles). Rows of a second are ordered by their time (then by the files' natural order)."""
    day = tmp_path / "ohlc" / "symbol=BTCUSD" / "date=2025-11-10"
    original_file(day / "part-9.parquet", [(MS + 100, 10.0, 12.0, 9.0, 11.0, 1.0)])
    original_file(day / "part-10.parquet", [(MS + 600, 20.0, 22.0, 19.0, 21.0, 2.0)])
    (candle,) = archive.load_candles(tmp_path, "unknown", "BTCUSD").to_pylist()
    assert (candle["open"], candle["high"], candle["low"], candle["close"], candle["volume"]) == (
        10.0,
        22.0,
        9.0,
        21.0,
        3.0,
    )


def test_odd_files_of_a_folder_cost_only_themselves_and_a_null_only_its_own_value(tmp_path: Path):
    """From a reviewer's folders: a file with sub-millisecond times made the whole day folder skipped (its
    good files too: "would lose data"); files whose columns differ in type (a double, integers, a string
    column) stopped the import with a traceback; a null high or volume in one of a second's rows made the
    merged candle's NaN. Now: times land in their millisecond, types are each file's own, a file that
    cannot be read as candles is skipped alone, and a null leaves the other rows' values."""
    day = tmp_path / "ohlc" / "symbol=BTCUSD" / "date=2025-11-10"
    original_file(day / "part-1.parquet", [(MS, 10.0, 12.0, 9.0, 11.0, 1.0)])
    fine = pa.table(  # us with a sub-ms part, integer prices, epoch-ms... all of one second
        {
            "timestamp": pa.array([(MS + 500) * 1000 + 123], pa.timestamp("us", tz="UTC")),
            "open": pa.array([20], pa.int64()),
            "high": pa.array([None], pa.float64()),
            "low": pa.array([8], pa.int64()),
            "close": pa.array([21], pa.int64()),
            "volume": pa.array([None], pa.float64()),
            "symbol": ["BTCUSD"],
        }
    )
    pq.write_table(fine, day / "part-2.parquet")
    strings = pa.table({"timestamp": [MS + 700], "open": ["x"], "high": ["x"], "low": ["x"], "close": ["x"],
                        "volume": ["x"], "symbol": ["BTCUSD"]})  # fmt: skip
    pq.write_table(strings, day / "part-3.parquet")
    (candle,) = archive.load_candles(tmp_path, "unknown", "BTCUSD").to_pylist()
    assert (candle["open"], candle["high"], candle["low"], candle["close"], candle["volume"]) == (
        10.0,
        12.0,
        8.0,
        21.0,
        1.0,
    )
