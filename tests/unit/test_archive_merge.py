"""The archive's hourly merge: fresh files of every market into one file per market and hour, hours into a
day, under SIGKILL at every step.

A child process runs the merge and is killed before its k-th durable step (each fsync, rename and unlink),
for every k until one run finishes. After each kill, readers see every stored row exactly once: the
archive's own reads (:func:`cryptostream.archive.load`) and DuckDB reading the files as the README shows
(market folders and fresh files, one row per key). The next merge finishes the interrupted one, and then a
plain DuckDB scan of the market folders counts every row once and each closed day is one file per market.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cryptostream import archive
from cryptostream.compaction import JOURNAL, MergeStopped, compact_folder, merge_fresh
from cryptostream.models import CANDLE_SCHEMA
from processor.sinks import FlushBatch, Lineage, ParquetSink

DAY = datetime(2024, 3, 9, tzinfo=UTC)
MARKETS = [("binance", "AAA"), ("coinbase", "AAA")]  # one symbol on two venues: two markets
COLUMNS = CANDLE_SCHEMA.names


def candles(exchange: str, symbol: str, start: datetime, n: int, step_s: int = 7) -> pa.Table:
    buckets = [start + timedelta(seconds=i * step_s) for i in range(n)]
    seed = sum(map(ord, exchange + symbol))
    prices = [seed + i * 0.5 for i in range(n)]
    return pa.table(
        {
            "exchange": [exchange] * n,
            "symbol": [symbol] * n,
            "bucket": buckets,
            "open": prices,
            "high": [p + 1 for p in prices],
            "low": [p - 1 for p in prices],
            "close": [p + 0.25 for p in prices],
            "volume": [1.5] * n,
            "trade_count": [2] * n,
            "vwap": prices,
            "buy_volume": [1.0] * n,
            "sell_volume": [0.5] * n,
        },
        schema=CANDLE_SCHEMA,
    )


async def write(root: Path, partition: int, epoch: str, seq: int, table: pa.Table) -> None:
    batch = FlushBatch()
    batch.tables[partition] = {"ohlc": table}
    batch.lineage[partition] = Lineage(epoch, seq)
    await ParquetSink(root).write(batch)


def ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


async def build(root: Path, merge_first: bool = True) -> None:
    """Hour 22 of DAY merged once, then a late file for it; hour 23 fresh; hour 0 of the next day open."""
    h22, h23 = DAY + timedelta(hours=22), DAY + timedelta(hours=23)
    for seq, offset in ((1, 0), (2, 1800)):
        await write(
            root,
            0,
            "e1",
            seq,
            pa.concat_tables([candles(e, s, h22 + timedelta(seconds=offset), 40) for e, s in MARKETS]),
        )
    if merge_first:
        merge_fresh(root, ms(h23))
        assert not archive.fresh_files(root, "ohlc", DAY.date())
    # Late rows for hour 22 of one market, one of them the same candle again (the trades processed twice).
    late = candles("binance", "AAA", h22 + timedelta(seconds=3000), 10)
    again = candles("binance", "AAA", h22, 1)
    await write(root, 1, "e2", 1, pa.concat_tables([late, again]))
    for seq, offset in ((3, 0), (4, 2000)):
        await write(
            root,
            0,
            "e1",
            seq,
            pa.concat_tables([candles(e, s, h23 + timedelta(seconds=offset), 30) for e, s in MARKETS]),
        )
    await write(
        root, 0, "e1", 5, pa.concat_tables([candles(e, s, DAY + timedelta(days=1), 5) for e, s in MARKETS])
    )


def stored(root: Path, unique: bool) -> dict[tuple[str, str], list[tuple[Any, ...]]]:
    """Every market's rows as the archive reads them, as sorted tuples (a multiset when not unique)."""
    out = {}
    for exchange, symbol in MARKETS:
        table = archive.load(root, "ohlc", exchange, symbol, unique=unique)
        out[(exchange, symbol)] = sorted(zip(*(table[c].to_pylist() for c in COLUMNS), strict=True))
    return out


def market_spans(root: Path) -> dict[tuple[str, str], tuple[int | None, int | None]]:
    return {m: archive.market_span(root, "ohlc", *m) for m in MARKETS}


