"""Replay readers: every Binance dump layout, JSONL and Parquet, validated and encoded exactly; pacing."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import zipfile
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cryptostream.codec import decode_records, decode_trades, encode_progress
from cryptostream.settings import load_settings
from ingest import replay
from ingest.replay import ReplayError, encode, read_columns, replay_trades
from processor.state import Interner, PartitionState

SPOT_TRADES = [  # id,price,qty,quote_qty,time,is_buyer_maker,is_best_match (2025+: microseconds)
    "4370000001,93576.00000000,0.00010000,9.35760000,1735689600123456,True,True",
    "4370000002,93576.01000000,0.00200000,187.15202000,1735689600124999,False,True",
]


def write(path: Path, lines: list[str], *, zipped: bool = False) -> Path:
    text = "\n".join(lines) + "\n"
    if not zipped:
        path.write_text(text)
        return path
    target = path.with_suffix(".zip")
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(path.name, text)
    return target


def rows(path: Path, symbol: str | None = None) -> tuple[list[dict], list]:
    """Everything a file yields, as decoded Kafka values, plus the rejects."""
    values, rejected = [], []
    for cols in read_columns(path, symbol):
        batch = encode(cols, received_at=1)
        values += [orjson.loads(v) for _, v, _ in batch]
        rejected += batch.rejected
    return values, rejected


@pytest.mark.parametrize("zipped", [False, True])
def test_spot_trades_dump_in_microseconds_zipped_or_not(tmp_path, zipped):
    path = write(tmp_path / "BTCUSDT-trades-2025-01-01.csv", SPOT_TRADES, zipped=zipped)
    values, rejected = rows(path)
    assert not rejected
    assert values == [
        {"symbol": "BTCUSDT", "price": 93576.0, "quantity": 0.0001, "timestamp": 1735689600123,
         "trade_id": 4370000001, "is_buyer_maker": True, "exchange": "binance", "received_at": 1},
        {"symbol": "BTCUSDT", "price": 93576.01, "quantity": 0.002, "timestamp": 1735689600124,
         "trade_id": 4370000002, "is_buyer_maker": False, "exchange": "binance", "received_at": 1},
    ]  # fmt: skip


def test_spot_aggtrades_dump_in_milliseconds(tmp_path):
    # agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker,is_best_match
    path = write(
        tmp_path / "ETHUSDT-aggTrades-2024-03-01.csv", ["77,3400.5,1.25,100,102,1709251200001,false,true"]
    )
    (value,), _ = rows(path)
    assert (value["symbol"], value["trade_id"], value["price"], value["quantity"]) == (
        "ETHUSDT",
        77,
        3400.5,
        1.25,
    )
    assert value["timestamp"] == 1709251200001 and value["is_buyer_maker"] is False


def test_futures_dump_with_header_row(tmp_path):
    path = write(
        tmp_path / "BTCUSDT-trades-2023-05-01.csv",
        ["id,price,qty,quote_qty,time,is_buyer_maker", "9,27000.1,0.5,13500.05,1682899200000,true"],
    )
    (value,), _ = rows(path)
    assert (value["trade_id"], value["timestamp"], value["is_buyer_maker"]) == (9, 1682899200000, True)


def test_a_file_mixing_ms_and_us_lands_in_exact_milliseconds(tmp_path):
    path = write(
        tmp_path / "BTCUSDT-trades-2025-01-01.csv",
        ["1,10.0,1.0,10.0,1735689599999,True,True", "2,10.0,1.0,10.0,1735689600000001,True,True"],
    )
    values, _ = rows(path)
    assert [v["timestamp"] for v in values] == [1735689599999, 1735689600000]


def test_bad_rows_are_rejected_with_reason_and_raw_text_the_rest_kept(tmp_path):
    path = write(
        tmp_path / "BTCUSDT-trades-2025-01-01.csv",
        [
            SPOT_TRADES[0],
            "4370000009,-1.0,0.1,0.1,1735689600200000,True,True",  # non-positive price
            "4370000010,10.0,-0.5,0.1,1735689600300000,True,True",  # negative quantity
            "4370000011,10.0",  # truncated line
            "4370000012,10.0,0.5,5.0,17,True,True",  # not a plausible time
            SPOT_TRADES[1],
        ],
    )
    values, rejected = rows(path)
    assert [v["trade_id"] for v in values] == [4370000001, 4370000002]
    assert sorted(r.reason for r in rejected) == [
        "bad_timestamp", "malformed_csv", "negative_quantity", "non_positive_price"
    ]  # fmt: skip
    by_reason = {r.reason: r for r in rejected}
    assert by_reason["malformed_csv"].raw == b"4370000011,10.0"  # the line as read: it is not JSON
    assert by_reason["malformed_csv"].detail == "CSV line has 2 fields, expected 7"
    assert orjson.loads(by_reason["non_positive_price"].raw)["trade_id"] == 4370000009


def test_jsonl_of_trades_keeps_exchange_and_rejects_bad_lines(tmp_path):
    good = {"symbol": "BTC-USD", "price": 65000.5, "quantity": 0.1, "timestamp": 1_700_000_000_000,
            "trade_id": 5, "is_buyer_maker": False, "exchange": "coinbase"}  # fmt: skip
    path = tmp_path / "trades.jsonl"
    path.write_bytes(
        orjson.dumps(good) + b"\n\n{oops\n" + orjson.dumps({**good, "trade_id": 6, "quantity": -1}) + b"\n"
    )
    values, rejected = rows(path)
    assert values == [{**good, "symbol": "BTCUSD", "received_at": 1}]
    assert sorted(r.reason for r in rejected) == ["malformed_json", "negative_quantity"]


def test_parquet_nulls_are_rejected_not_read_as_a_market_or_a_side(tmp_path):
    """A null symbol became the market "NONE", a null is_buyer_maker a sell (a reviewer); the same fields
    missing from a JSON line were rejected. Each such row is rejected with a reason now."""
    table = pa.table(
        {
            "exchange": ["binance", "binance", None, "binance"],
            "symbol": ["BTCUSDT", None, "BTCUSDT", "BTCUSDT"],
            "price": [50_000.0] * 4,
            "quantity": [0.25] * 4,
            "timestamp": [1_700_000_000_123 + i for i in range(4)],
            "trade_id": [1, 2, 3, 4],
            "is_buyer_maker": [True, False, True, None],
        }
    )
    pq.write_table(table, tmp_path / "nulls.parquet")
    values, rejected = rows(tmp_path / "nulls.parquet")
    assert [(v["symbol"], v["trade_id"]) for v in values] == [("BTCUSDT", 1)]
    assert [r.reason for r in rejected] == ["missing_field"] * 3


def test_parquet_with_timestamp_typed_column(tmp_path):
    table = pa.table(
        {
            "exchange": ["binance", "binance"],
            "symbol": ["BTCUSDT", "not a symbol!"],
            "price": [50_000.0, 1.0],
            "quantity": [0.25, 1.0],
            "timestamp": pa.array([1_700_000_000_123, 1_700_000_000_124], pa.timestamp("ms", "UTC")),
            "trade_id": [1, 2],
            "is_buyer_maker": [True, False],
        }
    )
    pq.write_table(table, tmp_path / "trades.parquet")
    values, rejected = rows(tmp_path / "trades.parquet")
    assert [(v["symbol"], v["timestamp"], v["trade_id"]) for v in values] == [
        ("BTCUSDT", 1_700_000_000_123, 1)
    ]
    assert [r.reason for r in rejected] == ["bad_symbol"]


def test_encoded_records_are_the_plain_json_the_codec_reads(tmp_path):
    path = write(tmp_path / "BTCUSDT-trades-2025-01-01.csv", SPOT_TRADES)
    (cols,) = list(read_columns(path))
    batch = encode(cols, received_at=1_800_000_000_000)
    assert [k for k, _, _ in batch] == [b"BTCUSDT", b"BTCUSDT"]
    assert [t for _, _, t in batch] == [1_800_000_000_000] * 2  # the record time is the receipt time
    decoded, rejected = decode_trades([v for _, v, _ in batch])
    assert not rejected
    assert decoded.trade_id.tolist() == cols.trade_id.tolist()
    assert np.array_equal(decoded.price, cols.price) and np.array_equal(decoded.timestamp, cols.timestamp)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("trades.txt", "unknown replay format"),
        ("trades-of-some-kind.csv", "cannot tell the symbol"),
        ("missing.jsonl", "does not exist"),
    ],
)
def test_unreadable_files_say_what_to_fix(tmp_path, name, message):
    path = tmp_path / name
    if name != "missing.jsonl":
        path.write_text("1,2,3\n")
    with pytest.raises(ReplayError, match=message):
        list(read_columns(path))


def test_a_value_that_does_not_convert_costs_its_row_only(tmp_path):
    """A replay stopped at a value the CSV reader could not convert, after publishing the rows before it
    (those after were never sent, none was dead-lettered). Now that row is rejected as wrong_type with
    its fields, wherever it is in the file, and every other row is read as if it were not there."""
    good = [
        f"{4370000001 + i},{100 + i % 7}.5,0.25,25.0,{1735689600000000 + i * 1000},True,True"
        for i in range(120_000)
    ]
    bad = {
        3: "4370000004,100.5,0.25,25.0,17356896000040x0,True,True",  # time
        60_000: "oops,not,a,number,x,maybe,true",  # every field: the first named
        90_000: "4370090001,1e5e5,0.25,25.0,1735689690000000,True,True",  # price
        110_000: "99999999999999999999,100.5,0.25,25.0,1735689710000000,False,True",  # id past int64
        119_999: "4370119999,100.5,0.25,25.0,1735689719999000,perhaps,True",  # side
    }
    lines = [bad.get(i, line) for i, line in enumerate(good)]
    values, rejected = rows(write(tmp_path / "BTCUSDT-trades-2025-01-01.csv", lines))
    expected, none = rows(
        write(tmp_path / "BTCUSDT-trades-2025-01-02.csv", [g for i, g in enumerate(lines) if i not in bad])
    )
    assert none == [] and values == expected and len(values) == len(good) - len(bad)
    assert all(r.reason == "wrong_type" for r in rejected), rejected
    said = sorted(r.detail for r in rejected)
    assert said == sorted(
        [
            "time is '17356896000040x0', expected an integer",
            "id is 'oops', expected an integer",
            "price is '1e5e5', expected a number",
            "id is '99999999999999999999', expected an integer",
            "is_buyer_maker is 'perhaps', expected a boolean",
        ]
    ), said
    assert orjson.loads(next(r.raw for r in rejected if b"oops" in r.raw)) == {
        "id": "oops",
        "price": "not",
        "quantity": "a",
        "time": "x",
        "is_buyer_maker": "maybe",
    }


def test_a_rows_verdict_does_not_depend_on_what_shares_its_batch(tmp_path):
    """Arrow converts a column of a batch at once; where that fails, the batch's column is read value by
    value. Each odd value gets the same verdict beside good rows only, or beside a bad row."""
    first = "1,100.5,0.25,25.0,1735689600000000,True,True"
    odd = ["+7", " 7", "7 ", "0x10", "1_000", "٧", "7.0", "", "NULL", "nan", "inf", "-0", "1e3", "-5"]
    verdicts = {}
    for i, value in enumerate(odd):
        line = f"{value},100.5,0.25,25.0,1735689600000000,True,True"
        seen = []
        for company in ([], ["x,1,1,1,1,True,True"]):
            values, rejects = rows(
                write(tmp_path / f"BTCUSDT-trades-{i}-{len(company)}.csv", [first, line, *company]), "BTCUSDT"
            )
            seen.append(
                ([v["trade_id"] for v in values[1:]], [r.reason for r in rejects if b'"id":"x"' not in r.raw])
            )
        assert seen[0] == seen[1], (value, seen)
        verdicts[value] = seen[0]
    assert verdicts["0x10"] == ([16], []) and verdicts["7.0"] == ([], ["wrong_type"])  # Arrow's reading
    assert verdicts["-5"] == ([], ["wrong_type"])  # a negative id, as before


def test_symbol_option_names_a_dump_whose_file_name_lacks_it(tmp_path):
    path = write(tmp_path / "download.csv", SPOT_TRADES)
    values, _ = rows(path, symbol="sol-usdt")
    assert {v["symbol"] for v in values} == {"SOLUSDT"}


async def test_replay_speed_paces_by_event_time(tmp_path):
    # 21 trades over 2 s of event time: at REPLAY_SPEED=10 they take ~0.2 s, at 0 no time at all
    lines = [f"{i},10.0,1.0,10.0,{1735689600000000 + i * 100_000},True,True" for i in range(21)]
    path = write(tmp_path / "BTCUSDT-trades-2025-01-01.csv", lines)

    async def replay(speed: float) -> tuple[float, int, int]:
        started = time.monotonic()
        batches = [b async for b in replay_trades(load_settings(replay_speed=speed), path, progress=False)]
        return time.monotonic() - started, sum(map(len, batches)), sum(1 for b in batches if b)

    elapsed, count, slices = await replay(10.0)
    assert count == 21 and 0.18 <= elapsed < 1.0 and slices > 1
    elapsed, count, slices = await replay(0.0)
    # not paced: cut only where progress goes, where the event time minus the buffer enters a new second
    assert count == 21 and elapsed < 0.5 and slices == 3


async def test_a_replay_writes_its_own_progress_and_ends_closing_every_window_it_fed(tmp_path):
    """Progress is the file's event time (minus the buffer for the dump's disorder) and, at the end of the
    file, the end of its last trade's second: a replay's candles depend on the file, not on the clock."""
    lines = [f"{i},10.0,1.0,10.0,{1735689600000000 + i * 100_000},True,True" for i in range(21)]
    path = write(tmp_path / "BTCUSDT-trades-2025-01-01.csv", lines)
    settings = load_settings(replay_speed=10, progress_interval_ms=10, max_buffer_seconds=0.5)
    batches = [b async for b in replay_trades(settings, path, progress=False)]
    marks = [(p.exchange, p.symbols, p.watermark) for b in batches for p in b.progress]
    last_ms = 1735689600000 + 20 * 100
    assert marks[-1] == ("binance", ("BTCUSDT",), last_ms - last_ms % 1000 + 1000)  # its second closes too
    assert len(marks) > 2 and all(w <= last_ms - 500 for _, _, w in marks[:-1])
    assert [w for _, _, w in marks] == sorted(w for _, _, w in marks)
    # a file that names no venue is the one --exchange says
    jsonl = tmp_path / "trades.jsonl"
    jsonl.write_bytes(
        b'{"symbol":"ETHUSDT","price":1.0,"quantity":1.0,"timestamp":1735689600000,"trade_id":1,"is_buyer_maker":false}\n'
    )
    batches = [
        b
        async for b in replay_trades(load_settings(replay_speed=0), jsonl, exchange="Kraken", progress=False)
    ]
    assert {p.exchange for b in batches for p in b.progress} == {"kraken"}
    assert orjson.loads(batches[0][0][1])["exchange"] == "kraken"


async def test_progress_bar_shows_trades_rate_and_eta(tmp_path, capsys):
    path = write(tmp_path / "BTCUSDT-trades-2025-01-01.csv", SPOT_TRADES * 3)
    settings = load_settings(replay_speed=0)
    assert sum([len(b) async for b in replay_trades(settings, path, progress=True)]) == 6
    shown = capsys.readouterr().err
    assert "BTCUSDT-trades-2025-01-01.csv" in shown and "6 trades" in shown
    assert "trades/s" in shown and "ETA" in shown


async def test_a_replay_reports_its_feed_status_and_ends_with_it(tmp_path):
    lines = [f"{i},10.0,1.0,10.0,{1735689600000000 + i * 100_000},True,True" for i in range(21)]
    path = write(tmp_path / "BTCUSDT-trades-2025-01-01.csv", lines)
    batches = [b async for b in replay_trades(load_settings(replay_speed=0), path, progress=False)]
    reports = [f for b in batches for f in b.feeds]
    assert reports[0].source == "replay" and reports[0].state == "connected"
    assert (reports[-1].state, reports[-1].trades) == ("finished", 21)  # the whole file: nothing more to come
    assert batches[-1].feeds == [reports[-1]] and len(batches[-1]) == 0
    stop = asyncio.Event()
    stop.set()  # stopped before its end: "ended", as a stopped exchange feed
    batches = [b async for b in replay_trades(load_settings(replay_speed=0), path, progress=False, stop=stop)]
    assert [f.state for b in batches for f in b.feeds][-1] == "ended"


# ---------------------------------------------------------------------------------------------- progress
T0 = 1_767_225_600_000  # 2026-01-01
BUFFER_MS = 2_000
INTERLEAVED = [("binance", "BTCUSDT"), ("binance", "ETHUSDT"), ("coinbase", "BTCUSD")]


def trade(exchange: str, symbol: str, timestamp: int, trade_id: int) -> dict:
    return {"exchange": exchange, "symbol": symbol, "price": 100.0 + trade_id % 7, "quantity": 0.5,
            "timestamp": timestamp, "trade_id": trade_id, "is_buyer_maker": trade_id % 2 == 0}  # fmt: skip


def disordered_file(path: Path, seed: int) -> list[dict]:
    """Three markets on two venues interleaved in time, some trades out of order within the buffer and some
    beyond it; then two markets written one after the other, far behind the file's high (a file ordered by
    symbol). Returns its rows in file order."""
    rng = random.Random(seed)
    ids = itertools.count(1)
    rows, clock = [], T0
    for _ in range(400):
        clock += rng.choice([0, 7, 90, 250, 600])
        exchange, symbol = rng.choice(INTERLEAVED)
        roll = rng.random()
        lag = 0 if roll > 0.4 else rng.randrange(BUFFER_MS) if roll > 0.06 else rng.randrange(3000, 8000)
        rows.append(trade(exchange, symbol, clock - lag, next(ids)))
    for exchange, symbol in (("binance", "SOLUSDT"), ("coinbase", "ETHUSD")):
        t = T0 + rng.randrange(5000)
        for _ in range(60):
            t += rng.choice([0, 300, 900])
            rows.append(trade(exchange, symbol, t, next(ids)))
    pq.write_table(pa.Table.from_pylist(rows), path)
    return rows


async def written(path: Path, speed: float) -> list[tuple]:
    """Every record a replay writes, in order (trades without their wall-clock ``received_at``)."""
    settings = load_settings(replay_speed=speed, max_buffer_seconds=BUFFER_MS / 1000)
    out: list[tuple] = []
    async for batch in replay_trades(settings, path, progress=False):
        for key, value, _ in batch:
            out.append(("trade", key, {k: v for k, v in orjson.loads(value).items() if k != "received_at"}))
        out += [("progress", p.exchange, p.symbols, p.watermark) for p in batch.progress]
    return out


def late_trade_ids(records: list[tuple]) -> set[int]:
    """The trades the processor's own state code finds late in this log (one partition, fetched in 50s)."""
    values = [
        orjson.dumps(r[2]) if r[0] == "trade" else encode_progress(r[1], list(r[2]), r[3]) for r in records
    ]
    receipts = [T0 + 10**9] * len(values)  # received after every event time: nothing is "future"
    interner = Interner()
    state = PartitionState("t", 0, "e", 0, 0, BUFFER_MS, 60_000)
    late: list[int] = []
    for a in range(0, len(values), 50):
        b = min(len(values), a + 50)
        decoded = decode_records(values[a:b], range(a, b), 0, receipts[a:b], 10_000)
        assert not decoded.rejected
        late += state.apply(interner.adopt(decoded.trades), decoded.progress, interner).late.tolist()
        state.position = b
    return {records[offset][2]["trade_id"] for offset in late}


