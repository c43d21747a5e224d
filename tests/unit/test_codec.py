"""Trade records: the seed's JSON shape in and out, every bad record rejected with its own reason."""

from __future__ import annotations

import json
import math

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cryptostream.codec import (
    REASONS,
    Progress,
    Rejected,
    _check_row,
    _columns_fast,
    decode_records,
    decode_trades,
    encode_dlq,
    encode_progress,
    encode_trade,
)
from cryptostream.models import Trade

GOOD = Trade("coinbase", "BTCUSD", 50000.0, 0.5, 1699564800000, 12345, False)


def test_the_kafka_value_is_the_seed_shape_plus_exchange() -> None:
    assert orjson.loads(encode_trade(GOOD)) == {
        "symbol": "BTCUSD",
        "price": 50000.0,
        "quantity": 0.5,
        "timestamp": 1699564800000,
        "trade_id": 12345,
        "is_buyer_maker": False,
        "exchange": "coinbase",
    }


def test_records_written_by_other_tools_decode_with_missing_exchange_and_loose_symbols() -> None:
    raw = (
        b'{"symbol":"btc-usd","price":50000,"quantity":0.5,"timestamp":1699564800000,"trade_id":1,'
        b'"is_buyer_maker":true}'
    )
    cols, rejected = decode_trades([raw], [7])
    assert rejected == []
    assert cols.symbols == ["BTCUSD"] and cols.exchanges == ["unknown"]
    assert cols.price.tolist() == [50000.0] and cols.offset.tolist() == [7]


CASES = {
    "malformed_json": b"{oops",
    "not_an_object": b"[1]",
    "missing_field": b'{"symbol":"BTCUSD"}',
    "wrong_type": orjson.dumps({**GOOD.to_dict(), "is_buyer_maker": "no"}),
    "bad_symbol": orjson.dumps({**GOOD.to_dict(), "symbol": "B"}),
    "non_positive_price": orjson.dumps({**GOOD.to_dict(), "price": 0}),
    "negative_quantity": orjson.dumps({**GOOD.to_dict(), "quantity": -0.1}),
    "bad_timestamp": orjson.dumps({**GOOD.to_dict(), "timestamp": 1699564800}),  # seconds, not ms
    "too_large": b"{" + b" " * 70_000 + b"}",
}


@pytest.mark.parametrize("reason", sorted(CASES))
def test_each_bad_record_is_rejected_with_its_reason_and_the_good_ones_survive(reason: str) -> None:
    values = [encode_trade(GOOD), CASES[reason], encode_trade(GOOD)]
    cols, rejected = decode_trades(values, [10, 11, 12], partition=3)
    assert len(cols) == 2 and cols.offset.tolist() == [10, 12]
    assert [(r.reason, r.offset, r.partition, r.raw) for r in rejected] == [(reason, 11, 3, CASES[reason])]
    assert reason in REASONS


def test_non_finite_values_are_rejected() -> None:
    cols, rejected = decode_trades([b'{"symbol":"BTCUSD","price":NaN}', b"null", None], [0, 1, 2])
    assert len(cols) == 0 and [r.reason for r in rejected] == [
        "malformed_json",
        "not_an_object",
        "malformed_json",
    ]


def test_dead_letter_envelope_keeps_the_raw_payload_and_says_why() -> None:
    env = orjson.loads(
        encode_dlq(
            Rejected("wrong_type", "price is str", b'{"price":"1"}', 2, 99),
            stage="processor",
            source_topic="crypto-trades",
        )
    )
    assert env == {
        "reason": "wrong_type",
        "detail": "price is str",
        "stage": "processor",
        "source": {"topic": "crypto-trades", "partition": 2, "offset": 99},
        "truncated": False,
        "raw": '{"price":"1"}',
    }
    binary = orjson.loads(
        encode_dlq(Rejected("malformed_json", "x", b"\xff\x00", 0, 1), stage="ingest", source_topic="binance")
    )
    assert binary["raw_base64"] == "/wA="