_DUCK: list[duckdb.DuckDBPyConnection] = []


def duck(root: Path, sql: str) -> dict[tuple[str, str], list[tuple[Any, ...]]]:
    if not _DUCK:
        _DUCK.append(duckdb.connect())
        _DUCK[0].execute("SET TimeZone = 'UTC'")
    rows = _DUCK[0].execute(sql.format(root=root, select=", ".join(COLUMNS))).fetchall()
    out: dict[tuple[str, str], list[tuple[Any, ...]]] = {m: [] for m in MARKETS}
    for row in rows:
        out[(row[0], row[1])].append(tuple(row))
    return {m: sorted(v) for m, v in out.items()}


# The README's DuckDB reads: everything (market folders and fresh files, one row per key) ...
EVERYTHING = """
    WITH stored AS (
        SELECT {select} FROM read_parquet('{root}/ohlc/*/*/*/*.parquet', hive_partitioning = true)
        UNION ALL
        SELECT {select} FROM read_parquet('{root}/_fresh/ohlc/*/*.parquet', hive_partitioning = true)
    )
    SELECT * FROM stored QUALIFY row_number() OVER (PARTITION BY exchange, symbol, bucket) = 1
"""
# ... and merged hours only, as plain files.
MERGED = "SELECT {select} FROM read_parquet('{root}/ohlc/*/*/*/*.parquet', hive_partitioning = true)"


def as_duck(
    rows: dict[tuple[str, str], list[tuple[Any, ...]]],
) -> dict[tuple[str, str], list[tuple[Any, ...]]]:
    return {m: sorted(tuple(r) for r in v) for m, v in rows.items()}


def killed_at(step: int, run: Callable[[], None]) -> bool:
    """Run ``run`` in a forked child that SIGKILLs itself before its ``step``-th durable filesystem step;
    True if it was killed, False if it finished first."""
    pid = os.fork()
    if pid == 0:  # the child
        count = 0
        originals = {name: getattr(os, name) for name in ("fsync", "replace", "rename", "unlink", "rmdir")}

        def counted(name: str) -> Callable[..., Any]:
            def call(*args: Any, **kwargs: Any) -> Any:
                nonlocal count
                count += 1
                if count == step:
                    os.kill(os.getpid(), signal.SIGKILL)
                return originals[name](*args, **kwargs)

            return call

        for name in originals:
            setattr(os, name, counted(name))
        try:
            run()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    assert os.WEXITSTATUS(status) == 0
    return False


async def test_the_hourly_merge_loses_and_doubles_nothing_when_killed_at_any_step(tmp_path: Path):
    """Killed at each of its filesystem steps, a merge leaves every reader with each row once, and the next
    merge finishes it. A candle stored twice (the same trades processed again) is merged into one row, the
    one readers already returned: a plain scan of the closed day (pandas, DuckDB) counts it once."""
    base = tmp_path / "base"
    await build(base)
    all_rows, one_per_key = stored(base, unique=False), stored(base, unique=True)
    assert sum(map(len, all_rows.values())) == 2 * 80 + 11 + 2 * 60 + 2 * 5  # one duplicate stored
    assert sum(map(len, one_per_key.values())) == sum(map(len, all_rows.values())) - 1
    before = ms(DAY + timedelta(days=1, minutes=30))  # hours 22 and 23 and the day closed; hour 0 open
    # What each market holds of the closed day, once per candle: what a plain scan must count after.
    closed = {m: [r for r in rows if r[2] < DAY + timedelta(days=1)] for m, rows in one_per_key.items()}

    def readers_see_each_row_once(work: Path, when: str) -> None:
        """Each market reads as it was stored, or (merged) as it is once per key; never a row twice."""
        now = stored(work, unique=False)
        for market, rows in now.items():
            assert rows in (all_rows[market], one_per_key[market]), f"{market} {when}"
        assert stored(work, unique=True) == one_per_key, f"one per key {when}"

    # the first and last candle of each market (the API's market list), from file spans read once each
    spans = {m: (ms(min(r[2] for r in rows)), ms(max(r[2] for r in rows))) for m, rows in all_rows.items()}

    steps = 0
    for step in range(1, 500):
        work = tmp_path / f"k{step}"
        shutil.copytree(base, work)
        if not killed_at(step, lambda work=work: merge_fresh(work, before)):
            steps = step - 1
            break
        # Killed mid-merge: every reader sees each stored row exactly once.
        readers_see_each_row_once(work, f"after a kill at step {step}")
        assert duck(work, EVERYTHING) == as_duck(one_per_key), f"DuckDB after a kill at step {step}"
        assert market_spans(work) == spans, f"market spans after a kill at step {step}"
        # The next merge finishes the interrupted one.
        merge_fresh(work, before)
        assert not (work / archive.FRESH / JOURNAL).exists()
        assert stored(work, unique=False) == one_per_key, f"archive reads after recovering from step {step}"
        assert duck(work, MERGED) == as_duck(closed), f"plain DuckDB scan after recovering from step {step}"
        assert market_spans(work) == spans, f"market spans after recovering from step {step}"
        for exchange, symbol in MARKETS:
            folder = archive.partition_dir(work, "ohlc", exchange, symbol, DAY.date())
            assert len(list(folder.glob("*.parquet"))) == 1, (step, sorted(p.name for p in folder.iterdir()))
        shutil.rmtree(work)
    assert steps > 25, steps  # the merge really was cut at each of its steps

    # Uninterrupted: the same, and the open hour is still fresh (one file).
    done = tmp_path / f"k{steps + 1}"
    assert stored(done, unique=False) == one_per_key
    assert duck(done, MERGED) == as_duck(closed)
    assert len(archive.fresh_files(done, "ohlc", (DAY + timedelta(days=1)).date())) == 1