@pytest.mark.parametrize("seed", [1, 2])
async def test_a_replay_writes_the_same_records_at_any_speed_and_no_trade_within_the_buffer_is_late(
    tmp_path, monkeypatch, seed
):
    """The records a replay writes, trades and progress, and their order, are a function of the file: the
    same at REPLAY_SPEED 0 and 400 and however the file is read in chunks. A trade no further behind its own
    market's high than the buffer is never late, also in a file ordered by symbol."""
    path = tmp_path / "trades.parquet"
    rows = disordered_file(path, seed)
    monkeypatch.setattr(replay, "CHUNK_ROWS", 7)  # many chunks: cuts carry across them
    fast, paced = await written(path, 0), await written(path, 400)
    monkeypatch.setattr(replay, "CHUNK_ROWS", 65_536)
    whole = await written(path, 0)
    assert fast == paced == whole
    assert [r[2] for r in fast if r[0] == "trade"] == rows
    assert sum(1 for r in fast if r[0] == "progress") > 60

    high: dict[tuple[str, str], int] = {}
    beyond = set()  # further behind their market's high than the buffer: these may be late
    for t in rows:
        market = (t["exchange"], t["symbol"])
        if t["timestamp"] < high.get(market, t["timestamp"]) - BUFFER_MS:
            beyond.add(t["trade_id"])
        high[market] = max(high.get(market, 0), t["timestamp"])
    late = late_trade_ids(fast)
    assert late and late <= beyond, f"late within the buffer: {sorted(late - beyond)}"


