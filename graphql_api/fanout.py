"""One Kafka consumer per API process, fanned out to every live subscriber.

The processor publishes live and closed 1 s candles, volatility, predictions and its status to the
candles topic. Each API process reads that topic once (no consumer group: every process sees every
message, starting at the log end) and hands each message to the subscribers that asked for it. A
message is decoded and turned into its GraphQL object once, not once per subscriber.

Slow clients: each subscriber has a bounded queue (``API_SUBSCRIBER_QUEUE``). Delivery never waits on a
subscriber; one whose queue is full is dropped (its subscription ends with an error telling the client
to resubscribe), so a stalled socket can hold back nobody but itself and memory stays bounded.

Shared delivery (:mod:`graphql_api.shared`): subscribers over a WebSocket join the :class:`Group` of their
subscription's shape. The group is what the channels hold; an update is executed and encoded once for the
group and the same payload goes to each member in its own frame, written to its socket at once from here when
the socket takes it (no task wakes per subscriber), else by a writer task of that subscriber with later frames
queued behind it. Queues, limits and drops are per subscriber as above.

Everything is kept per market, (exchange, symbol): channels, roll-ups, recent seconds and close frontiers.
Binance's BTCUSDT and Coinbase's BTCUSDT are two candle series, and a subscriber of one never sees the other.
A message without an ``exchange`` (a processor from before venues) belongs to the ``unknown`` venue.

Candles coarser than 1 s are rolled up here (:mod:`graphql_api.rollup`), one roll-up per market and
interval shared by all its subscribers, seeded when the first subscriber arrives from the store plus the
closed seconds this process has seen recently (the store only has what the processor checkpointed). The
feed starts at the log end having folded in the last few checkpoint intervals of it (:meth:`Fanout._catch_up`:
the closed seconds the store may not hold yet); after an interruption it reads on from where it was, or, if
the log no longer holds that, catches up the same way and seeds every roll-up in use again
(:meth:`Fanout.resync`). A roll-up coarser than a
minute is seeded from the store's 1 m candles up to the last minutes and 1 s rows only after them
(:meth:`Fanout._split_ms`): a day costs at most 1,440 minutes and a few hundred seconds, not 86,400 rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable
from datetime import datetime
from functools import reduce
from typing import Any, Protocol

import orjson
import pyarrow.compute as pc
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from cryptostream.kafka import ensure_topics, security_options
from cryptostream.models import INTERVALS
from cryptostream.settings import Settings
from cryptostream.store import ReadStore
from cryptostream.venues import UNKNOWN, normalize_exchange
from graphql_api.catalog import MarketCatalog, MarketKey
from graphql_api.inputs import InputError
from graphql_api.metrics import FEED_DELAY, FEED_MESSAGES, SUBSCRIBERS, SUBSCRIBERS_DROPPED
from graphql_api.rollup import Bar, RollUp
from graphql_api.status import StatusBoard
from graphql_api.types import CandleUpdate, Prediction, Volatility, from_ms

__all__ = ["ClientGone", "Fanout", "Group", "Outlet", "Shape", "Subscriber", "SubscriberDropped"]

log = logging.getLogger(__name__)

MINUTE_MS = INTERVALS["1m"]
RECENT_SECONDS = 900  # closed 1 s candles kept per market to seed roll-ups (>> the checkpoint interval)
# At start (and after an interruption it cannot read on from), the feed folds in the messages of this many
# checkpoint intervals (PARQUET_CHUNK_SECONDS) plus the buffer before the log end: what the store may lack.
CATCH_UP_CHECKPOINTS = 3
CATCH_UP_TIMEOUT_SECONDS = 30.0
# A roll-up nobody watches any more is kept (and kept current) this long: a client that resubscribes, or a
# subscribe/unsubscribe loop, reuses it instead of seeding it from the store again.
KEEP_IDLE_SECONDS = 300.0
KINDS = ("candles", "volatility", "predictions")
# Messages delivered before subscribers get a turn: a burst (a consumer catching up) must not overflow the
# queue of a client that keeps up; keep this below API_SUBSCRIBER_QUEUE.
FEED_CHUNK = 64
# Candle fields the store may hold as null (archives of the original project) but a live roll-up needs.
_ROLLUP_FIELDS = ("trade_count", "vwap", "buy_volume", "sell_volume")


class SubscriberDropped(Exception):
    """The subscriber fell too far behind and was disconnected from the feed."""


class ClientGone(Exception):
    """What an :class:`Outlet` raises when its socket is closed (the client left, or the server closed the
    socket for the client's doing): the subscription ends there, which is routine, not an error."""


class Shape(Protocol):
    """What shared subscribers' updates depend on (:class:`graphql_api.shared.Shape`)."""

    @property
    def key(self) -> Hashable: ...

    def payload(self, item: Any) -> str: ...


class Outlet(Protocol):
    """Where one shared subscriber's frames go (:class:`graphql_api.shared.Outlet`)."""

    # The frame's text before the payload: outlets with the same prefix get the same frame for an update.
    prefix: str

    # Writes a frame's bytes (from ``wire``) to the socket now and answers True, or writes nothing and answers
    # False (the socket cannot take it at once: ``start`` then sends it the ordinary way). None: no such way.
    write: Callable[[bytes], bool] | None

    def frame(self, payload: str) -> Any: ...

    def wire(self, frame: Any) -> bytes: ...

    def start(self, frame: Any) -> Awaitable[None] | None:
        """Send ``frame``: None when it went at once, else the rest of the send, to be awaited; either raises
        :class:`ClientGone` when the socket is closed."""
        ...


class Subscriber:
    """A bounded queue of updates for one subscription. ``offer`` never blocks.

    With an ``outlet`` (shared delivery) updates are encoded frames, written to the socket from ``offer``
    itself when the socket takes them at once (no task wakes for them); when a send has to wait (the client
    reads slowly) a writer task finishes it and the frames offered meanwhile queue behind it, bounded as
    above. The subscription's task waits in :meth:`deliver` for the end. Without an outlet the queue holds
    update objects for :meth:`get`."""

    __slots__ = (
        "_waiter",
        "dropped",
        "failed",
        "group",
        "items",
        "kind",
        "maxsize",
        "on_drop",
        "outlet",
        "released",
        "writer",
    )

    def __init__(
        self,
        kind: str,
        maxsize: int,
        on_drop: Callable[[Subscriber], None] | None = None,
        outlet: Outlet | None = None,
    ) -> None:
        self.kind = kind
        self.maxsize = maxsize
        self.on_drop = on_drop
        self.outlet = outlet
        self.group: Group | None = None
        self.items: deque[Any] = deque()
        self.dropped: str | None = None
        self.failed: BaseException | None = None  # a send failed (the client went away)
        self.released = False
        self.writer: asyncio.Task[None] | None = None  # finishing a send that had to wait, then the queue
        self._waiter: asyncio.Future[None] | None = None

    def offer(self, item: Any) -> None:
        if self.dropped is not None or self.failed is not None:
            return
        outlet = self.outlet
        if outlet is not None and self.writer is None:
            try:
                rest = outlet.start(item)
            except Exception as exc:  # the client went away: ends this subscription, not the feed
                self._fail(exc)
                return
            if rest is not None:
                self.writer = asyncio.get_running_loop().create_task(self._finish(outlet, rest))
            return
        if len(self.items) >= self.maxsize:
            self.drop(
                f"subscription dropped: the client fell {self.maxsize} updates behind "
                "(API_SUBSCRIBER_QUEUE); read faster or subscribe to fewer symbols, then resubscribe"
            )
            return
        self.items.append(item)
        self._wake()

    def drop(self, reason: str) -> None:
        """Stop delivering to this subscriber and free its queue. Its connection is not waited for: a client
        that stopped reading is reaped by the server's WebSocket pings (uvicorn closes it on ping timeout)."""
        if self.dropped is None:
            self.dropped = reason
            self.items.clear()
            SUBSCRIBERS_DROPPED.labels(self.kind).inc()
            if self.on_drop is not None:
                self.on_drop(self)
            self._wake()

    async def get(self) -> Any:
        """The next update; raises :class:`SubscriberDropped` once dropped."""
        while not self.items:
            await self._wait()
        return self.items.popleft()

    async def deliver(self) -> None:
        """Wait while ``offer`` writes this shared subscriber's frames, until the socket is closed (returns),
        dropped (:class:`SubscriberDropped`), a send fails otherwise (its exception) or cancelled."""
        if self.outlet is None:
            raise RuntimeError("deliver() is for shared subscribers (subscribe(..., shape=, outlet=))")
        try:
            while True:
                if isinstance(self.failed, ClientGone):
                    return
                if self.failed is not None:
                    raise self.failed
                await self._wait()
        finally:
            writer, self.writer = self.writer, None
            if writer is not None:
                writer.cancel()

    async def _finish(self, outlet: Outlet, rest: Awaitable[None]) -> None:
        """The writer: the send that had to wait, then what queued behind it, then back to ``offer``."""
        try:
            await rest
            while self.items and self.dropped is None:
                later = outlet.start(self.items.popleft())
                if later is not None:
                    await later
        except Exception as exc:  # the client went away
            self._fail(exc)
        finally:
            self.writer = None

    def _fail(self, exc: BaseException) -> None:
        self.failed = exc
        self.items.clear()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        if self.dropped is not None:
            raise SubscriberDropped(self.dropped)
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None


class Group:
    """The shared subscribers of one shape: each update encoded once, framed once per operation id.

    :meth:`offer` is the fan-out's inner loop, run once per subscriber per event: the usual delivery (the
    subscriber neither dropped, failed nor waiting on a slow send, and its socket takes the bytes now) is a
    few attribute reads and one call, ``outlet.write``; anything else goes through :meth:`Subscriber.offer`,
    which decides as it always did. ``written`` counts the frames that went the short way."""

    __slots__ = ("members", "shape", "written")

    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self.members: set[Subscriber] = set()
        self.written = 0

    def offer(self, item: Any) -> None:
        payload = self.shape.payload(item)
        frames: dict[str, tuple[Any, bytes]] = {}  # by outlet prefix: one frame per operation id
        written = 0
        for sub in tuple(self.members):
            outlet = sub.outlet
            assert outlet is not None
            framed = frames.get(outlet.prefix)
            if framed is None:
                frame = outlet.frame(payload)
                framed = frames[outlet.prefix] = (frame, outlet.wire(frame))
            write = outlet.write
            if write is not None and sub.writer is None and sub.dropped is None and sub.failed is None:
                try:
                    if write(framed[1]):
                        written += 1
                        continue
                except Exception as exc:  # the client went away: ends this subscription, not the feed
                    sub._fail(exc)
                    continue
            sub.offer(framed[0])
        self.written += written


def _ms(iso: str) -> int:
    return int(round(datetime.fromisoformat(iso).timestamp() * 1000))


def _market(m: dict[str, Any]) -> MarketKey:
    """The market a message is about; no ``exchange`` means the ``unknown`` venue."""
    raw = m.get("exchange", UNKNOWN)
    exchange = normalize_exchange(raw)
    if exchange is None:
        raise ValueError(f"exchange {raw!r} is not a venue name")
    symbol = m["symbol"]
    if not isinstance(symbol, str):
        raise TypeError(f"symbol {symbol!r} is not a string")
    return exchange, symbol


Channel = tuple[str, str, str, str]  # (kind, exchange, symbol, interval; "" for kinds without one)


class Fanout:
    def __init__(
        self, settings: Settings, store: ReadStore, board: StatusBoard, catalog: MarketCatalog | None = None
    ) -> None:
        self.settings = settings
        self.store = store
        self.board = board
        self.catalog = catalog
        self.topic = settings.kafka_candles_topic
        self.channels: dict[Channel, set[Subscriber | Group]] = {}
        self.groups: dict[Hashable, Group] = {}  # shape key -> its shared subscribers
        self.rollups: dict[MarketKey, dict[str, RollUp]] = {}  # market -> interval -> roll-up
        self.recent: dict[MarketKey, deque[Bar]] = {}  # market -> closed 1 s candles, oldest first
        self.open_seconds: dict[MarketKey, dict[int, Bar]] = {}  # market -> newest in-progress 1 s candles
        self.frontier: dict[MarketKey, int] = {}  # market -> every 1 s window before this is final
        self.subscribers = 0
        self.malformed = 0
        self.ready = asyncio.Event()  # positioned at the log end, delivering
        # Where reading goes on after an interruption (per partition, the offset after the last read), so
        # nothing published meanwhile is skipped; and whether messages are only being folded in, not
        # delivered (catching up on what the store may not hold yet, see :meth:`_catch_up`).
        self._next: dict[TopicPartition, int] = {}
        self._quiet = False
        self._seed_locks: dict[tuple[MarketKey, str], asyncio.Lock] = {}
        self.idle: dict[tuple[MarketKey, str], float] = {}  # unwatched roll-up -> when its last viewer left

    # ------------------------------------------------------------------ Kafka
    async def run(self, stop: asyncio.Event) -> None:
        """Read the candles topic from its end until ``stop``; reconnect with backoff on broker errors."""
        backoff = 0.5
        interrupted = False
        while not stop.is_set():
            consumer: AIOKafkaConsumer | None = None
            try:
                await ensure_topics(self.settings)
                consumer = AIOKafkaConsumer(
                    bootstrap_servers=self.settings.kafka_bootstrap,
                    group_id=None,
                    enable_auto_commit=False,
                    auto_offset_reset="latest",
                    client_id="cryptostream-api",
                    # A live update waits for this when the broker answers a fetch only as its wait ends,
                    # as the embedded broker does (produce to receipt: p50 25 ms, p99 75 ms at 100 ms; p50
                    # 7 ms, p99 14 ms at 20). A broker that answers as data arrives is not slowed; idle,
                    # the feed asks 50 times a second.
                    fetch_max_wait_ms=20,
                    **security_options(self.settings),
                )
                await consumer.start()
                await consumer.topics()  # fetch metadata so the topic's partitions are known
                partitions = sorted(consumer.partitions_for_topic(self.topic) or ())
                if not partitions:
                    raise KafkaError(f"topic {self.topic} has no partitions yet")
                assigned = [TopicPartition(self.topic, p) for p in partitions]
                consumer.assign(assigned)
                if interrupted and await self._resume(consumer, assigned):
                    where = "where it was interrupted"
                else:
                    await self._catch_up(consumer, assigned)
                    await self.resync()  # roll-ups in use: seeded again from the store and those seconds
                    where = "its end"
                for tp in assigned:  # where to read on from if interrupted before anything arrives
                    self._next[tp] = await consumer.position(tp)
                interrupted = False
                self.ready.set()
                backoff = 0.5
                log.info("live feed: reading %s (%d partitions) from %s", self.topic, len(assigned), where)
                while not stop.is_set():
                    batch = await consumer.getmany(timeout_ms=250, max_records=10_000)
                    for tp, records in batch.items():
                        for i in range(0, len(records), FEED_CHUNK):
                            chunk = records[i : i + FEED_CHUNK]
                            self.feed((r.value for r in chunk), newest_ms=chunk[-1].timestamp)
                            self._next[tp] = chunk[-1].offset + 1
                            await asyncio.sleep(0)  # let subscribers drain between chunks of a burst
            except Exception as exc:  # the feed must outlive any failure: broker down, or a bug
                self.ready.clear()
                interrupted = True
                expected = isinstance(exc, (KafkaError, OSError))
                log.log(
                    logging.WARNING if expected else logging.ERROR,
                    "live feed: %s %s (%s); retrying in %.1fs",
                    self.topic,
                    "unreachable" if expected else "failed",
                    exc,
                    backoff,
                    exc_info=None if expected else exc,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, 10.0)
            finally:
                if consumer is not None:
                    await consumer.stop()
        self.ready.clear()

    async def _resume(self, consumer: AIOKafkaConsumer, assigned: list[TopicPartition]) -> bool:
        """After an interruption, read on from where the feed was, if the log still holds it: the
        messages published meanwhile are delivered late rather than skipped (a minute closed after the gap
        would otherwise miss the gap's seconds, and 1 s subscribers would never get them)."""
        if any(tp not in self._next for tp in assigned):
            return False
        first = await consumer.beginning_offsets(assigned)
        end = await consumer.end_offsets(assigned)
        if any(not first[tp] <= self._next[tp] <= end[tp] for tp in assigned):
            return False  # the log is not what it was (a broker that forgot it): catch up instead
        for tp in assigned:
            consumer.seek(tp, self._next[tp])
        return True

    async def _catch_up(self, consumer: AIOKafkaConsumer, assigned: list[TopicPartition]) -> None:
        """Position at the log end, having folded in (delivering nothing) what was published in the last
        ``CATCH_UP_CHECKPOINTS`` checkpoint intervals plus the buffer: closed seconds the processor has not
        checkpointed yet are in neither the store nor this process otherwise, and a roll-up seeded without
        them would publish a minute or a day without them."""
        self.recent.clear()
        self.open_seconds.clear()
        lookback = (
            CATCH_UP_CHECKPOINTS * self.settings.parquet_chunk_seconds + self.settings.max_buffer_seconds
        )
        since = int((time.time() - lookback) * 1000)
        end = await consumer.end_offsets(assigned)
        try:
            found = await consumer.offsets_for_times(dict.fromkeys(assigned, since))
        except KafkaError as exc:  # a broker without timestamp lookups: from the end, as before
            log.warning("live feed: cannot look up offsets by time (%s); reading from the end only", exc)
            found = {}
        for tp in assigned:
            at = found.get(tp)
            if at is None:
                await consumer.seek_to_end(tp)
            else:
                consumer.seek(tp, at.offset)
        self._quiet = True
        folded = 0
        deadline = time.monotonic() + CATCH_UP_TIMEOUT_SECONDS
        try:
            while time.monotonic() < deadline:
                positions = {tp: await consumer.position(tp) for tp in assigned}
                if all(positions[tp] >= end[tp] for tp in assigned):
                    break
                batch = await consumer.getmany(timeout_ms=250, max_records=10_000)
                for tp, records in batch.items():
                    self.feed(r.value for r in records)
                    self._next[tp] = records[-1].offset + 1
                    folded += len(records)
                    await asyncio.sleep(0)
        finally:
            self._quiet = False
        if folded:
            log.info("live feed: folded in the last %.0f s of %s (%d messages)", lookback, self.topic, folded)

    # ------------------------------------------------------------------ delivery
    def feed(self, values: Iterable[bytes | None], newest_ms: int | None = None) -> None:
        """Decode and deliver messages of the candles topic. Malformed ones are counted and skipped."""
        if self.idle:
            self.sweep()
        for raw in values:
            try:
                decoded = orjson.loads(raw) if raw else None
                message: dict[str, Any] = decoded if isinstance(decoded, dict) else {}
                kind = message.get("type")
                if kind == "candle":
                    self._candle(message)
                elif kind == "status":
                    self._status(message)
                elif kind == "feed":
                    self.board.update_feed(message)
                elif kind == "frontier":
                    self._frontier(message)
                elif kind == "volatility":
                    self._publish(kind, message, Volatility.from_message)
                elif kind == "predictions":
                    self._publish(kind, message, Prediction.from_message)
                else:
                    raise ValueError(f"unknown message type {kind!r}")
                FEED_MESSAGES.labels(kind).inc()
            except (orjson.JSONDecodeError, KeyError, ValueError, TypeError) as exc:
                self.malformed += 1
                FEED_MESSAGES.labels("malformed").inc()
                if self.malformed <= 10 or self.malformed % 1000 == 0:
                    log.warning("live feed: skipped malformed message #%d (%s)", self.malformed, exc)
        if newest_ms is not None:
            FEED_DELAY.observe(max(0.0, time.time() - newest_ms / 1000))

    def _publish(self, kind: str, message: dict[str, Any], build: Any) -> None:
        exchange, symbol = _market(message)
        if self._quiet:
            return
        subs = self.channels.get((kind, exchange, symbol, ""))
        if subs:
            item = build({**message, "exchange": exchange})
            for sub in tuple(subs):
                sub.offer(item)

    def _candle(self, m: dict[str, Any]) -> None:
        if m.get("interval", "1s") != "1s":
            raise ValueError(f"expected 1s candles on the feed, got interval {m.get('interval')!r}")
        market = _market(m)
        bar = Bar.from_message(m, _ms(m["bucket"]))
        closed = bool(m.get("closed"))
        if self.catalog is not None:
            self.catalog.live.add(market)
        open_seconds = self.open_seconds.setdefault(market, {})
        if closed:
            recent = self.recent.get(market)
            if recent is None:
                recent = self.recent[market] = deque(maxlen=RECENT_SECONDS)
            if not recent or bar.bucket > recent[-1].bucket:
                recent.append(bar)
            self._advance_open(market, bar.bucket + 1000)
        elif bar.bucket >= self.frontier.get(market, -(2**62)):
            open_seconds[bar.bucket] = bar
        if self._quiet:
            return  # catching up: roll-ups are seeded again afterwards
        for interval, rollup in list(self.rollups.get(market, {}).items()):  # a drop may forget one
            updates = rollup.closed_second(bar) if closed else rollup.live_second(bar)
            self._deliver(market, interval, updates)

    def _advance_open(self, market: MarketKey, frontier: int) -> None:
        if frontier > self.frontier.get(market, -(2**62)):
            self.frontier[market] = frontier
            open_seconds = self.open_seconds.get(market)
            if open_seconds:
                for second in [s for s in open_seconds if s < frontier]:
                    del open_seconds[second]

    def _frontier(self, m: dict[str, Any]) -> None:
        """Every 1 s window of the market before this is final (the processor says so about once a second
        when progress moved it, in the market's partition, after its closed candles): a quiet market's
        minute or hour closes on it."""
        market = _market(m)
        frontier = int(m["closed_through_ms"])
        self._advance_open(market, frontier)
        if self._quiet:
            return
        for interval, rollup in list(self.rollups.get(market, {}).items()):
            self._deliver(market, interval, rollup.advance(frontier))

    def _status(self, m: dict[str, Any]) -> None:
        # The status message's close frontiers are NOT applied to roll-ups: status travels in its own
        # partition (key "__status__"), so it can be read before the closed candles it covers, which sit in
        # the symbol's partition; closing a minute on it would drop those seconds. Closed candles carry the
        # frontier in order with the data.
        self.board.update(m)

    def _deliver(self, market: MarketKey, interval: str, updates: list[tuple[Bar, bool]]) -> None:
        if not updates:
            return
        subs = self.channels.get(("candles", *market, interval))
        if not subs:
            return
        for bar, closed in updates:
            item = CandleUpdate.from_bar(*market, interval, bar, closed)
            for sub in tuple(subs):
                sub.offer(item)

    # ------------------------------------------------------------------ subscriptions
    @contextlib.asynccontextmanager
    async def subscribe(
        self,
        kind: str,
        markets: list[MarketKey],
        interval: str = "1s",
        shape: Shape | None = None,
        outlet: Outlet | None = None,
    ) -> AsyncIterator[Subscriber]:
        """Register a subscriber for ``kind`` updates of ``markets`` until the block exits. With ``shape`` and
        ``outlet`` it is a shared subscriber: updates are encoded once for its shape's group and written to
        ``outlet`` as they come, while its subscription waits in :meth:`Subscriber.deliver`."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if (shape is None) != (outlet is None):
            raise ValueError("shape and outlet go together: both for shared delivery, neither without")
        if self.subscribers >= self.settings.api_max_subscribers:
            raise InputError(
                f"this API process already serves {self.subscribers} live subscriptions "
                "(API_MAX_SUBSCRIBERS); try again later or another replica",
                code="TOO_MANY_SUBSCRIPTIONS",
                status=503,
            )
        channels: list[Channel] = [
            (kind, exchange, symbol, interval if kind == "candles" else "") for exchange, symbol in markets
        ]
        queue = self.settings.api_subscriber_queue
        sub = Subscriber(kind, queue, on_drop=lambda s: self._release(s, channels), outlet=outlet)
        self.subscribers += 1
        SUBSCRIBERS.labels(kind).inc()
        try:
            for market, channel in zip(markets, channels, strict=True):
                if kind == "candles":
                    self.idle.pop((market, interval), None)
                    latest = (await self._rollup(market, interval)).latest()
                    if latest is not None:  # show the open candle right away, not at the next trade
                        item = CandleUpdate.from_bar(*market, interval, latest, False)
                        if shape is not None and outlet is not None:
                            sub.offer(outlet.frame(shape.payload(item)))  # to this subscriber alone
                        else:
                            sub.offer(item)
                if not sub.released:
                    self.channels.setdefault(channel, set()).add(self._join(sub, shape))
            yield sub
        finally:
            self._release(sub, channels)

    def _join(self, sub: Subscriber, shape: Shape | None) -> Subscriber | Group:
        """What the channels hold for ``sub``: itself, or the group of its shape with ``sub`` a member."""
        if shape is None:
            return sub
        group = self.groups.get(shape.key)
        if group is None:
            group = self.groups[shape.key] = Group(shape)
        group.members.add(sub)
        sub.group = group
        return group

    def _release(self, sub: Subscriber, channels: list[Channel]) -> None:
        """Unregister ``sub`` (when its subscription ends, or at once when it is dropped); idempotent."""
        if sub.released:
            return
        sub.released = True
        self.subscribers -= 1
        SUBSCRIBERS.labels(sub.kind).dec()
        held: Subscriber | Group = sub
        if sub.group is not None:
            group = held = sub.group
            group.members.discard(sub)
            if group.members:
                return  # the channels keep the group for its other members
            if self.groups.get(group.shape.key) is group:
                del self.groups[group.shape.key]
        for channel in channels:
            subs = self.channels.get(channel)
            if subs is not None:
                subs.discard(held)
                if not subs:
                    del self.channels[channel]
            if sub.kind == "candles" and channel not in self.channels:  # nobody else watches it: kept a while
                self.idle[((channel[1], channel[2]), channel[3])] = time.monotonic()
        self.sweep()

    def sweep(self, now: float | None = None) -> None:
        """Forget the roll-ups nobody has watched for :data:`KEEP_IDLE_SECONDS`."""
        now = time.monotonic() if now is None else now
        for key, since in list(self.idle.items()):
            if now - since >= KEEP_IDLE_SECONDS:
                del self.idle[key]
                self._forget_rollup(*key)

    async def resync(self) -> None:
        """After the feed caught up at the log end (:meth:`_catch_up`, when it could not read on from where
        it was): the seconds it missed are in the store (checkpointed) or among the recent seconds it just
        folded in. Re-seed every roll-up in use from those, before anything more is delivered, so a minute
        or hour closed after the gap holds the gap's seconds instead of leaving them out."""
        in_use = [(m, i) for m, by in self.rollups.items() for i in by if (m, i) not in self.idle]
        self.idle.clear()  # unwatched ones are not worth a store read: seeded again if someone comes back
        self.rollups.clear()
        for market, interval in in_use:
            await self._rollup(market, interval)
        if in_use:
            log.info("live feed: re-seeded %d roll-up(s) from the store after the interruption", len(in_use))

    def _forget_rollup(self, market: MarketKey, interval: str) -> None:
        by_interval = self.rollups.get(market)
        if by_interval is not None:
            by_interval.pop(interval, None)
            if not by_interval:
                del self.rollups[market]

    async def _rollup(self, market: MarketKey, interval: str) -> RollUp:
        """The shared roll-up of ``market`` at ``interval``, seeded on first use."""
        existing = self.rollups.get(market, {}).get(interval)
        if existing is not None:
            return existing
        lock = self._seed_locks.setdefault((market, interval), asyncio.Lock())
        async with lock:
            existing = self.rollups.get(market, {}).get(interval)
            if existing is not None:
                return existing
            interval_ms = INTERVALS[interval]
            rollup = RollUp(interval_ms)
            minutes: list[Bar] = []
            stored: list[Bar] = []
            if interval_ms > 1000:
                reference = self._reference_ms(market)
                if reference is None:
                    reference = await self._stored_reference_ms(market)
                known = reference is not None  # else nothing of the market yet: now, by the wall clock
                if reference is None:
                    reference = int(time.time() * 1000)
                # From the oldest bucket not final yet: just after an hour began, the frontier (which
                # trails the newest second by the buffer) is still in the hour before, and that hour,
                # seeded from the recent seconds alone, was published closed with 900 of its 3,600.
                oldest = min(reference, self.frontier.get(market, reference))
                start = oldest - oldest % interval_ms
                end = reference - reference % interval_ms + interval_ms
                split = self._split_ms(market, start, reference) if interval_ms > MINUTE_MS else start
                if split > start:
                    minutes = await self._stored(market, start, split, "1m")
                stored = await self._stored(market, split, end, "1s")
                if known:  # nothing before what was seeded is ever published (from what seconds come again)
                    rollup.done_before = start
            # No await from here on: what arrived meanwhile is in recent/open_seconds, so nothing is missed.
            for minute in minutes:
                rollup.closed_second(minute, advance=False, through=minute.bucket + MINUTE_MS - 1000)
            seconds = {bar.bucket: bar for bar in stored}
            for bar in self.recent.get(market, ()):
                seconds[bar.bucket] = bar
            if interval_ms > 1000:
                for second in sorted(seconds):
                    rollup.closed_second(seconds[second], advance=False)
            if market in self.frontier:  # what the live stream itself has closed
                rollup.advance(self.frontier[market])
            for second in sorted(self.open_seconds.get(market, {})):
                rollup.live_second(self.open_seconds[market][second])
            self.rollups.setdefault(market, {})[interval] = rollup
            return rollup

    def _split_ms(self, market: MarketKey, start: int, reference: int) -> int:
        """Where seeding a roll-up coarser than a minute switches from the store's 1 m candles to its 1 s
        rows: the minute holding the oldest second this process holds for ``market``. Every second before it
        is the store's alone (none of them is among the recent seconds that override the store's), so whole
        minutes of it seed the roll-up as well as their seconds would, and a day is seeded from at most 1,440
        minutes and the seconds of the last minutes (``RECENT_SECONDS`` and less), not 86,400 rows."""
        held = [reference, *self.open_seconds.get(market, {})]
        recent = self.recent.get(market)
        if recent:
            held.append(recent[0].bucket)
        oldest = min(held)
        return max(start, oldest - oldest % MINUTE_MS)

    def _reference_ms(self, market: MarketKey) -> int | None:
        """The newest event time this process has seen for ``market`` (event time, not the wall clock)."""
        candidates = list(self.open_seconds.get(market, {}))
        recent = self.recent.get(market)
        if recent:
            candidates.append(recent[-1].bucket)
        return max(candidates) if candidates else None

    async def _stored_reference_ms(self, market: MarketKey) -> int | None:
        """The newest stored second of ``market`` (None: none stored, or the store is down)."""
        try:
            table = await self.store.latest_candle(*market)
        except Exception as exc:  # the store being down must not stop live updates
            log.warning("live feed: no latest candle of %s from the store (%s)", "/".join(market), exc)
            table = None
        if table is not None and table.num_rows:
            return int(table["bucket"][0].value)
        return None

    async def _stored(self, market: MarketKey, start: int, end: int, interval: str) -> list[Bar]:
        """The store's candles of ``market`` at ``interval`` in ``[start, end)``, as roll-up input."""
        try:
            table = await self.store.candles(
                *market,
                start=from_ms(start),
                end=from_ms(end),
                limit=(end - start) // INTERVALS[interval],
                interval=interval,
            )
        except Exception as exc:  # the store being down must not stop live updates
            log.warning(
                "live feed: seeding %s from the store failed (%s); using recent seconds only",
                "/".join(market),
                exc,
            )
            return []
        # Seconds without a trade count or VWAP (an archive of the original project) cannot be folded into
        # a live candle without making those up; the live seconds of the bucket still are.
        table = table.filter(reduce(pc.and_, (pc.is_valid(table[name]) for name in _ROLLUP_FIELDS)))
        columns = [table["bucket"].cast("int64").to_pylist()]
        columns += [table[name].to_pylist() for name in Bar.FIELDS]
        return [Bar.of(*row) for row in zip(*columns, strict=True)]
