"""Stored results are a function of the log: the same records give the same candles and dead letters, however
they are fetched, closed, checkpointed and crashed, and equal a record-at-a-time reference of the rules.

The log mixes everything a real partition carries: two venues trading the same symbols, trades out of order
within and beyond the buffer, duplicates, trades stamped ahead of their receipt time, invalid records, and
progress records (some from streams that never trade, some repeating an older watermark). The streaming
side is the processor's own code (``decode_records`` + :class:`PartitionState`), driven the way the service
drives it; the reference is a plain loop over records, written from the README's rules.
"""

from __future__ import annotations

import math
import random
from typing import Any

import orjson
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cryptostream.codec import decode_records, encode_progress
from processor.state import FAR_PAST, Interner, PartitionState
from tests.reference import Key, assert_candles_equal, batch_volatility, rows_by_key

T0 = 1_700_000_000_000
BUFFER_MS = 1_500
VOL_WINDOW_S = 5
FUTURE_MS = 10_000
EXCHANGES = ("binance", "coinbase")
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")

Log = list[tuple[bytes, int]]  # (value, receipt ms), offset = position


def make_log(rng: random.Random, n: int) -> Log:
    """A partition's log of ``n`` source events (see the module docstring), deterministic in ``rng``."""
    clock = T0
    ids = {(e, s): 1000 * i for i, (e, s) in enumerate((e, s) for e in EXCHANGES for s in SYMBOLS)}
    governed = set(rng.sample(EXCHANGES, rng.randint(0, 2)))  # venues whose sources write progress
    events: list[tuple[int, bytes, int]] = []  # (delivery time, value, receipt)
    sent: list[bytes] = []
    for _ in range(n):
        clock += rng.choice([0, 1, 40, 300, 999, 1000, 2500])
        exchange, symbol = rng.choice(EXCHANGES), rng.choice(SYMBOLS[:2])
        roll = rng.random()
        if roll < 0.12 and exchange in governed:  # progress, sometimes listing a symbol that never trades
            lag = rng.choice([0, 0, 200, BUFFER_MS])
            value = encode_progress(exchange, rng.sample(SYMBOLS, rng.randint(1, 3)), clock - lag)
            if rng.random() < 0.2:  # another tool's key order: the exact path must find it too
                value = orjson.dumps(
                    {"watermark": clock - lag, "symbols": [symbol], "exchange": exchange, "type": "progress"}
                )
            events.append((clock, value, clock))
            continue
        ids[(exchange, symbol)] += 1
        if 0.22 <= roll < 0.25:  # a feed stamping an id it used a moment ago: another second, another trade
            ids[(exchange, symbol)] -= rng.randint(1, 3)
        trade = {
            "symbol": symbol,
            "price": round(rng.uniform(90, 110), 2),
            "quantity": round(rng.uniform(0, 2), 4),
            "timestamp": clock,
            "trade_id": ids[(exchange, symbol)],
            "is_buyer_maker": rng.random() < 0.5,
            "exchange": exchange,
        }
        receipt = clock + rng.randrange(0, 300)
        if roll < 0.17:
            trade["timestamp"] = receipt + FUTURE_MS + rng.randrange(1, 10**7)  # an hour or a year ahead
        elif roll < 0.20:
            trade["price"] = -1.0
        elif roll < 0.22:
            del trade["quantity"]
        value = orjson.dumps(trade)
        if roll > 0.97:
            value = b"{not json"
        delay = (
            rng.choice([0, 0, 0, 100, 700]) if roll < 0.93 else rng.randrange(2 * BUFFER_MS, 6 * BUFFER_MS)
        )
        events.append((receipt + delay, value, receipt + delay))
        sent.append(value)
        if rng.random() < 0.08 and sent:  # an exchange resending a recent trade
            events.append((receipt + delay + rng.randrange(0, 500), rng.choice(sent[-5:]), receipt + delay))
        if rng.random() < 0.02:
            events.append((clock, encode_progress(exchange, [symbol], T0 - 5_000), clock))  # repeats the past
    events.sort(key=lambda e: e[0])
    end = max(e[0] for e in events) + FUTURE_MS + 1000
    log: Log = [(value, receipt) for _, value, receipt in events]
    for exchange in EXCHANGES:  # the sources stop: progress that closes every window
        log.append((encode_progress(exchange, list(SYMBOLS), end), end))
    return log