async def test_each_market_gets_progress_from_its_own_event_time(tmp_path, monkeypatch):
    """A file ordered by symbol: ETHUSDT on day 2, then BTCUSDT on day 1. BTCUSDT's progress comes from
    BTCUSDT's trades, so none of them lands in a window its own progress closed."""
    day1 = T0
    day2 = day1 + 86_400_000
    rows = [trade("binance", "ETHUSDT", day2, 1)]
    rows += [trade("binance", "BTCUSDT", day1 + i * 1000, 2 + i) for i in range(4)]
    path = tmp_path / "by-symbol.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=2)
    monkeypatch.setattr(replay, "CHUNK_ROWS", 2)
    records = await written(path, 0)
    marks = [(r[2], r[3]) for r in records if r[0] == "progress"]
    assert marks[-2:] == [(("BTCUSDT",), day1 + 4000), (("ETHUSDT",), day2 + 1000)]  # the end: own seconds
    assert all(w <= day1 + 3000 - BUFFER_MS for symbols, w in marks[:-2] if symbols == ("BTCUSDT",))
    assert late_trade_ids(records) == set()


async def test_a_stopped_replay_closes_only_what_it_published(tmp_path):
    lines = [f"{i},10.0,1.0,10.0,{1735689600000000 + i * 100_000},True,True" for i in range(50)]
    path = write(tmp_path / "BTCUSDT-trades-2025-01-01.csv", lines)
    settings = load_settings(replay_speed=10, max_buffer_seconds=0.5, flush_windows_on_stop=True)
    stop = asyncio.Event()
    published: list[int] = []
    marks = []
    async for batch in replay_trades(settings, path, progress=False, stop=stop):
        published += [orjson.loads(v)["timestamp"] for _, v, _ in batch]
        marks += [p.watermark for p in batch.progress]
        if published:
            stop.set()
    assert 0 < len(published) < 50
    assert marks[-1] == max(published) - max(published) % 1000 + 1000  # its last second closes, no further