finite = st.floats(min_value=1e-6, max_value=1e9, allow_nan=False)


@given(
    st.lists(st.tuples(finite, st.floats(0, 1e6), st.integers(0, 2**62), st.booleans()), max_size=50),
    st.lists(st.sampled_from(sorted(CASES.values())), max_size=10),
    st.randoms(),
)
def test_fast_and_exact_paths_agree_on_any_mix(goods, bads, rnd) -> None:
    trades = [
        Trade("x", "ETHUSDT", p, q, 1_700_000_000_000 + i, tid, m) for i, (p, q, tid, m) in enumerate(goods)
    ]
    values = [encode_trade(t) for t in trades] + list(bads)
    rnd.shuffle(values)
    cols, rejected = decode_trades(values, list(range(len(values))))
    assert len(cols) + len(rejected) == len(values)
    assert len(cols) == len(trades)
    assert sorted(zip(cols.trade_id.tolist(), cols.price.tolist(), strict=True)) == sorted(
        (t.trade_id, t.price) for t in trades
    )
    assert all(math.isfinite(p) for p in cols.price.tolist())


json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
field_value = {
    "symbol": st.one_of(st.sampled_from(["BTCUSDT", "eth-usd", "??"]), json_scalar),
    "price": st.one_of(st.floats(-1, 1e6, allow_nan=False), json_scalar),
    "quantity": st.one_of(st.floats(-1, 10, allow_nan=False), json_scalar),
    "timestamp": st.one_of(st.integers(0, 2**64), json_scalar),
    "trade_id": st.one_of(st.integers(-(2**64), 2**64), json_scalar),
    "is_buyer_maker": st.one_of(st.booleans(), json_scalar),
    "exchange": st.one_of(st.just("binance"), json_scalar),
    "type": st.one_of(st.sampled_from(["progress", "trade"]), json_scalar),
}
# stdlib json: orjson refuses integers beyond 64 bits, and those are exactly the edge worth generating
record = st.fixed_dictionaries({}, optional=field_value).map(lambda d: json.dumps(d).encode())


@given(record)
@example(  # a trade tagged with a type msgspec's shape does not take: the exact path's, as if untagged
    b'{"symbol": "BTCUSDT", "type": false, "exchange": "binance", "is_buyer_maker": false, "trade_id": 0, '
    b'"timestamp": 0, "quantity": 0.0, "price": 0.0}'
)
def test_the_fast_path_accepts_exactly_what_the_exact_path_accepts(value) -> None:
    """msgspec's typed parse says yes exactly where the per-record checks do, with the same fields."""
    fast = _columns_fast([value])
    exact = _check_row(orjson.loads(value))
    # the exact path rejects (or finds progress): the fast path must too, or overflow into the exact path
    if isinstance(exact, Progress) or len(exact) == 2:
        if fast is not None:
            cols, rejected = decode_trades([value], [0])
            reason = "missing_field" if isinstance(exact, Progress) else exact[0]  # progress is no trade
            assert len(cols) == 0 and [r.reason for r in rejected] == [reason]
    elif fast is None:
        # msgspec's typed shape takes no "type" but none or "trade" ("type": false): the exact path decides,
        # and takes the record as the same trade without that tag (hypothesis found this case)
        plain = json.dumps({k: v for k, v in json.loads(value).items() if k != "type"}).encode()
        assert _columns_fast([plain]) is not None and _check_row(orjson.loads(plain)) == exact
        (tagged, tagged_out), (untagged, untagged_out) = (
            decode_trades([value], [0]),
            decode_trades([plain], [0]),
        )
        assert [r.reason for r in tagged_out] == [r.reason for r in untagged_out]
        assert (tagged.trade_id.tolist(), tagged.price.tolist()) == (
            untagged.trade_id.tolist(),
            untagged.price.tolist(),
        )
    else:
        assert tuple(column[0] for column in fast) == exact