logs = st.builds(make_log, st.randoms(use_true_random=False), st.integers(1, 250))


# ---------------------------------------------------------------------------------------------- reference
def reference(log: Log) -> tuple[dict[Key, dict[str, Any]], dict[int, str]]:
    """Candles and dead letters by the rules, one record at a time, plain Python."""
    closed: dict[tuple[str, str], int] = {}
    high: dict[tuple[str, str], int] = {}
    governed: set[tuple[str, str]] = set()
    accepted: list[dict[str, Any]] = []
    dead: dict[int, str] = {}
    for offset, (value, receipt) in enumerate(log):
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError:
            dead[offset] = "malformed_json"
            continue
        if obj.get("type") == "progress":
            if obj["watermark"] > receipt + FUTURE_MS:
                dead[offset] = "future"
                continue
            floor = obj["watermark"] - obj["watermark"] % 1000
            for symbol in obj["symbols"]:
                key = (obj["exchange"], symbol)
                governed.add(key)
                closed[key] = max(closed.get(key, FAR_PAST), floor)
            continue
        if "quantity" not in obj:
            dead[offset] = "missing_field"
            continue
        if obj["price"] <= 0:
            dead[offset] = "non_positive_price"
            continue
        if obj["timestamp"] > receipt + FUTURE_MS:
            dead[offset] = "future"
            continue
        key = (obj["exchange"], obj["symbol"])
        ts = obj["timestamp"]
        if ts - ts % 1000 < closed.get(key, FAR_PAST):
            dead[offset] = "late"
            continue
        accepted.append(obj)
        high[key] = max(high.get(key, FAR_PAST), ts)
        if key not in governed:
            mark = high[key] - BUFFER_MS
            closed[key] = max(closed.get(key, FAR_PAST), mark - mark % 1000)
    candles: dict[Key, list[dict[str, Any]]] = {}
    seen: set[tuple[str, str, int, int]] = set()
    for t in accepted:
        ident = (t["exchange"], t["symbol"], t["timestamp"] // 1000, t["trade_id"])  # a resend: same second
        if t["timestamp"] // 1000 * 1000 >= closed[(t["exchange"], t["symbol"])]:
            continue  # its window never closed: no candle yet
        if ident not in seen:
            seen.add(ident)
            candles.setdefault((t["exchange"], t["symbol"], t["timestamp"] // 1000 * 1000), []).append(t)
    out: dict[Key, dict[str, Any]] = {}
    for key, group in candles.items():
        group.sort(key=lambda t: (t["timestamp"], t["trade_id"]))
        volume = sum(t["quantity"] for t in group)
        notional = sum(t["price"] * t["quantity"] for t in group)
        out[key] = {
            "open": group[0]["price"],
            "high": max(t["price"] for t in group),
            "low": min(t["price"] for t in group),
            "close": group[-1]["price"],
            "volume": volume,
            "trade_count": len(group),
            "vwap": notional / volume if volume > 0 else group[-1]["price"],
            "buy_volume": sum(t["quantity"] for t in group if not t["is_buyer_maker"]),
            "sell_volume": sum(t["quantity"] for t in group if t["is_buyer_maker"]),
        }
    return out, dead


# ---------------------------------------------------------------------------------------------- streaming
Result = tuple[dict[Key, dict[str, Any]], dict[Key, float], dict[int, str], int]


def stream(log: Log, seed: int) -> Result:
    """The processor's state code over ``log``, with random fetch batches, closing passes, checkpoints and
    crashes (everything since the last checkpoint is lost, except dead letters already sent, which the
    service reads back: modelled by a dict that must agree on every resend). Returns candles, volatility,
    dead letters and the number of crashes."""
    rng = random.Random(seed)
    values = [v for v, _ in log]
    receipts = [r for _, r in log]
    interner = Interner()
    state = PartitionState("t", 0, "e", 0, 0, BUFFER_MS, (VOL_WINDOW_S + 1) * 1000)
    durable: list[tuple[pa.Table, pa.Table]] = []
    pending: list[tuple[pa.Table, pa.Table]] = []
    dead: dict[int, str] = {}
    snapshot = (state.snapshot(interner), 0)
    crashes = 0

    def close() -> None:
        closed = state.close(interner, VOL_WINDOW_S)
        if closed is not None:
            pending.append((closed.ohlc, closed.volatility))

    while state.position < len(log):
        a = state.position
        b = min(len(log), a + rng.choice([1, 2, 5, 17, 64]))
        decoded = decode_records(values[a:b], range(a, b), 0, receipts[a:b], FUTURE_MS)
        late = state.apply(interner.adopt(decoded.trades), decoded.progress, interner).late
        letters = [(r.offset, r.reason) for r in decoded.rejected] + [(o, "late") for o in late.tolist()]
        for offset, reason in letters:
            assert dead.setdefault(offset, reason) == reason, (
                f"offset {offset} dead-lettered twice, differently"
            )
        state.position = b
        roll = rng.random()
        if roll < 0.3:
            close()  # the service closes every 50 ms of wall clock: at any point of the log
        if roll < 0.15:  # a checkpoint: closed rows made durable, then the state saved
            close()
            durable.extend(pending)
            pending.clear()
            snapshot = (state.snapshot(interner), state.position)
        elif roll > 0.95 and crashes < 3:  # a crash: back to the last checkpoint, in a new process
            crashes += 1
            pending.clear()
            interner = Interner()
            tables, offset = snapshot
            head = {"topic": "t", "partition": 0, "epoch": "e", "seq": 0, "offset": offset}
            state = PartitionState.restore(head, tables, interner, BUFFER_MS, (VOL_WINDOW_S + 1) * 1000)
    close()
    durable.extend(pending)
    candles = pa.concat_tables([c for c, _ in durable]).to_pylist() if durable else []
    vol_rows = pa.concat_tables([v for _, v in durable]).to_pylist() if durable else []
    volatility = {key: row["volatility"] for key, row in rows_by_key(vol_rows).items()}
    return rows_by_key(candles), volatility, dead, crashes


# Logs of up to 250 events draw a lot of hypothesis's data: one that overruns it is dropped, not a failure
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.data_too_large])
@given(logs, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_any_fetch_close_checkpoint_and_crash_schedule_gives_the_reference_candles_and_dead_letters(
    log: Log, seed_a: int, seed_b: int
) -> None:
    expected_candles, expected_dead = reference(log)
    expected_vol = batch_volatility(expected_candles, VOL_WINDOW_S)
    runs = [stream(log, seed) for seed in (seed_a, seed_b)]
    for candles, volatility, dead, _ in runs:
        assert dead == expected_dead
        assert_candles_equal(candles, expected_candles)
        assert volatility.keys() == expected_vol.keys()
        for key, value in expected_vol.items():
            assert math.isclose(volatility[key], value, rel_tol=1e-9, abs_tol=1e-12), key
    # and bit for bit the same stored values, whatever the schedule
    assert runs[0][:3] == runs[1][:3]


def test_the_generator_makes_every_kind_of_record_the_test_is_about() -> None:
    """Guard against a generator that quietly stopped producing the hard cases, and a driver that never
    crashes."""
    reasons: set[str] = set()
    crashes = progress = 0
    for seed in range(40):
        log = make_log(random.Random(seed), 200)
        _, dead = reference(log)
        reasons.update(dead.values())
        crashes += stream(log, seed)[3]
        progress += sum(1 for value, _ in log if b'"progress"' in value)
    assert {"late", "future", "malformed_json", "non_positive_price", "missing_field"} <= reasons
    assert crashes > 0 and progress > 80
