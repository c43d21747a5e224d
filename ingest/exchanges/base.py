"""The one WebSocket loop every exchange shares: connect, subscribe, read, notice trouble, reconnect.

An exchange is a small subclass that knows its URL, its subscribe messages and how to parse a frame
(:meth:`Exchange.parse`) and a REST history row (:meth:`Exchange.parse_history`). Everything about staying
connected lives here, once:

* **Reconnect** with exponential backoff and jitter (``RECONNECT_MAX_SECONDS`` caps it); a session that
  delivered data resets the backoff, so a routine server disconnect costs a fraction of a second.
* **Resubscribe**: every session sends the subscribe messages again.
* **Heartbeats**: the ``websockets`` library answers server pings (Binance pings every 20 s and drops
  clients that do not pong) and sends its own keepalive pings, so a dead TCP path is noticed.
* **Proof of completeness**: progress never passes the last moment the feed can prove it has every trade:
  the sending time of its last frame (a stream delivers in order), or, on a silent connection where the
  exchange sends nothing for markets without trades (Binance), the moment its REST API was last asked for
  the newest trade id and named none we lack. That check runs ``MAX_BUFFER_SECONDS`` + 1 s into a silence
  (so the last trade's second closes about as soon as it would on a busy connection), then every
  ``WS_STALL_SECONDS``. An answered ping proves the connection alive, not the stream: one frozen while
  its pings were answered had progress pass the trades it never delivered, and the backfill of them came
  late. Only a feed that cannot ask REST (``BACKFILL=false``, over ``QUIET_CHECK_MARKETS`` markets) counts
  answered pings (``LIVENESS_PING_SECONDS``) as proof; what such a feed misses is lost, not late.
* **The exchange's clock**: progress, liveness and holds are measured in the exchange's time as its frames
  tell it (:class:`~ingest.exchanges.clock.ExchangeClock`), never our wall clock: a local clock ahead of
  the exchange's, or stepped, made trades late.
* **Stalls**: a feed that sends nothing for ``WS_STALL_SECONDS`` is dropped and reconnected, unless it
  still answers pings and the exchange's REST API says no trade was made that we lack, in this silence
  (Binance, whose stream sends nothing for markets without trades: a quiet market's connection was dropped
  every ``WS_STALL_SECONDS``). A stream frozen while trades go on is a stall still; what it missed is a gap.
* **Exchange errors** (Coinbase ``{"type":"error"}``, Binance ``{"error":...}``) are logged and counted; a
  session that errors before delivering anything is retried with backoff.
* **Planned disconnects** (Binance ``serverShutdown`` before its 24 h cut): the next session is opened at
  once while the old one drains, make-before-break; the overlap is deduplicated.
* **Gaps**: every trade passes through a per-symbol :class:`~ingest.exchanges.tracker.TradeIds`, which drops
  resent trades and reports missing id ranges; a background task fills those from the exchange's REST
  history (:mod:`ingest.backfill`) after a short delay, so late WebSocket frames and REST indexing catch up
  first. Whatever the backfill cannot find is counted as lost, never silently.
* **Progress**: :class:`~ingest.exchanges.watermark.FeedWatermark` follows what the loop sees (connected,
  trades, gaps, heartbeats, backfills ending) and says how far each symbol's event time is complete; while a
  gap is backfilled the symbol's progress holds, so the backfilled trades land in their candles.

Trades and rejected records leave through ``emit`` as :class:`~ingest.source.TradeBatch` objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from cryptostream.codec import Rejected
from cryptostream.errors import SettingsError
from cryptostream.feeds import CONNECTED, CONNECTING, RECONNECTING, FeedStatus
from cryptostream.markets import Market
from cryptostream.metrics import (
    BACKFILLED,
    FEED_ERRORS,
    FEED_STALLS,
    INGEST_DUPLICATES,
    LOST_TRADES,
    RECONNECTS,
    TRADE_GAPS,
)
from cryptostream.models import Trade
from cryptostream.settings import Settings
from ingest.backfill import BackfillError, RestHistory
from ingest.exchanges.clock import SAMPLE_EVERY_MS, ExchangeClock, monotonic_ms
from ingest.exchanges.tracker import TradeIds
from ingest.exchanges.watermark import FeedWatermark
from ingest.source import TradeBatch, now_ms
from ingest.validation import FieldError, rejected

__all__ = ["Emit", "Exchange", "FeedStats", "Parsed", "now_ms", "reject_frame"]

log = logging.getLogger(__name__)

Emit = Callable[[TradeBatch], Awaitable[None]]

BACKOFF_BASE_SECONDS = 0.25
BACKFILL_DELAY_SECONDS = 1.0  # let late frames arrive and REST history index the trades first
# A ping this often where the exchange sends no heartbeat: the connection's liveness (and, for a feed that
# cannot ask REST, how far its progress lags on quiet markets); 2 a second is within Binance's 5 incoming
# messages a second per connection.
LIVENESS_PING_SECONDS = 0.5
# A silent connection counts as quiet (see Exchange._quiet) only if a ping was answered this recently.
QUIET_PONG_SECONDS = 5.0
QUIET_CHECK_SECONDS = 10.0  # how long a REST check may take (the markets' calls run at once)
# The first REST check of a silence comes this long after the buffer has passed the last frame: its
# second can close then, as on a busy connection (see Exchange._checkpoints).
EARLY_CHECK_SECONDS = 1.0
REST_CHECK_WEIGHT = 25  # Binance's weight of GET /api/v3/trades, per market
REST_WEIGHT_PER_MINUTE = 1_200  # what early checks may spend (Binance allows 6,000 a minute per IP)
# A trade REST names that was made this close to the question may still be on its way over the WebSocket:
# not a gap yet, nor a proof (the next check, or its frame, says which).
IN_FLIGHT_MS = 1_000
BACKFILL_ROUNDS = 3


@dataclass(slots=True)
class Parsed:
    """What one frame said."""

    trades: list[Trade] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    last_ids: dict[str, int] = field(default_factory=dict)  # symbol -> last trade id the exchange reports
    alive: bool = False  # a healthy control message (subscription ack, heartbeat)
    sent_ms: int | None = None  # the exchange's clock when it sent the frame, where the frame says
    error: str | None = None
    shutdown: bool = False


@dataclass
class FeedStats:
    """Counters of one feed (also exported as Prometheus metrics)."""

    sessions: int = 0
    reconnects: int = 0
    stalls: int = 0
    errors: int = 0
    frames: int = 0
    trades: int = 0
    duplicates: int = 0
    rejected: int = 0
    gaps: int = 0
    missing: int = 0
    backfilled: int = 0
    lost: int = 0
    backfilled_late: int = 0  # backfilled trades older than the progress already written (dead-lettered late)
    quiet: int = 0  # silences found to be quiet markets, not a stall (the connection stayed)


def reject_frame(raw: str | bytes) -> Parsed | dict[str, Any]:
    """The frame as a JSON object, or a :class:`Parsed` rejecting it (malformed JSON, not an object)."""
    payload = raw.encode() if isinstance(raw, str) else raw
    try:
        msg = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        return Parsed(rejected=[Rejected("malformed_json", str(exc)[:200], payload)])
    if not isinstance(msg, dict):
        return Parsed(rejected=[Rejected("not_an_object", f"got JSON {type(msg).__name__}", payload)])
    return msg


@dataclass(slots=True)
class _SessionEnd:
    healthy: bool
    reason: str
    delivered: bool = False  # data came (an older connection draining after a planned disconnect can go)
    answered: float = float("-inf")  # when a ping of ours was last answered (monotonic)


class Exchange(ABC):
    """One exchange feed. Subclasses set :attr:`name` and implement :meth:`url` and the parsers."""

    name: ClassVar[str]
    url_setting: ClassVar[str]  # the setting that names the WebSocket URL, for error messages
    heartbeats: ClassVar[bool] = False  # the exchange sends a frame at least every second: no pings needed

    def __init__(
        self, settings: Settings, markets: Sequence[Market], history: RestHistory | None = None
    ) -> None:
        strangers = [f"{m.native} ({m.exchange})" for m in markets if m.exchange != self.name]
        if not markets or strangers:
            raise SettingsError(
                f"the {self.name} feed needs markets {self.name} lists, got {', '.join(strangers) or 'none'}"
            )
        self.markets = tuple(markets)  # what the exchange lists for SYMBOLS (cryptostream.markets.resolve)
        self.symbols = frozenset(m.symbol for m in self.markets)
        self.stall_seconds = settings.ws_stall_seconds
        self.buffer_seconds = settings.max_buffer_seconds
        self.reconnect_max = settings.reconnect_max_seconds
        self.history = history if settings.backfill else None
        self.ids: dict[str, TradeIds] = defaultdict(TradeIds)
        self.stats = FeedStats()
        self.feed = FeedStatus(self.name, CONNECTING, now_ms())  # what /health and the dashboard show
        self.backfill_delay = BACKFILL_DELAY_SECONDS
        self._gaps: asyncio.Queue[tuple[str, int, int, float]] = asyncio.Queue()  # ..., found (monotonic)
        self._emit: Emit | None = None
        self._draining: set[asyncio.Task[_SessionEnd]] = set()
        self._delivering = 0  # sessions that delivered data and are still open
        self._stopping = False  # run() was cancelled: its sessions close, the feed was not disconnected
        self._checked = float("-inf")  # when REST was last asked (monotonic)
        self.clock = ExchangeClock()
        self.watermark = FeedWatermark(
            self.name,
            tuple(sorted(self.symbols)),
            int(settings.max_buffer_seconds * 1000),
            int(settings.backfill_hold_seconds * 1000),
            proof_required=True,  # no progress before the first frame or check
        )
        url = self.url()
        if not url.startswith(("ws://", "wss://")):
            raise SettingsError(f"{self.url_setting} must start with ws:// or wss://, got {url!r}")

    def exchange_now(self) -> int | None:
        """The exchange's time now (its clock, as its frames tell it), or None until they have told it."""
        return self.clock.now(monotonic_ms())

    def now(self) -> int:
        """:meth:`exchange_now`, or our wall clock until it is known (no progress is written then). Trades
        are stamped received at this time, so the ``future`` rule compares the exchange's times with its own
        clock: a local clock more than ``FUTURE_TOLERANCE_SECONDS`` behind the exchange's had every trade
        and progress record rejected as ``future``."""
        now = self.exchange_now()
        return now_ms() if now is None else now

    # ------------------------------------------------------------------------ what subclasses say
    @abstractmethod
    def url(self) -> str:
        """The WebSocket URL (with any stream names in it)."""

    def subscriptions(self) -> list[dict[str, Any]]:
        """Messages sent after every connect."""
        return []

    def id_space(self) -> str:
        """Where this feed's trade ids count: an id saved by a feed of another kind or server (Binance's
        trade and aggTrade streams number apart, a testnet has its own) says nothing about this one."""
        return f"{type(self).__name__} {self.url()}"

    def on_connect(self) -> None:  # noqa: B027 - optional hook
        """Reset per-connection state (sequence numbers)."""

    async def server_time(self) -> int | None:
        """The exchange's clock from its REST API (ms; None: not known), asked twice on connecting until
        the clock is known, so it is known before the first trade: trades are stamped received on it, and
        a feed whose frames carry no time for long (Binance, of quiet markets) still writes progress."""
        return None if self.history is None else await self.history.server_time()

    def can_prove_quiet(self) -> bool:
        """Whether :meth:`latest_ids` can ask (a feed whose stream is silent when its markets are, with
        REST history to ask): then only its answers, never answered pings, prove a silence complete."""
        return False

    async def latest_ids(self) -> dict[str, tuple[int, int] | None] | None:
        """The newest trade of each market, (id, time ms) (None: the market has none) from the exchange's
        REST API, for a feed whose stream is silent when its markets are (Binance); None: not asked,
        silence is a stall.
        Raises :class:`~ingest.backfill.BackfillError` when the exchange does not answer."""
        return None

    @abstractmethod
    def parse(self, raw: str | bytes, received_at: int) -> Parsed:
        """One WebSocket frame -> trades, rejects, heartbeats, errors."""

    @abstractmethod
    def parse_history(
        self, symbol: str, rows: list[dict[str, Any]], received_at: int
    ) -> tuple[list[Trade], list[Rejected]]:
        """REST history rows -> trades and rejects."""

    # ------------------------------------------------------------------------ the loop
    async def run(self, emit: Emit) -> None:
        """Stream forever (until cancelled), reconnecting as needed; trades leave through ``emit``."""
        self._emit = emit
        self._stopping = False
        backfill = asyncio.create_task(self._backfill_loop(), name=f"{self.name}-backfill")
        attempt = 0
        session: asyncio.Task[_SessionEnd] | None = None
        try:
            while True:
                handover = asyncio.Event()
                session = asyncio.create_task(self._session(handover), name=f"{self.name}-session")
                announced = asyncio.create_task(handover.wait())
                await asyncio.wait({session, announced}, return_when=asyncio.FIRST_COMPLETED)
                announced.cancel()
                self.stats.reconnects += 1
                RECONNECTS.labels(self.name).inc()
                if not session.done():
                    # make-before-break: the old connection keeps delivering until the new one does
                    self._draining.add(session)
                    session.add_done_callback(self._draining.discard)
                    attempt = 0
                    log.info("%s: server announced shutdown; opening the next connection now", self.name)
                    continue
                end = session.result()
                self.feed.reconnects = self.stats.reconnects
                if not self._delivering:
                    self.feed.enter(RECONNECTING, now_ms(), end.reason)
                attempt = 0 if end.healthy else attempt + 1
                delay = min(self.reconnect_max, BACKOFF_BASE_SECONDS * 2**attempt) * random.uniform(0.5, 1.0)
                log.warning("%s: %s; reconnecting in %.2fs", self.name, end.reason, delay)
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            self._stopping = True  # the feed stops; not a failure restarted by the supervisor
            raise
        finally:
            backfill.cancel()
            for task in (*self._draining, session):
                if task is not None:
                    task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await backfill

    async def _session(self, handover: asyncio.Event) -> _SessionEnd:
        """One connection, until it closes, stalls or is replaced."""
        state = _SessionEnd(False, "")
        try:
            async with connect(
                self.url(),
                open_timeout=10,
                ping_interval=20,
                ping_timeout=20,
                close_timeout=2,
                max_size=16 * 1024 * 1024,
                max_queue=256,
            ) as ws:
                self.stats.sessions += 1
                self.on_connect()
                if self.exchange_now() is None:
                    await self._ask_the_time()
                for message in self.subscriptions():
                    await ws.send(orjson.dumps(message).decode())
                log.info("%s: connected to %s", self.name, self.url())
                pinger = None if self.heartbeats else asyncio.create_task(self._ping(ws, state))
                try:
                    await self._read(ws, handover, state)
                finally:
                    if pinger is not None:
                        pinger.cancel()
        except ConnectionClosed as exc:
            state.reason = f"connection closed ({exc})"
        except (OSError, TimeoutError, WebSocketException) as exc:
            state.reason = f"cannot connect ({type(exc).__name__}: {exc})"
        finally:
            if state.healthy:
                self._delivering -= 1
                if not self._delivering and not self._stopping:
                    # no progress until a session delivers again. Not when the feed stops: whether its
                    # final progress was written depended on whether the close handshake had ended
                    self.watermark.disconnected()
        return state

    async def _read(self, ws: ClientConnection, handover: asyncio.Event, state: _SessionEnd) -> None:
        """Read frames until the connection closes (raises), stalls or errors before any data. A silence is
        looked at at each of :meth:`_checkpoints`: early ones prove progress (:meth:`_prove`), one at
        ``WS_STALL_SECONDS`` or later decides whether the connection stays (:meth:`_quiet`)."""
        last = time.monotonic()  # the last frame, or the start
        checks = self._checkpoints()
        at = next(checks)
        missed = False  # a check of this silence found trades the stream had not delivered
        while True:
            try:
                raw = await asyncio.wait_for(ws.recv(), max(0.0, last + at - time.monotonic()))
            except TimeoutError:
                decides = at >= self.stall_seconds
                if not decides:
                    if time.monotonic() - self._checked >= self._check_spacing():
                        missed |= await self._prove(logging.DEBUG) is False
                elif await self._quiet(state, missed):
                    missed = False
                else:
                    self.stats.stalls += 1
                    FEED_STALLS.labels(self.name).inc()
                    state.reason = f"no message for {self.stall_seconds:g}s (stalled)"
                    return
                while last + at <= time.monotonic():  # a slow check: no checks back to back
                    at = next(checks)
                continue
            last, checks, missed = time.monotonic(), self._checkpoints(), False
            at = next(checks)
            self.stats.frames += 1
            parsed = self.parse(raw, self.now())  # received at: the exchange's time (see now)
            if parsed.sent_ms is not None:
                self._saw(parsed.sent_ms)
            # the stream delivers in order: all it sent before this frame is here (not what it sent while
            # this one waited to be read: under load, the time we read it claimed those too). Never past
            # the clock's estimate: one sending time far ahead would have lifted the cap for good
            now = self.exchange_now()
            self._heard(now if parsed.sent_ms is None or now is None else min(parsed.sent_ms, now))
            if parsed.trades or parsed.alive:
                self._delivers(state, data=True)
            if parsed.trades or parsed.rejected or parsed.last_ids:
                await self.deliver(parsed.trades, parsed.rejected, parsed.last_ids)
            if parsed.error is not None:
                self.stats.errors += 1
                FEED_ERRORS.labels(self.name).inc()
                log.error("%s: exchange error: %s", self.name, parsed.error)
                if not state.delivered:
                    state.reason = f"exchange error before any data ({parsed.error})"
                    return
            if parsed.shutdown:
                handover.set()

    def _checkpoints(self) -> Iterator[float]:
        """Seconds into a silence at which it is looked at: where REST can prove it quiet, once when the
        buffer has passed the last frame by ``EARLY_CHECK_SECONDS`` (its second can close then), and every
        ``WS_STALL_SECONDS``. A REST check costs Binance weight 25 a market: one a silence, then one every
        ``WS_STALL_SECONDS``, not one every progress interval."""
        early = self.buffer_seconds + EARLY_CHECK_SECONDS
        if self.can_prove_quiet() and early < self.stall_seconds:
            yield early
        yield from (self.stall_seconds * k for k in itertools.count(1))

    def _check_spacing(self) -> float:
        """Seconds between two early checks at least: their REST weight (25 a market) stays within
        ``REST_WEIGHT_PER_MINUTE``, a fifth of Binance's 6,000 a minute, however often silences begin."""
        return len(self.markets) * REST_CHECK_WEIGHT * 60 / REST_WEIGHT_PER_MINUTE

    def _delivers(self, state: _SessionEnd, *, data: bool) -> None:
        """The session is proven to work (data, a healthy control message, or a ping answered): the feed is
        connected. Once data came, an older connection draining after a planned disconnect can go."""
        if not state.healthy:
            state.healthy = True
            self._delivering += 1
            if self._delivering == 1:
                self.watermark.connected(self.now())
                self.feed.enter(CONNECTED, now_ms())
        if data and not state.delivered:
            state.delivered = True
            for old in list(self._draining):  # the new connection delivers: retire the old one
                old.cancel()

    async def _ping(self, ws: ClientConnection, state: _SessionEnd) -> None:
        """Ping every ``LIVENESS_PING_SECONDS``; a pong means every frame the server sent before it has
        arrived, so the connection was alive when the ping left. Ends with the connection."""
        with contextlib.suppress(ConnectionClosed):
            while True:
                sent = self.exchange_now()
                await (await ws.ping())
                state.answered = time.monotonic()
                if not self.can_prove_quiet():  # alive is not complete: a frozen stream answers pings
                    self._heard(sent)
                self._delivers(state, data=False)  # a Binance feed of quiet markets sends nothing else
                await asyncio.sleep(LIVENESS_PING_SECONDS)

    async def _quiet(self, state: _SessionEnd, missed: bool) -> bool:
        """Whether a connection silent for ``WS_STALL_SECONDS`` is only quiet: it answered a ping within the
        last ``QUIET_PONG_SECONDS`` and the exchange's REST API names no trade newer than those we have, nor
        did it earlier in this silence (``missed``). A newer one is a gap (backfilled) and the silence a
        stall: the stream froze while trading went on."""
        if not self.can_prove_quiet() or time.monotonic() - state.answered > QUIET_PONG_SECONDS:
            return False
        if not await self._prove(logging.WARNING) or missed:
            return False
        self.stats.quiet += 1
        log.log(
            logging.INFO if self.stats.quiet == 1 else logging.DEBUG,
            "%s: nothing for %gs, pings answered, and the exchange has no trade we lack: the markets are "
            "quiet; the connection stays (asked again after every %gs of silence)",
            self.name,
            self.stall_seconds,
            self.stall_seconds,
        )
        return True

    async def _prove(self, level: int) -> bool | None:
        """Ask the exchange's REST API for each market's newest trade id. True: it names none we lack, so
        every trade made before we asked is here, and progress may reach that moment (minus the buffer).
        False: it names one (a gap, backfilled while the symbol holds). None: it cannot say (logged at
        ``level``)."""
        asked = self.exchange_now()  # before the question: the answer covers at least this much
        self._checked = time.monotonic()
        try:  # bounded: meanwhile nothing reads the connection
            latest = await asyncio.wait_for(self.latest_ids(), QUIET_CHECK_SECONDS)
        except (BackfillError, TimeoutError) as exc:
            log.log(level, "%s: cannot ask whether trades were missed: %s", self.name,
                    str(exc) or f"no answer in {QUIET_CHECK_SECONDS:g}s")  # fmt: skip
            return None
        if latest is None or asked is None:
            return None
        named = {symbol: entry for symbol, entry in latest.items() if entry is not None}
        for symbol, (last, made) in named.items():
            high = self.ids[symbol].high
            if high is not None and last > high and made >= asked - IN_FLIGHT_MS:
                log.debug("%s %s: trade %d was made as we asked; its frame may be on its way", self.name,
                          symbol, last)  # fmt: skip
                return None
        gaps = self.stats.gaps
        await self.deliver(
            [],
            last_ids={symbol: last for symbol, (last, _) in named.items()},
            made={symbol: made for symbol, (_, made) in named.items()},
        )
        if self.stats.gaps > gaps:
            return False
        self._heard(asked)
        return True

    async def prove_stop(self) -> None:
        """At a stop that closes the windows it fed (``FLUSH_WINDOWS_ON_STOP``): a feed whose silence only
        REST can prove asks once more, so its final progress covers its last trades (their second would
        otherwise close only with the next trade, in a next run the in-memory broker does not have)."""
        if self.can_prove_quiet() and self.watermark.up:
            await self._prove(logging.WARNING)

    def _heard(self, at: int | None) -> None:
        """The feed has every trade made before ``at`` (the exchange's time; None before it is known): a
        frame's sending time, a REST check's question, an answered ping where REST cannot be asked.
        Progress may reach it (minus the buffer). Never our wall clock: ahead of the exchange's, it made
        the cap nothing for as long as the skew."""
        mark = self.watermark
        if at is not None and (mark.heard is None or at > mark.heard):
            mark.heard = at

    async def _ask_the_time(self) -> None:
        """Two samples of the exchange's REST clock, so its clock is known without a frame telling it:
        windows an earlier run left open close although no market trades (a quiet Binance feed wrote no
        progress after a restart). A sample is taken as the answer arrives: later than the time it names,
        so the clock is only ever estimated behind, never ahead."""
        for attempt in range(2):
            if attempt:
                await asyncio.sleep(SAMPLE_EVERY_MS / 1000)
            try:
                sent = await self.server_time()
            except Exception as exc:  # the frames tell the time too: never a reason to stop the feed
                log.warning(
                    "%s: cannot ask the exchange's clock (%r); its frames will tell it", self.name, exc
                )
                return
            if sent is None:
                return
            self._saw(sent)

    def _saw(self, sent_ms: int) -> None:
        """A frame's sending time: a clock sample. The moment the clock becomes known, the deadlines set
        by our wall clock before (holds) move onto it, so a hold lasts what it says whatever the skew."""
        known = self.exchange_now() is not None
        self.clock.saw(sent_ms, monotonic_ms())
        now = self.exchange_now()
        if not known and now is not None:
            self.watermark.shift_deadlines(now - now_ms())

    # ------------------------------------------------------------------------ dedupe and gaps
    async def deliver(
        self,
        trades: list[Trade],
        rejects: list[Rejected] | None = None,
        last_ids: dict[str, int] | None = None,
        *,
        within: tuple[int, int] | None = None,
        made: dict[str, int] | None = None,
    ) -> int:
        """Drop duplicates, note gaps, emit the rest; return how many trades were new."""
        if len(trades) > 1:
            trades = sorted(trades, key=lambda t: (t.symbol, t.trade_id))
        fresh: list[Trade] = []
        now = self.now()
        mark = self.watermark
        for trade in trades:
            if within is not None and not within[0] <= trade.trade_id <= within[1]:
                continue
            admission = self.ids[trade.symbol].admit(trade.trade_id)
            if admission.new:
                fresh.append(trade)
                if within is not None and mark.behind(trade.symbol, trade.timestamp):
                    self.stats.backfilled_late += 1
                mark.trade(trade.symbol, trade.trade_id, trade.timestamp, admission.gap, now)
            else:
                self.stats.duplicates += 1
            if admission.gap is not None:
                self._gap(trade.symbol, *admission.gap)
            if admission.dropped:
                self._lost(trade.symbol, admission.dropped, "too many open gaps")
        for symbol, last in (last_ids or {}).items():
            admission = self.ids[symbol].observe_last(last)
            mark.heartbeat(symbol, last, admission.gap, now, (made or {}).get(symbol))
            if admission.gap is not None:
                self._gap(symbol, *admission.gap)
        dup = len(trades) - len(fresh)
        if dup:
            INGEST_DUPLICATES.labels(self.name).inc(dup)
        self.stats.trades += len(fresh)
        self.feed.traded(len(fresh), now_ms())
        rejects = rejects or []
        self.stats.rejected += len(rejects)
        if (fresh or rejects) and self._emit is not None:
            await self._emit(TradeBatch(fresh, rejects, source=self.name))
        return len(fresh)

    def _gap(self, symbol: str, lo: int, hi: int) -> None:
        size = hi - lo + 1
        self.stats.gaps += 1
        self.stats.missing += size
        TRADE_GAPS.labels(self.name, symbol).inc()
        action = "backfilling from REST" if self.history is not None else "backfill is off (BACKFILL=false)"
        log.warning("%s %s: trade ids %d-%d missing (%d trades); %s", self.name, symbol, lo, hi, size, action)
        self._gaps.put_nowait((symbol, lo, hi, time.monotonic()))

    def _lost(self, symbol: str, count: int, why: str) -> None:
        self.stats.lost += count
        LOST_TRADES.labels(self.name).inc(count)
        log.error("%s %s: %d missing trades could not be recovered (%s)", self.name, symbol, count, why)

    async def _backfill_loop(self) -> None:
        """Fill reported gaps from REST history, one at a time (exchanges rate-limit REST). A fault while
        filling one gap gives that gap up as lost, said and counted: it used to end this loop unseen, and
        every later gap stayed open, never fetched and never counted."""
        while True:
            symbol, lo, hi, found = await self._gaps.get()
            try:
                await self._backfill(symbol, lo, hi, found)
            except Exception as exc:
                log.exception("%s %s: backfill of trade ids %d-%d failed", self.name, symbol, lo, hi)
                lost = self.ids[symbol].give_up(lo, hi)
                if lost:
                    self._lost(symbol, lost, f"backfill failed: {type(exc).__name__}")
                self.watermark.settled(symbol, lo, hi)

    async def _backfill(self, symbol: str, lo: int, hi: int, found: float) -> None:
        """Fill one gap: fetch its holes (a few rounds), give up what is still missing, let progress go.
        The first fetch waits until ``backfill_delay`` after the gap was found, not after the gap before
        it: the gaps of many symbols after one reconnect waited a second each in turn, and those behind
        the 30th or so outlasted their holds (BACKFILL_HOLD_SECONDS), their trades late."""
        late_before = self.stats.backfilled_late
        await asyncio.sleep(max(0.0, found + self.backfill_delay - time.monotonic()))
        why = "backfill is off"
        if self.history is not None:
            why = "not in the exchange's REST history"
            for round_ in range(BACKFILL_ROUNDS):
                holes = self.ids[symbol].missing(lo, hi)
                if not holes:
                    break
                if round_:
                    await asyncio.sleep(self.backfill_delay * 2**round_)
                for a, b in holes:
                    try:
                        rows = await self.history.fetch(symbol, a, b)
                    except BackfillError as exc:
                        why = str(exc)
                        log.warning("%s %s: backfill of %d-%d failed: %s", self.name, symbol, a, b, exc)
                        continue
                    trades, rejects = self.parse_history(symbol, rows, self.now())
                    got = await self.deliver(trades, rejects, within=(a, b))
                    self.stats.backfilled += got
                    BACKFILLED.labels(self.name).inc(got)
                    log.info(
                        "%s %s: backfilled %d of %d trades %d-%d", self.name, symbol, got, b - a + 1, a, b
                    )
        lost = self.ids[symbol].give_up(lo, hi)
        if lost:
            self._lost(symbol, lost, why)
        self.watermark.settled(symbol, lo, hi)  # the symbol's progress may move on
        late = self.stats.backfilled_late - late_before
        if late:
            log.warning(
                "%s %s: %d backfilled trades of %d-%d were older than the progress already written (the "
                "gap outlasted MAX_BUFFER_SECONDS on a connection that looked healthy, or "
                "BACKFILL_HOLD_SECONDS ran out); the processor dead-letters them as late",
                self.name,
                symbol,
                late,
                lo,
                hi,
            )

    # ------------------------------------------------------------------------ parsing helpers
    def trade_or_reject(self, build: Callable[[], Trade], raw: Any, out: Parsed) -> None:
        """Run ``build``; a missing field or bad value becomes a reject carrying ``raw``."""
        try:
            out.trades.append(build())
        except KeyError as exc:
            out.rejected.append(Rejected("missing_field", f"missing {exc.args[0]}", _raw(raw)))
        except FieldError as exc:
            out.rejected.append(rejected(exc, _raw(raw)))
        except (TypeError, AttributeError, ValueError) as exc:  # ValueError: int() of a digit it cannot read
            out.rejected.append(Rejected("wrong_type", str(exc)[:200], _raw(raw)))


def _raw(raw: Any) -> bytes:
    if isinstance(raw, bytes):
        return raw
    if isinstance(raw, str):
        return raw.encode()
    return orjson.dumps(raw)
