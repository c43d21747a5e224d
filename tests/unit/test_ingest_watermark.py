"""A live feed's progress per symbol (ingest/exchanges/watermark.py): what it may claim, and when it holds."""

from __future__ import annotations

from ingest.exchanges import watermark
from ingest.exchanges.watermark import FeedWatermark

T = 1_800_000_000_000
BUFFER = 500
HOLD = 30_000


def feed() -> FeedWatermark:
    return FeedWatermark("binance", ("BTCUSDT", "ETHUSDT"), BUFFER, HOLD)


def marks(w: FeedWatermark, now: int, **kwargs: bool) -> dict[str, int]:
    return {symbol: p.watermark for p in w.progress(now, **kwargs) for symbol in p.symbols}


def test_a_connected_feed_claims_its_clock_minus_the_buffer_and_never_goes_back() -> None:
    w = feed()
    w.connected(T)
    w.trade("BTCUSDT", 1, T, None, T)
    assert marks(w, T + 1000) == {"BTCUSDT": T + 500, "ETHUSDT": T + 500}
    assert marks(w, T + 900) == {}  # an earlier clock moves nothing back
    assert marks(w, T + 2000) == {"BTCUSDT": T + 1500, "ETHUSDT": T + 1500}


def test_a_gap_holds_its_symbol_before_the_trade_preceding_it_until_settled() -> None:
    w = feed()
    w.connected(T)
    w.trade("BTCUSDT", 1, T + 100, None, T + 100)
    w.trade("BTCUSDT", 5, T + 700, (2, 4), T + 700)
    assert marks(w, T + 2000) == {"BTCUSDT": T + 100, "ETHUSDT": T + 1500}
    w.settled("BTCUSDT", 2, 4)
    assert marks(w, T + 2000) == {"BTCUSDT": T + 1500}


def test_a_feed_that_is_down_when_it_stops_claims_nothing_and_resumes_before_the_outage() -> None:
    """Its final progress used to claim the outage complete (up to the stop's second with FLUSH_WINDOWS_
    ON_STOP) and the resume file saved that: the next run's backfill of the outage was dead-lettered as
    late. Down, it cannot know what it misses: it writes nothing, and resumes from what it wrote."""
    w = feed()
    w.connected(T)
    w.trade("BTCUSDT", 10, T + 100, None, T + 100)
    assert marks(w, T + 1000) == {"BTCUSDT": T + 500, "ETHUSDT": T + 500}
    w.disconnected()
    assert marks(w, T + 5000) == {}
    assert marks(w, T + 9000, complete=True) == {}  # the stop, still down
    assert w.resume() == {"BTCUSDT": {"id": 10, "watermark": T + 500}}
    # up again, a symbol that showed it lost nothing closes the current second at the stop; the other
    # still waits to show it
    w.connected(T + 9000)
    w.trade("BTCUSDT", 11, T + 9100, None, T + 9100)
    assert marks(w, T + 9500, complete=True) == {"BTCUSDT": T + 9000}


def test_a_feed_with_heartbeats_claims_nothing_past_its_last_frame() -> None:
    """Coinbase sends a frame every second: one gone silent (a half-open connection, until the stall
    timeout notices) may be missing trades, which its backfill would bring after progress closed them."""
    w = feed()
    w.connected(T)
    w.heard = T
    w.trade("BTCUSDT", 1, T, None, T)
    assert marks(w, T + 800) == {"BTCUSDT": T - 500, "ETHUSDT": T - 500}  # from the last frame, 0.8 s old
    assert marks(w, T + 20_000) == {}  # silent since: nothing more
    w.heard = T + 20_500
    assert marks(w, T + 21_000) == {"BTCUSDT": T + 20_000, "ETHUSDT": T + 20_000}
    w.heard = T + 21_700
    assert marks(w, T + 25_000, complete=True) == {"BTCUSDT": T + 21_000, "ETHUSDT": T + 21_000}  # a stop


def test_a_market_known_only_by_its_heartbeats_is_resumed_after_the_id_they_named() -> None:
    """A quiet Coinbase market: no trade, a heartbeat naming its last id. A restart must fetch what came
    after that id (it used to be left out of the resume file, so an outage across a restart went unseen)."""
    w = feed()
    w.connected(T)
    w.heartbeat("ETHUSDT", 40, None, T)
    marks(w, T + 400)  # progress T - 100: id 40 may still be after it
    assert w.resume()["ETHUSDT"] == {"id": 39, "watermark": T - 100}
    marks(w, T + 1_600)
    assert w.resume()["ETHUSDT"] == {"id": 40, "watermark": T + 1_100}
    w.heartbeat("ETHUSDT", 41, None, T + 1_700)  # a later heartbeat of a known market changes nothing
    assert w.resume()["ETHUSDT"]["id"] == 40


def test_trades_beyond_the_recent_limit_are_not_claimed_by_the_resume_file(monkeypatch) -> None:
    """``recent`` keeps RECENT_LIMIT trades per symbol; those it had no room for (a long hold on a busy
    market) were forgotten, and once the kept ones were behind the progress the resume file claimed the
    highest id, the forgotten trades' windows still open: a restart skipped them."""
    monkeypatch.setattr(watermark, "RECENT_LIMIT", 3)
    w = feed()
    w.connected(T)
    for i in range(1, 7):
        w.trade("BTCUSDT", i, T + 100 * i, None, T + 100 * i)
    marks(w, T + 850)  # progress T + 350: ids 1-3 behind it, 4-6 not
    assert w.resume()["BTCUSDT"]["id"] == 3
    marks(w, T + 1_150)  # progress T + 650: all behind it
    assert w.resume()["BTCUSDT"]["id"] == 6
