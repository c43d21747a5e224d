"""The pipeline's health as the processors report it: lag, last trade time per market, counts and rates.

Every processor replica publishes a status message to the candles topic each second (key ``__status__``,
see ``processor/service.py``): its partitions with position, log end and lag; its ``streams``, one per
market (exchange and symbol) with the newest event time and the close frontier; cumulative counts since
that process started. The board keeps the newest
report of each replica and derives rates from consecutive reports. A replica silent for ``stale_after``
seconds is shown as not alive and leaves the rates and the partition table (its partitions have moved
or are unowned); its counts stay in the totals for an hour, so a crash does not make the late count drop.

Ingest reports each source's connection the same way (``type: feed``, key ``__feed__``, see
:mod:`cryptostream.feeds`). A source *delivers* while its newest report, at most ``stale_after`` seconds old,
says connected; a replay that reached the end of its file is *finished* (kept until the source reports
again, however old: nothing more is to come from it). The pipeline is fed when some source delivers, or
every source reported is finished and none has reported otherwise since (a live ingest that died after
the replay and was forgotten an hour later is not fed): ``/health`` is degraded when the API reads the live
feed and it is not (no ingest running, every exchange unreachable, ingest stopped).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from cryptostream.feeds import CONNECTED, FINISHED, STATES

log = logging.getLogger(__name__)

__all__ = [
    "FeedReport",
    "PartitionReport",
    "ProcessorReport",
    "StatusBoard",
    "StatusSnapshot",
    "SymbolReport",
    "waiting",
]

FORGET_AFTER_S = 3600.0
COUNTS = ("trades", "candles", "late", "rejected", "checkpoints")


@dataclass(slots=True)
class ProcessorReport:
    processor: str
    time_ms: int
    received: float  # monotonic seconds
    message: dict[str, Any]
    trades_per_s: float = 0.0
    candles_per_s: float = 0.0
    alive: bool = True

    def count(self, name: str) -> int:
        value = self.message.get(name, 0)
        return int(value) if isinstance(value, (int, float)) else 0


@dataclass(slots=True)
class PartitionReport:
    partition: int
    position: int | None
    end: int | None
    lag: int | None
    processor: str


@dataclass(slots=True)
class SymbolReport:
    exchange: str
    symbol: str
    last_event_ms: int
    closed_through_ms: int | None


@dataclass(slots=True)
class FeedReport:
    """The newest report of one source (see :mod:`cryptostream.feeds`)."""

    source: str
    state: str
    since_ms: int | None
    last_trade_ms: int | None
    trades: int
    reconnects: int
    error: str | None
    ingest: str
    time_ms: int
    received: float  # monotonic seconds
    alive: bool = True  # reported within ``stale_after``

    @property
    def delivering(self) -> bool:
        return self.alive and self.state == CONNECTED

    @property
    def finished(self) -> bool:
        return self.state == FINISHED


def waiting(feeds: list[FeedReport]) -> list[FeedReport]:
    """The sources more trades are to come from: all but the finished ones."""
    return [f for f in feeds if not f.finished]


@dataclass(slots=True)
class StatusSnapshot:
    processors: list[ProcessorReport]
    partitions: list[PartitionReport]
    symbols: list[SymbolReport]
    lag: int
    trades_per_s: float
    candles_per_s: float
    totals: dict[str, int]
    rejected_by_reason: dict[str, int]
    updated_ms: int | None
    feeds: list[FeedReport] = field(default_factory=list)
    fed: bool = False  # some source delivers, or all are finished (see the module docstring)
    markets: int = 0  # markets the processors hold (``symbols`` lists at most 200 of each processor's)
    now_ms: int = field(default_factory=lambda: int(time.time() * 1000))


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _markets(report: ProcessorReport) -> int:
    """Markets one processor holds: ``streams_total`` (its status lists only the most behind)."""
    total = _int(report.message.get("streams_total"))
    streams = report.message.get("streams")
    return total if total is not None else len(streams) if isinstance(streams, list) else 0


def _text(value: Any, most: int = 200) -> str | None:
    return value[:most] if isinstance(value, str) else None


class StatusBoard:
    def __init__(self, stale_after: float = 10.0) -> None:
        self.stale_after = stale_after
        self.reports: dict[str, ProcessorReport] = {}
        self.feeds: dict[str, FeedReport] = {}
        self.unfinished_at = float("-inf")  # when a source not finished last reported (forgotten or not)
        self._unknown: set[tuple[str, str]] = set()  # (source, state) logged as unknown

    def update_feed(self, message: dict[str, Any], now: float | None = None) -> None:
        """Take one feed status message (malformed fields are ignored, never raised). A state this API
        does not know (a newer ingest's, during a rolling upgrade) is kept and shown as it came, taken as not
        delivering and not finished: refused, the source's reports were dropped and /health asked whether
        ingest was running at all."""
        source = (_text(message.get("source"), 32) or "").strip()
        state = (_text(message.get("state"), 32) or "").strip()
        if not source or not state:
            raise ValueError("feed status needs a source and a state")
        if state not in STATES and (source, state) not in self._unknown and len(self._unknown) < 100:
            self._unknown.add((source, state))
            log.warning(
                "trade source %s reports state %r, which this API does not know (a newer ingest?): shown as "
                "it came, taken as not delivering; known states: %s",
                source,
                state,
                ", ".join(STATES),
            )
        self.feeds[source] = FeedReport(
            source=source,
            state=state,
            since_ms=_int(message.get("since_ms")),
            last_trade_ms=_int(message.get("last_trade_ms")),
            trades=_int(message.get("trades")) or 0,
            reconnects=_int(message.get("reconnects")) or 0,
            error=_text(message.get("error"), 500),
            ingest=_text(message.get("ingest")) or "?",
            time_ms=_int(message.get("time_ms")) or int(time.time() * 1000),
            received=time.monotonic() if now is None else now,
        )
        if state != FINISHED:
            self.unfinished_at = self.feeds[source].received

    def update(self, message: dict[str, Any], now: float | None = None) -> None:
        """Take one status message (malformed fields are ignored, never raised)."""
        now = time.monotonic() if now is None else now
        name = str(message.get("processor", "?"))[:200]
        time_ms = _int(message.get("time_ms")) or int(time.time() * 1000)
        report = ProcessorReport(name, time_ms, now, message)
        previous = self.reports.get(name)
        if previous is not None and time_ms > previous.time_ms:
            seconds = (time_ms - previous.time_ms) / 1000
            for attr, key in (("trades_per_s", "trades"), ("candles_per_s", "candles")):
                before, after = previous.count(key), report.count(key)
                delta = after - before if after >= before else after  # a restart reset the count
                setattr(report, attr, delta / seconds)
        elif previous is not None:
            report.trades_per_s, report.candles_per_s = previous.trades_per_s, previous.candles_per_s
        self.reports[name] = report

    def snapshot(self, now: float | None = None) -> StatusSnapshot:
        now = time.monotonic() if now is None else now
        for name in [n for n, r in self.reports.items() if now - r.received > FORGET_AFTER_S]:
            del self.reports[name]
        for source in [n for n, f in self.feeds.items() if now - f.received > FORGET_AFTER_S]:
            if not self.feeds[source].finished:  # nothing more is to come from a finished one
                del self.feeds[source]
        feeds = [self.feeds[source] for source in sorted(self.feeds)]
        for f in feeds:
            f.alive = now - f.received <= self.stale_after
        reports = sorted(self.reports.values(), key=lambda r: r.processor)
        for r in reports:
            r.alive = now - r.received <= self.stale_after
        alive = [r for r in reports if r.alive]
        partitions: dict[int, tuple[int, PartitionReport]] = {}
        symbols: dict[tuple[str, str], SymbolReport] = {}
        for r in alive:
            parts = r.message.get("partitions")
            for key, p in parts.items() if isinstance(parts, dict) else ():
                if not str(key).isdigit() or not isinstance(p, dict):
                    continue
                number = int(key)
                seen = partitions.get(number)
                if seen is None or seen[0] < r.time_ms:  # after a rebalance the newest report wins
                    report = PartitionReport(
                        number, _int(p.get("position")), _int(p.get("end")), _int(p.get("lag")), r.processor
                    )
                    partitions[number] = (r.time_ms, report)
        for r in reports:
            streams = r.message.get("streams")
            for s in streams if isinstance(streams, list) else ():
                if not isinstance(s, dict):
                    continue
                last = _int(s.get("last_event_ms"))
                exchange, symbol = s.get("exchange"), s.get("symbol")
                if last is None or not isinstance(exchange, str) or not isinstance(symbol, str):
                    continue
                key = (exchange[:32], symbol[:32])
                known = symbols.get(key)
                if known is None or last > known.last_event_ms:  # after a rebalance the newest report wins
                    symbols[key] = SymbolReport(*key, last, _int(s.get("closed_through_ms")))
        totals = {key: sum(r.count(key) for r in reports) for key in COUNTS}
        reasons: dict[str, int] = {}
        for r in reports:
            by_reason = r.message.get("rejected_by_reason")
            for reason, n in by_reason.items() if isinstance(by_reason, dict) else ():
                if _int(n) is not None:
                    reasons[str(reason)] = reasons.get(str(reason), 0) + int(n)
        lags = [p.lag for _, p in partitions.values() if p.lag is not None]
        return StatusSnapshot(
            processors=reports,
            partitions=[p for _, p in sorted(partitions.values(), key=lambda item: item[1].partition)],
            symbols=[symbols[key] for key in sorted(symbols)],
            lag=sum(lags),
            trades_per_s=sum(r.trades_per_s for r in alive),
            candles_per_s=sum(r.candles_per_s for r in alive),
            totals=totals,
            rejected_by_reason=dict(sorted(reasons.items())),
            updated_ms=max((r.time_ms for r in reports), default=None),
            feeds=feeds,
            fed=any(f.delivering for f in feeds)
            or (
                bool(feeds)
                and not waiting(feeds)
                and max(f.received for f in feeds) >= self.unfinished_at  # nothing else reported since
            ),
            markets=sum(_markets(r) for r in alive),
        )