@pytest.mark.parametrize(
    "before",
    [b"\n", b"\r\n\n", b"\xef\xbb\xbf", b"\xef\xbb\xbf\n"],
    ids=["blank", "blanks", "bom", "bom-blank"],
)
def test_blank_lines_or_a_bom_before_the_first_row_lose_nothing(tmp_path, before):
    """A blank first line made the whole file read as empty (0 trades, exit 0); a BOM made it refused as
    a header without columns (a reviewer)."""
    path = tmp_path / "BTCUSDT-trades-2025-01-01.csv"
    path.write_bytes(before + ("\n".join(SPOT_TRADES) + "\n").encode())
    values, rejected = rows(path)
    assert [v["trade_id"] for v in values] == [4370000001, 4370000002] and not rejected


def _damaged_zip(tmp_path: Path) -> Path:
    many = [f"{i},100.0,0.5,50.0,{1735689600000 + i},true,true" for i in range(1, 200_001)]
    whole = write(tmp_path / "BTCUSDT-trades-2025-01-01.csv", many, zipped=True)
    data = bytearray(whole.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # a damaged stretch of the compressed member
    whole.write_bytes(bytes(data))
    return whole


@pytest.mark.parametrize("how", ["zip-cut", "zip-damaged", "gz-cut", "jsonl-gz-cut", "parquet-cut"])
def test_a_damaged_or_cut_file_is_one_line_saying_so(tmp_path, how):
    """A zip cut short or damaged inside, or a cut .gz, escaped as a traceback (a .gz one as "Aborted!",
    click's word for Ctrl+C): each is a ReplayError naming the file."""
    import gzip

    if how == "zip-damaged":
        path = _damaged_zip(tmp_path)
    elif how == "zip-cut":
        path = write(tmp_path / "BTCUSDT-trades-2025-01-01.csv", SPOT_TRADES, zipped=True)
        path.write_bytes(path.read_bytes()[:40])
    elif how == "parquet-cut":
        path = tmp_path / "trades.parquet"
        pq.write_table(pa.table({"x": list(range(1000))}), path)
        path.write_bytes(path.read_bytes()[:-300])
    else:
        name = "BTCUSDT-trades-2025-01-01.csv.gz" if how == "gz-cut" else "trades.jsonl.gz"
        lines = SPOT_TRADES * 20_000 if how == "gz-cut" else ['{"symbol": "BTCUSDT"}'] * 20_000
        path = tmp_path / name
        data = gzip.compress(("\n".join(lines) + "\n").encode())
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ReplayError) as refused:
        list(read_columns(path))
    message = str(refused.value)
    assert "\n" not in message and str(path) in message, message