def test_a_record_is_decoded_the_same_whatever_else_its_batch_holds() -> None:
    """A trade that also says ``"type": "progress"`` (another tool tagging its records) is a progress record
    by the exact path's rule; the fast path used to take it as a trade when its whole batch was good, so the
    fetch size decided. A trade with a deeply nested extra field made msgspec raise RecursionError, which
    escaped and stopped the processor on every restart."""
    fields = {"symbol": "BTCUSDT", "price": 100.0, "quantity": 1.0, "timestamp": 1_700_000_000_000}
    tagged = orjson.dumps({**fields, "trade_id": 2, "is_buyer_maker": False, "type": "progress"})
    nested = orjson.dumps({**fields, "trade_id": 3, "is_buyer_maker": False})[:-1] + b',"x":'
    nested += b"[" * 1000 + b"]" * 1000 + b"}"
    good = encode_trade(GOOD)
    for value, reason in ((tagged, "bad_progress"), (nested, None)):
        for batch in ([value], [good, value, good], [good, value, b"{not json"]):
            decoded = decode_records(batch, range(len(batch)), 0)
            at = batch.index(value)
            got = [r.reason for r in decoded.rejected if r.offset == at]
            assert got == ([reason] if reason else []), (value[:40], len(batch))
            assert (at in decoded.trades.offset.tolist()) == (reason is None)


# Fields no check reads, as raw bytes: JSON orjson refuses (not UTF-8, a number beyond a double) that
# msgspec skips unread, a later key that wins, and wrong types of known fields.
extra_field = st.sampled_from(
    [
        b'"note":"caf\xe9"',
        b'"x":1e999',
        b'"n\xffte":1',
        b'"type":"trade"',
        b'"type":"progress"',
        b'"price":"1"',
        b'"trade_id":18446744073709551616',
        b'"x":' + b"[" * 600 + b"]" * 600,
    ]
)
good_trade = st.builds(
    lambda tid, ts: encode_trade(Trade("binance", "BTCUSDT", 100.0, 1.0, 1_700_000_000_000 + ts, tid, False)),
    st.integers(0, 2**62),
    st.integers(0, 10**6),
)
progress_first = st.builds(lambda value: b'{"type":"progress",' + value[1:], good_trade)
with_extra = st.builds(
    lambda value, extra: value[:-1] + b"," + extra + b"}", good_trade | record | progress_first, extra_field
)
odd_record = st.one_of(
    good_trade,
    record,
    with_extra,
    progress_first,
    st.just(encode_progress("binance", ["BTCUSDT"], 1_700_000_001_000)),
    st.sampled_from([None, b"", b'{"oops"', b"[]", b"x" * 70_000]),
)


def _verdict(decoded, at: int) -> tuple:
    """What became of the record at offset ``at``: its trade's fields, its progress, or its reasons."""
    t = decoded.trades
    rows = [
        (t.symbols[t.symbol[k]], t.exchanges[t.exchange[k]], *(float(c[k]) for c in (t.price, t.quantity)))
        + (int(t.timestamp[k]), int(t.trade_id[k]), bool(t.is_buyer_maker[k]))
        for k in range(len(t))
        if t.offset[k] == at
    ]
    marks = [(p.exchange, p.symbols, p.watermark) for p in decoded.progress if p.offset == at]
    return rows, marks, [r.reason for r in decoded.rejected if r.offset == at]


@given(st.lists(odd_record, min_size=1, max_size=8))
def test_a_record_s_verdict_is_its_own_whatever_its_batch(batch) -> None:
    """A fetch's size is a matter of timing, so no record may be decided by its neighbours: decoded in any
    batch it is what it is alone, and it is something (a trade, progress or a reject), never nothing. A
    trade with a Latin-1 extra field was kept in an all-good batch and dead-lettered beside a bad record;
    one beginning ``{"type":"progress",`` whose later ``"type":"trade"`` wins vanished without a trace."""
    together = decode_records(batch, range(len(batch)), 0)
    for at, value in enumerate(batch):
        alone = _verdict(decode_records([value], [at], 0), at)
        assert _verdict(together, at) == alone, value[:80] if value else value
        assert sum(map(len, alone)) == 1, value[:80] if value else value