async def test_a_read_during_a_merge_never_counts_a_row_twice(tmp_path: Path):
    """Fresh files are listed before the market folder: between the two listings a merge may write a market
    file and delete its sources, and the reader still sees each row once (or retries)."""
    await build(tmp_path, merge_first=False)  # the market folders are empty: every row is in fresh files
    expected, once = stored(tmp_path, unique=False), stored(tmp_path, unique=True)
    merged = False

    def then_merge(read: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            nonlocal merged
            out = read(*args)
            if not merged and str(DAY.date()) in str(args):  # a merge runs between the reader's two listings
                merged = True
                merge_fresh(tmp_path, ms(DAY + timedelta(days=1, minutes=30)))
            return out

        return call

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(archive, "listing", then_merge(archive.listing))
        mp.setattr(archive, "fresh_files", then_merge(archive.fresh_files))
        got = stored(tmp_path, unique=False)
    assert merged
    for market, rows in got.items():  # as stored, or merged (a candle stored twice is kept once)
        assert rows in (expected[market], once[market]), market


def test_a_read_never_misses_the_rows_a_merge_moves_while_it_lists_a_folder(tmp_path: Path):
    """A merge writes its file and deletes those it replaces between a reader's glob of a market folder and
    its look at their footers: that listing is taken again. The reader used to drop the files gone by then
    and, never having seen the merge's file, return none of the folder's rows."""
    folder = archive.partition_dir(tmp_path, "ohlc", "binance", "AAA", DAY.date())
    rows = candles("binance", "AAA", DAY, 60).drop_columns(["exchange", "symbol"])
    archive.write_file(folder / archive.file_name(0, "e1", 1), rows.slice(0, 20))
    archive.write_file(folder / archive.file_name(0, "e1", 2), rows.slice(20, 20))
    compact_folder(folder, "ohlc", {})  # a compact file of the two
    archive.write_file(folder / archive.file_name(0, "e1", 3), rows.slice(40))
    expected = stored(tmp_path, unique=False)[("binance", "AAA")]
    merged = False

    def then_merge(read: Callable[[Path], list[str]]) -> Callable[[Path], list[str]]:
        def call(path: Path) -> list[str]:
            nonlocal merged
            if not merged:  # the first footer a listing reads: its glob is done
                merged = True
                compact_folder(folder, "ohlc", {})  # both files into a new one, then both deleted
            return read(path)

        return call

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(archive, "compacted_from", then_merge(archive.compacted_from))
        got = stored(tmp_path, unique=False)[("binance", "AAA")]
    assert merged and len(got) == 60 and got == expected


async def test_the_readme_reads_the_archive_with_pandas_and_duckdb(tmp_path: Path):
    """The README's pandas and DuckDB examples, run as written against a real archive."""
    await build(tmp_path)
    merge_fresh(tmp_path, ms(DAY + timedelta(days=1, minutes=30)))
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    sql = re.search(r"```sql\n(.*?)```", readme, re.S)
    python = re.search(r"```python\nimport pandas as pd\n(.*?)```", readme, re.S)
    assert sql and python, "the README's archive examples moved"
    here = str(tmp_path)
    source = (
        python[1]
        .replace("data/outputs", here)
        .replace("BTCUSDT", "AAA")
        .replace("2025-11-10", str(DAY.date()))
    )
    scope: dict[str, Any] = {"pd": pd}
    exec(source, scope)  # noqa: S102 - the README's own example
    day = scope["day"]
    want = archive.load(tmp_path, "ohlc", "binance", "AAA", DAY, DAY + timedelta(days=1))
    assert len(day) == want.num_rows and day["close"].tolist() == want["close"].to_pylist()

    closed_query, everything_query = (q.strip() for q in sql[1].split(";") if q.strip())
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    closed = con.execute(
        closed_query.replace("data/outputs", here)
        .replace("BTCUSDT", "AAA")
        .replace("2025-11-10", str(DAY.date()))
    ).fetchall()
    assert len(closed) == sum(
        archive.load(tmp_path, "ohlc", e, "AAA", DAY, DAY + timedelta(days=1), unique=False).num_rows
        for e, _ in MARKETS
    )
    everything = con.execute(everything_query.replace("data/outputs", here)).fetchall()
    assert len(everything) == sum(len(v) for v in stored(tmp_path, unique=True).values())


async def test_a_merge_asked_to_stop_ends_between_markets_and_the_next_one_finishes_it(tmp_path: Path):
    """At shutdown the processor stops a long merge at its next market: the state a crash there leaves."""
    await build(tmp_path)
    expected, once = stored(tmp_path, unique=False), stored(tmp_path, unique=True)
    before = ms(DAY + timedelta(days=1, minutes=30))
    stop = threading.Event()
    stop.set()
    with pytest.raises(MergeStopped):
        merge_fresh(tmp_path, before, stop=stop)
    assert (tmp_path / archive.FRESH / JOURNAL).exists()  # stopped inside an hour's merge
    for market, rows in stored(tmp_path, unique=False).items():  # as stored, or merged: never a row twice
        assert rows in (expected[market], once[market]), market
    report = merge_fresh(tmp_path, before)
    assert report.recovered and not (tmp_path / archive.FRESH / JOURNAL).exists()
    assert stored(tmp_path, unique=False) == once
    for exchange, symbol in MARKETS:
        folder = archive.partition_dir(tmp_path, "ohlc", exchange, symbol, DAY.date())
        assert len(list(folder.glob("*.parquet"))) == 1


async def test_a_checkpoint_of_several_hours_writes_each_row_once_in_its_own_hour(tmp_path: Path):
    """Rows come sorted by market, not time: a replay of yesterday into a running pipeline gave a table
    whose first and last rows were of this hour, and the whole table went into this hour's file as well as
    the rows' own (a reviewer: DataLoader returned 4,706 rows for 2,353 candles)."""
    now, old = DAY + timedelta(hours=16), DAY + timedelta(hours=10)
    table = pa.concat_tables(
        [
            candles("binance", "AAA", now, 5),
            candles("binance", "BBB", old, 7),
            candles("coinbase", "CCC", now, 3),
        ]
    )
    await write(tmp_path, 0, "e1", 1, table)
    for (exchange, symbol), n in {
        ("binance", "AAA"): 5,
        ("binance", "BBB"): 7,
        ("coinbase", "CCC"): 3,
    }.items():
        rows = archive.load(tmp_path, "ohlc", exchange, symbol)  # every stored row, duplicates included
        assert rows.num_rows == n, (symbol, rows.num_rows)
    hour16 = [p for p in archive.fresh_files(tmp_path, "ohlc", DAY.date()) if p.name.endswith("-h16.parquet")]
    assert [pq.read_table(p)["symbol"].unique().to_pylist() for p in hour16] == [["AAA", "CCC"]]