@pytest.mark.parametrize("unit", ["us", "ns"])
def test_parquet_times_finer_than_ms_land_in_their_millisecond(tmp_path, unit):
    """pandas writes ns timestamps: a sub-ms part stopped the replay with a traceback ("would lose data")."""
    at = pa.array([1_700_000_000_123_456_789 // (1000 if unit == "us" else 1)], pa.timestamp(unit, "UTC"))
    table = pa.table(
        {
            "symbol": ["BTCUSDT"],
            "price": [50_000.0],
            "quantity": [0.25],
            "timestamp": at,
            "trade_id": [1],
            "is_buyer_maker": [True],
        }
    )
    pq.write_table(table, tmp_path / "fine.parquet")
    values, rejected = rows(tmp_path / "fine.parquet")
    assert [v["timestamp"] for v in values] == [1_700_000_000_123] and not rejected


@pytest.mark.parametrize(
    ("column", "values", "expected"),
    [
        ("is_buyer_maker", ["false"], "is_buyer_maker is string, expected a boolean"),
        ("trade_id", [1.5], "trade_id is double, expected an integer"),
        ("price", ["abc"], "price is string, expected a number"),
        ("symbol", [1], "symbol is int64, expected a string"),
    ],
)
def test_a_parquet_column_of_another_type_is_refused_not_converted(tmp_path, column, values, expected):
    """ "false" strings were read as True on every row and a trade id of 1.5 as 1, silently; string prices
    and struct columns stopped with a traceback."""
    table = {
        "symbol": ["BTCUSDT"],
        "price": [50_000.0],
        "quantity": [0.25],
        "timestamp": [1_700_000_000_123],
        "trade_id": [1],
        "is_buyer_maker": [True],
    }
    pq.write_table(pa.table({**table, column: values}), tmp_path / "typed.parquet")
    with pytest.raises(ReplayError, match=f"column {expected}"):
        list(read_columns(tmp_path / "typed.parquet"))
