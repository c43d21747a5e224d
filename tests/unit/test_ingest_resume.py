"""What a live feed keeps across restarts (``STATE_DIR/ingest/<exchange>.json``), and how it backfills
gaps (in time for their holds, going on whatever one gap does): no network, the feeds built from the
shipped market lists, REST history answered in process."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from cryptostream.markets import snapshot
from cryptostream.models import Trade
from cryptostream.settings import load_settings
from ingest.backfill import RestHistory
from ingest.exchanges import Binance, ResumeFile, _resume
from ingest.source import now_ms

BTC = [snapshot("binance").lookup("BTCUSDT")]


def feed(tmp_path: Path, **overrides: Any) -> Binance:
    values = {"symbols": "BTCUSDT", "backfill": False, "state_dir": tmp_path, **overrides}
    return Binance(load_settings(**values), BTC)


def test_a_feed_resumes_after_the_ids_it_saved_in_its_own_id_space(tmp_path: Path) -> None:
    resume = ResumeFile(tmp_path)
    trades = feed(tmp_path)
    resume.save("binance", trades.id_space(), {"BTCUSDT": {"id": 1020, "watermark": 1_800_000_000_000}})
    again = feed(tmp_path)
    _resume(again, resume.load("binance", again.id_space()))
    assert again.ids["BTCUSDT"].high == 1020
    # an earlier version's file (the symbols alone) is read as this feed's
    (tmp_path / "binance.json").write_bytes(orjson.dumps({"BTCUSDT": {"id": 7, "watermark": 1}}))
    assert resume.load("binance", again.id_space()) == {"BTCUSDT": {"id": 7, "watermark": 1}}


def test_ids_of_another_stream_or_server_are_not_resumed_after(tmp_path: Path, caplog) -> None:
    """Binance numbers its trade and aggTrade streams apart (a real frame: aggregate id 15,683,430 for
    trade ids from 19,862,790): resuming aggTrades after a saved trade id dropped every one as a
    duplicate, silently."""
    resume = ResumeFile(tmp_path)
    trades = feed(tmp_path, binance_stream="trade")
    resume.save("binance", trades.id_space(), {"BTCUSDT": {"id": 45_000_000, "watermark": 1}})
    for other in (
        feed(tmp_path, binance_stream="aggTrade"),
        feed(tmp_path, binance_ws_url="wss://testnet.binance.vision"),
    ):
        assert other.id_space() != trades.id_space()
        assert resume.load("binance", other.id_space()) == {}
    assert "not looked for" in caplog.text
    # the symbols streamed are not part of it: adding one keeps the others' ids
    wider = Binance(
        load_settings(symbols="BTCUSDT,ETHUSDT", backfill=False, state_dir=tmp_path),
        [*BTC, snapshot("binance").lookup("ETHUSDT")],
    )
    assert wider.id_space() == trades.id_space()


@pytest.mark.parametrize(
    "content",
    [
        b"[]",
        b"null",
        b"{not json",
        b'{"BTCUSDT": {"id": null, "watermark": 1}}',
        b'{"BTCUSDT": {"id": "12a", "watermark": 1}}',
        b'{"BTCUSDT": {"id": true, "watermark": 1}}',
        b'{"id_space": "x", "symbols": []}',
    ],
)
def test_a_state_file_of_the_wrong_shape_is_ignored_saying_so(tmp_path: Path, content: bytes, caplog) -> None:
    """Valid JSON of another shape raised at start-up (AttributeError, TypeError, ValueError): ingest did
    not start. Now it is ignored with a warning, as unreadable JSON already was."""
    (tmp_path / "binance.json").write_bytes(content)
    trades = feed(tmp_path)
    if content.startswith(b'{"id_space"'):
        content = content.replace(b'"x"', orjson.dumps(trades.id_space()))
        (tmp_path / "binance.json").write_bytes(content)
    _resume(trades, ResumeFile(tmp_path).load("binance", trades.id_space()))
    assert trades.ids["BTCUSDT"].high is None
    assert "ignoring" in caplog.text


class InstantHistory(RestHistory):
    """REST history that answers every id at once, as Binance's historicalTrades rows stamped ``at``."""

    def __init__(self, at: int | None = None) -> None:
        self.at = at
        self.calls = 0

    def row_id(self, row: dict[str, Any]) -> int:
        return int(row["id"])

    async def fetch(self, symbol: str, lo: int, hi: int) -> list[dict[str, Any]]:
        self.calls += 1
        at = now_ms() if self.at is None else self.at
        return [
            {"id": i, "price": "1", "qty": "1", "time": at, "isBuyerMaker": True} for i in range(lo, hi + 1)
        ]


class FlakyHistory(InstantHistory):
    """The same, except that its first fetch fails in a way nobody expected."""

    async def fetch(self, symbol: str, lo: int, hi: int) -> list[dict[str, Any]]:
        if self.calls == 0:
            self.calls += 1
            raise RuntimeError("a bug in the first gap's backfill")
        return await super().fetch(symbol, lo, hi)


async def test_a_fault_in_one_gaps_backfill_gives_it_up_as_lost_and_the_next_gap_is_filled(
    tmp_path: Path, caplog
) -> None:
    """It ended the backfill task unseen: every later gap stayed open, never fetched and never counted."""
    trades = feed(tmp_path, backfill=True)
    trades.history = FlakyHistory()
    trades.backfill_delay = 0.01
    out: list[Trade] = []

    async def emit(batch: Any) -> None:
        out.extend(batch)

    trades._emit = emit
    task = asyncio.create_task(trades._backfill_loop())
    try:
        now = now_ms()
        at = [Trade("binance", "BTCUSDT", 1.0, 1.0, now, i, True, now) for i in (1000, 1002, 1010)]
        await trades.deliver(at[:2])  # gap 1001: its backfill fails
        await trades.deliver(at[2:])  # gap 1003-1009
        for _ in range(200):
            if trades.stats.backfilled >= 7:
                break
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
    assert not task.done() or task.cancelled()
    assert trades.stats.lost == 1 and trades.stats.backfilled == 7, trades.stats
    assert sorted(t.trade_id for t in out) == [1000, 1002, *range(1003, 1010), 1010]
    assert trades.ids["BTCUSDT"].missing(0, 10**9) == []
    assert "backfill of trade ids 1001-1001 failed" in caplog.text


async def test_the_gaps_of_many_symbols_at_once_each_wait_the_delay_from_when_they_were_found(
    tmp_path: Path,
) -> None:
    """After one reconnect every symbol may show a gap. Each waited the backfill delay after the gap before
    it was done, so with a 1 s delay and a 3 s hold the gaps after the third outlasted their holds: their
    progress moved on and the backfilled trades were late. Now each waits from when it was found."""
    listed = [m for m in snapshot("binance") if m.trading and m.quote == "USDT"][:8]
    settings = load_settings(
        symbols=",".join(m.symbol for m in listed),
        backfill=True,
        backfill_hold_seconds=3.0,
        max_buffer_seconds=0.5,
        state_dir=tmp_path,
    )
    trades = Binance(settings, listed)
    now = now_ms()
    trades.history = InstantHistory(now - 50)
    out: list[Trade] = []

    async def emit(batch: Any) -> None:
        out.extend(batch)

    trades._emit = emit
    trades.watermark.connected(now)
    for trade_id, at in ((1000, now - 100), (1002, now)):  # 1001 missing in every market
        await trades.deliver([Trade("binance", m.symbol, 1.0, 1.0, at, trade_id, True, now) for m in listed])
    task = asyncio.create_task(trades._backfill_loop())
    try:
        for _ in range(150):
            trades.watermark.progress(now_ms())  # what the progress loop does: holds run out here
            if trades.stats.backfilled == len(listed):
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
    assert trades.stats.backfilled == len(listed), trades.stats
    assert trades.watermark.expired == 0 and trades.stats.backfilled_late == 0, trades.stats
