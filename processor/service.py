"""The consume -> window -> sink -> commit loop: the processor's I/O around :mod:`processor.state`.

Per fetched batch (:func:`cryptostream.fetch.fetch_values`: ``getmany()`` without a Python object per
record): decode and validate in bulk (trades and progress records), dead-letter what is invalid, future or
late, apply the rest to the partition's streams, close what their frontiers passed, compute volatility and
predictions, publish closed and in-progress candles to ``crypto-candles``. Every ``PARQUET_CHUNK_SECONDS``,
and when partitions are revoked or the process stops, a checkpoint makes every closed row durable in every
sink and only then commits offsets (see :mod:`processor.checkpoint` for why that is exactly-once, how
lineages, fencing and dead-letter read-back work).

No clock decides anything stored: windows close when the records say so (progress records or trade times,
see :mod:`processor.state`). The clock only paces checkpoints and live (in-progress) candle updates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiokafka
import numpy as np
import orjson
import pyarrow as pa
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError
from aiokafka.partitioner import DefaultPartitioner

from cryptostream.codec import Rejected, decode_records, encode_dlq
from cryptostream.errors import InfraError, MissingCheckpoint, SinkWriteError
from cryptostream.fetch import Fetched, batch_reading_supported, fetch_values
from cryptostream.kafka import consumer_for, ensure_topics, security_options, start_producer
from cryptostream.metrics import (
    CANDLES,
    CHECKPOINT_SECONDS,
    CONSUMER_LAG,
    LATE,
    PREDICTION_FAILURES,
    REJECTED,
    SINK_ROWS,
    TRADES_IN,
    TRADES_OUT,
)
from cryptostream.settings import Settings
from processor.checkpoint import Checkpoint, CheckpointStore, new_epoch
from processor.model.features import LOOKBACK_SECONDS
from processor.sinks.base import FlushBatch, Lineage, Sink
from processor.sinks.parquet import ParquetSink
from processor.state import Closed, Histories, Interner, PartitionState, closed_candles

__all__ = ["Processor", "ProcessorStats", "Scorer"]

log = logging.getLogger(__name__)

CLOSE_EVERY_S = 0.05  # windows close at most this late after their frontier passes them
FRONTIER_EVERY_S = 1.0  # how often moved frontiers are told to the live feed
SETUP_RETRY_S = 1.0  # a partition whose assignment failed is set up again this often
READ_BACK_S = 15.0  # at most this long reading back the dead letters of a crashed attempt, per try
KEY_CACHE = 100_000  # candle-topic partitions of this many keys are remembered
STATUS_STREAMS = 200  # markets listed in a status message (the most behind); the rest are counted

# A hook turning the histories of the streams that closed candles (each ending with its new ones) into
# extra tables (predictions), all streams in one call.
Scorer = Callable[[Histories], dict[str, pa.Table]]


@dataclass
class ProcessorStats:
    trades: int = 0
    rejected: int = 0
    late: int = 0
    candles: int = 0
    checkpoints: int = 0
    fenced: int = 0
    prediction_failures: int = 0
    last_checkpoint_s: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, processor: Processor) -> None:
        self.processor = processor

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.processor._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.processor._on_assigned(assigned)


class Processor:
    """One processor replica: a member of ``CONSUMER_GROUP`` owning some partitions of the trades topic."""

    def __init__(
        self,
        settings: Settings,
        sinks: list[Sink],
        *,
        scorers: Sequence[Scorer] | None = None,
        store: CheckpointStore | None = None,
    ) -> None:
        self.settings = settings
        self.topic = settings.kafka_topic
        self.sinks = sinks
        self.scorers = list(scorers or [])
        self.parquet = next((s for s in sinks if isinstance(s, ParquetSink)), None)
        self.store = store or CheckpointStore(settings.output_dir, settings.consumer_group, self.topic)
        self.interner = Interner()
        self.parts: dict[int, PartitionState] = {}
        self.tokens: dict[int, str] = {}  # fence token per owned partition (see processor.checkpoint)
        self.pending: dict[int, dict[str, list[pa.Table]]] = {}
        self.suppress: dict[int, set[int]] = {}  # offsets a crashed attempt already dead-lettered
        # where those dead letters begin in the dead-letter partition (the restored checkpoint's dlq offset):
        # a checkpoint saved before the read position passes them keeps it, so they are read back again
        self.read_back_from: dict[int, int] = {}
        self.unsure: dict[int, float] = {}  # assigned partitions whose setup failed -> next retry (monotonic)
        self.stats = ProcessorStats()
        self._unscored: set[tuple[str, str]] = set()  # markets a scorer failed on (logged once each)
        self.buffer_ms = int(settings.max_buffer_seconds * 1000)
        self.future_ms = int(settings.future_tolerance_seconds * 1000)
        # Closed candles kept per stream: the volatility window or the model's lookback, whichever is longer
        # (predictions must come from the stream's own history alone, see processor.model.scorer).
        self.history_ms = (max(settings.volatility_window_seconds, LOOKBACK_SECONDS) + 1) * 1000
        self._lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._last_checkpoint = time.monotonic()
        self._last_close = 0.0
        self._last_frontiers = 0.0
        self._partitioner = DefaultPartitioner()  # Kafka's murmur2: the same partition any client picks
        self._candle_partitions: list[int] = []
        self._key_partitions: dict[bytes, int] = {}  # of the candles topic's partitions (a fixed count)
        self._dlq_partitions: list[int] = []
        self._fatal: BaseException | None = None
        self.ready = asyncio.Event()
        self.member = f"{socket.gethostname()}:{os.getpid()}"

    # ------------------------------------------------------------------ lifecycle
    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then checkpoint everything and leave the group."""
        settings = self.settings
        await ensure_topics(settings)
        for sink in self.sinks:
            await sink.start()
        self._producer = await start_producer(settings)
        self._dlq_partitions = sorted(await self._producer.partitions_for(settings.kafka_dlq_topic))
        self._consumer = consumer_for(settings)
        self._consumer.subscribe([self.topic], listener=_Rebalance(self))
        await self._consumer.start()
        log.info(
            "processor consuming %s as group %s from %s; sinks: %s; archive %s",
            self.topic,
            settings.consumer_group,
            settings.kafka_bootstrap,
            ", ".join(s.name for s in self.sinks),
            settings.output_dir.resolve(),
        )
        if not batch_reading_supported(self._consumer):
            log.warning(
                "aiokafka %s is not one cryptostream/fetch.py was verified on: reading through getmany(), "
                "about 1.3 us per record slower",
                aiokafka.__version__,
            )
        try:
            await self._loop(stop)
            if settings.flush_windows_on_stop:
                await self._drain()
            async with self._lock:
                await self._checkpoint(final=True)
        finally:
            await self._consumer.stop()  # leaves the group; revoke handler has nothing left to flush
            await self._producer.stop()
            for sink in self.sinks:
                await sink.close()
            log.info(
                "processor stopped: %d trades, %d candles, %d rejected, %d late, %d checkpoints",
                self.stats.trades,
                self.stats.candles,
                self.stats.rejected,
                self.stats.late,
                self.stats.checkpoints,
            )

    def _check_fatal(self) -> None:
        if self._fatal is not None:
            raise self._fatal

    async def _loop(self, stop: asyncio.Event) -> None:
        assert self._consumer is not None
        chunk_s = self.settings.parquet_chunk_seconds
        backoff = 0.5
        last_lag = 0.0
        while not stop.is_set():
            self._check_fatal()
            batch = await fetch_values(
                self._consumer, timeout_ms=100, max_records=self.settings.max_poll_records
            )
            now = time.monotonic()
            failed: SinkWriteError | None = None
            async with self._lock:
                self._check_fatal()
                if self.unsure:
                    await self._retry_setup(now)
                for tp, fetched in batch.items():
                    part = self.parts.get(tp.partition)
                    if fetched and part is not None:
                        await self._ingest(part, fetched)
                due = now - self._last_checkpoint >= chunk_s
                # Closing windows costs per call, not per trade: do it every CLOSE_EVERY_S, not per poll.
                if due or now - self._last_close >= CLOSE_EVERY_S:
                    self._last_close = now
                    await self._close_and_publish(now)
                if due:
                    try:
                        await self._checkpoint()
                    except SinkWriteError as exc:
                        failed = exc
            if failed is not None:
                # Keep the rows and retry; stop reading meanwhile so memory stays bounded. Nothing closes
                # meanwhile either: windows close only on what is read.
                log.error("checkpoint aborted, retrying in %.1fs: %s", backoff, failed)
                self._consumer.pause(*self._consumer.assignment())
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                self._last_checkpoint = 0.0
                continue
            if backoff > 0.5:
                backoff = 0.5
                self._consumer.resume(
                    *[tp for tp in self._consumer.assignment() if tp.partition in self.parts]
                )
                log.info("sinks writable again; resumed reading")
            if now - last_lag >= 1.0:
                last_lag = now
                self._report_lag()
                await self._publish([("__status__", self._status())])

    async def _drain(self, limit_s: float = 15.0) -> None:
        """Read to the end of the log before the final checkpoint (``up``: its in-memory broker forgets the
        log, so what the stopped ingest wrote last, its final progress included, is read now or never)."""
        assert self._consumer is not None
        deadline = time.monotonic() + limit_s
        # Stopped before the group gave this processor its partitions (Ctrl+C just after "pipeline up"):
        # without them there was nothing to read, and a whole replay was gone with the broker's memory.
        while time.monotonic() < deadline and (not self.ready.is_set() or self.unsure):
            if not self.ready.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.ready.wait(), 0.2)
                continue
            await asyncio.sleep(0.05)  # a partition whose setup failed: set up again when due
            async with self._lock:
                await self._retry_setup(time.monotonic())
        # Ask the broker for the log ends now: the high watermark of the last fetch can predate the final
        # records the (already stopped) ingest wrote.
        ends = await self._consumer.end_offsets([TopicPartition(self.topic, p) for p in self.parts])
        while time.monotonic() < deadline and any(
            part.position < ends.get(TopicPartition(self.topic, p), 0) for p, part in self.parts.items()
        ):
            batch = await fetch_values(
                self._consumer, timeout_ms=200, max_records=self.settings.max_poll_records
            )
            async with self._lock:
                for tp, fetched in batch.items():
                    part = self.parts.get(tp.partition)
                    if fetched and part is not None:
                        await self._ingest(part, fetched)
        async with self._lock:
            await self._close_and_publish(time.monotonic())
        log.info("read the log to its end before stopping (FLUSH_WINDOWS_ON_STOP)")

    # ------------------------------------------------------------------ data path
    async def _ingest(self, part: PartitionState, fetched: Fetched) -> None:
        values, offsets, stamps = fetched.values, fetched.offsets, fetched.timestamps
        if offsets[0] < part.position:
            # Fetched before a seek (an assignment resets the position): those records were handled already.
            cut = bisect_left(offsets, part.position)
            values, offsets, stamps = values[cut:], offsets[cut:], stamps[cut:]
            if not offsets:
                return
        decoded = decode_records(values, offsets, part.partition, stamps, self.future_ms)
        part.position = offsets[-1] + 1
        TRADES_IN.labels("processor", "kafka").inc(len(offsets))
        self.stats.trades += len(decoded.trades)
        refused = part.apply(self.interner.adopt(decoded.trades), decoded.progress, self.interner)
        if part.refused_streams:  # refused by the cap: forget those no partition here holds either
            codes = np.fromiter(part.refused_streams, np.int64, len(part.refused_streams))
            part.refused_streams.clear()
            for other in self.parts.values():
                codes = codes[~other.holds(codes)]
            self.interner.release(codes.tolist())
        TRADES_OUT.labels("processor").inc(
            len(decoded.trades) - int(refused.late.size + refused.over_cap.size)
        )
        rejected = decoded.rejected
        if refused.late.size or refused.over_cap.size:
            index = {o: i for i, o in enumerate(offsets)}
            cap = self.settings.max_streams_per_partition
            for reason, detail, offs in (
                ("late", "window already closed", refused.late),
                (
                    "stream_cap",
                    f"a new market, and partition {part.partition} already holds "
                    f"MAX_STREAMS_PER_PARTITION={cap} markets; raise MAX_STREAMS_PER_PARTITION (or add "
                    "partitions) to take it",
                    refused.over_cap,
                ),
            ):
                for off in offs.tolist():
                    rejected.append(Rejected(reason, detail, values[index[off]] or b"", part.partition, off))
        done = self.suppress.get(part.partition)
        if done:
            rejected = [r for r in rejected if r.offset not in done]
            if max(done) < part.position:
                del self.suppress[part.partition]
                self.read_back_from.pop(part.partition, None)
        if rejected:
            await self._dead_letter(rejected, part.partition)

    async def _dead_letter(self, rejected: list[Rejected], partition: int) -> None:
        """Dead letters of source partition ``partition`` go to one dead-letter partition, in offset order,
        so a restart can read back what a crashed attempt already wrote (see :meth:`_read_back`)."""
        assert self._producer is not None
        target = self._dlq_target(partition)
        for r in sorted(rejected, key=lambda r: r.offset):
            self.stats.reasons[r.reason] = self.stats.reasons.get(r.reason, 0) + 1
            REJECTED.labels("processor", r.reason).inc()
            if r.reason == "late":
                self.stats.late += 1
                LATE.labels(*self._stream_of(r.raw)).inc()
            else:
                self.stats.rejected += 1
            await self._producer.send(
                self.settings.kafka_dlq_topic,
                encode_dlq(r, stage="processor", source_topic=self.topic),
                partition=target,
                headers=[("reason", r.reason.encode())],
            )

    @staticmethod
    def _stream_of(raw: bytes) -> tuple[str, str]:
        try:
            record = orjson.loads(raw)
            return str(record.get("exchange", "unknown"))[:24], str(record.get("symbol", "?"))[:24]
        except (orjson.JSONDecodeError, AttributeError):
            return "?", "?"

    async def _close_and_publish(self, now: float) -> None:
        live_s = self.settings.live_candle_interval_ms / 1000
        announce = now - self._last_frontiers >= FRONTIER_EVERY_S
        if announce:
            self._last_frontiers = now
        messages: list[tuple[str, bytes]] = []
        for part in self.parts.values():
            closed = part.close(self.interner, self.settings.volatility_window_seconds)
            if closed is not None:
                self._closed(part, closed, messages)
            live = closed_candles(part.live_candles(now, live_s))
            if live is not None:
                messages.extend(_rows_messages("candle", live.to_table(), interval="1s", closed=False))
            if announce:  # after the partition's closed candles, in the same partition of the feed
                for code, frontier in part.frontiers():
                    exchange, symbol = self.interner.name(code)
                    message = {
                        "type": "frontier",
                        "exchange": exchange,
                        "symbol": symbol,
                        "closed_through_ms": frontier,
                    }
                    messages.append((symbol, orjson.dumps(message)))
        if messages:
            await self._publish(messages)

    def _closed(self, part: PartitionState, closed: Closed, messages: list[tuple[str, bytes]]) -> None:
        """Newly closed rows of one partition: pending for the next checkpoint, fan-out messages, scorers."""
        self.stats.candles += closed.ohlc.num_rows
        CANDLES.inc(closed.ohlc.num_rows)
        pending = self.pending.setdefault(part.partition, {})
        for kind, table in (("ohlc", closed.ohlc), ("volatility", closed.volatility)):
            if table.num_rows:
                pending.setdefault(kind, []).append(table)
        messages.extend(_rows_messages("candle", closed.ohlc, interval="1s", closed=True))
        if closed.volatility.num_rows:
            messages.extend(_rows_messages("volatility", closed.volatility))
        for scorer in self.scorers:
            for kind, extra in self._scored(scorer, closed.histories).items():
                if extra.num_rows:
                    pending.setdefault(kind, []).append(extra)
                    messages.extend(_rows_messages(kind, extra))

    def _scored(self, scorer: Scorer, histories: Histories) -> dict[str, pa.Table]:
        """What a scorer makes of the histories. A scorer that raises costs the predictions of the market it
        raised on, never the candles: the pass is scored again market by market, and a market that still
        fails is counted and logged (its traceback once). So which markets get predictions depends on their
        own candles alone, not on which others closed in the same pass."""
        try:
            return scorer(histories)
        except Exception:
            if len(histories) > 1:
                parts: dict[str, list[pa.Table]] = {}
                for stream in histories:
                    for kind, table in self._scored(scorer, Histories.one(*stream)).items():
                        parts.setdefault(kind, []).append(table)
                return {kind: pa.concat_tables(tables) for kind, tables in parts.items()}
            market = (histories.exchanges[0], histories.symbols[0]) if len(histories) else ("", "")
            self.stats.prediction_failures += 1
            PREDICTION_FAILURES.inc()
            if market not in self._unscored:  # once per market: a failing model fails every pass
                self._unscored.add(market)
                log.error(
                    "no predictions for %s %s: the scorer failed (candles and volatility are stored as "
                    "usual; counted in cryptostream_prediction_failures)",
                    *market,
                    exc_info=len(self._unscored) == 1,
                )
            return {}

    async def _publish(self, messages: list[tuple[str, bytes]]) -> None:
        """Hand messages to the producer as one record batch per partition (not one send() per message);
        delivery is awaited by the next checkpoint's flush."""
        assert self._producer is not None
        topic = self.settings.kafka_candles_topic
        if not self._candle_partitions:
            self._candle_partitions = sorted(await self._producer.partitions_for(topic))
        parts = self._candle_partitions
        known = self._key_partitions
        if len(known) > KEY_CACHE:
            known.clear()
        by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
        for key, value in messages:
            raw_key = key.encode()
            partition = known.get(raw_key)
            if partition is None:  # murmur2 in Python costs ~10 us a key: once per symbol, not per message
                partition = known[raw_key] = self._partitioner(raw_key, parts, parts)
            by_partition.setdefault(partition, []).append((raw_key, value))
        for partition, records in by_partition.items():
            start = 0
            while start < len(records):
                batch = self._producer.create_batch()
                end = start
                while (
                    end < len(records)
                    and batch.append(key=records[end][0], value=records[end][1], timestamp=None) is not None
                ):
                    end += 1
                if end == start:  # a single message larger than a batch: send it on its own
                    await self._producer.send(topic, records[start][1], key=records[start][0])
                    end += 1
                else:
                    await self._producer.send_batch(batch, topic, partition=partition)
                start = end

    # ------------------------------------------------------------------ checkpoints
    async def _checkpoint(self, partitions: list[int] | None = None, final: bool = False) -> None:
        """Flush closed rows of ``partitions`` (default: all) to every sink, then commit their offsets."""
        assert self._consumer is not None and self._producer is not None
        started = time.perf_counter()
        chosen = [p for p in (partitions if partitions is not None else list(self.parts)) if p in self.parts]
        if not chosen:
            return
        # Windows behind a frontier must be rows in `pending` before that frontier is saved: a checkpoint
        # keeps only open windows. (Closing runs every CLOSE_EVERY_S, so some may be waiting.)
        await self._close_and_publish(time.monotonic())
        chosen = [p for p in chosen if self._still_owned(p)]
        batch = FlushBatch()
        for p in chosen:
            tables = self.pending.get(p)
            if tables:
                batch.tables[p] = {kind: pa.concat_tables(ts) for kind, ts in tables.items()}
                batch.lineage[p] = Lineage(self.parts[p].epoch, self.parts[p].seq + 1)
        if not batch.tables and not any(self.parts[p].dirty for p in chosen):
            self._last_checkpoint = time.monotonic()
            return
        await self._producer.flush()  # dead letters and published candles are acknowledged first
        dlq_ends = await self._dlq_ends()
        results = await asyncio.gather(*(sink.write(batch) for sink in self.sinks), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        for sink in self.sinks:
            for kind in ("ohlc", "volatility", "predictions"):
                rows = batch.rows(kind)
                if rows:
                    SINK_ROWS.labels(sink.name, kind).inc(rows)
        offsets: dict[TopicPartition, int] = {}
        epochs: dict[int, str] = {}
        for p in chosen:
            part = self.parts.get(p)
            if part is None:
                continue
            if p in batch.tables:
                part.seq += 1
            self.pending.pop(p, None)
            if not self._still_owned(p):
                continue
            dlq = self._dlq_start(p, dlq_ends)
            ckpt = Checkpoint(self.topic, p, part.position, part.epoch, part.seq, dlq, None)
            await asyncio.to_thread(self._save, ckpt, part)
            offsets[TopicPartition(self.topic, p)] = part.position
            epochs[p] = part.epoch
            part.dirty = False
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # The group is rebalancing; the next owner resumes from the previous commit (and its checkpoint).
            log.warning("offset commit skipped (%s); rows are durable and will be rewritten identically", exc)
        else:
            for tp, offset in offsets.items():  # only now can the previous checkpoints go
                await asyncio.to_thread(self.store.prune, tp.partition, epochs[tp.partition], offset)
            if self.parquet is not None:  # committed files of hours event time has left: merged in a thread
                await self.parquet.merge_closed()
        elapsed = time.perf_counter() - started
        CHECKPOINT_SECONDS.observe(elapsed)
        self.stats.checkpoints += 1
        self.stats.last_checkpoint_s = elapsed
        self._last_checkpoint = time.monotonic()
        log.debug("checkpoint of %s in %.1f ms%s", offsets, elapsed * 1000, " (final)" if final else "")

    def _save(self, ckpt: Checkpoint, part: PartitionState) -> None:
        """Snapshot the partition and write its checkpoint (in a thread; the lock keeps the state still).
        A disk that refuses is a failed checkpoint like a sink that does: retried, never half done."""
        ckpt.tables = part.snapshot(self.interner)
        try:
            self.store.save(ckpt)
        except OSError as exc:
            raise SinkWriteError(
                f"cannot write a checkpoint under {self.store.folder(ckpt.partition)}: {exc}"
            ) from exc

    def _still_owned(self, partition: int) -> bool:
        """Whether this process still holds ``partition``'s fence; if not, drop it (another owner has it)."""
        token = self.tokens.get(partition)
        if token is not None and self.store.owns(partition, token):
            return True
        self.stats.fenced += 1
        log.warning(
            "partition %d: another processor owns it now (fence under %s); dropping its state without "
            "writing files or a checkpoint",
            partition,
            self.store.folder(partition),
        )
        self._forget(partition)
        return False

    def _forget(self, partition: int) -> None:
        self.parts.pop(partition, None)
        self.pending.pop(partition, None)
        self.tokens.pop(partition, None)
        self.suppress.pop(partition, None)
        self.read_back_from.pop(partition, None)
        self.unsure.pop(partition, None)
        with contextlib.suppress(KeyError):  # its next owner reports its lag now
            CONSUMER_LAG.remove(self.topic, str(partition))

    def _dlq_start(self, partition: int, ends: dict[int, int]) -> dict[int, int]:
        """The dead-letter offsets a checkpoint of ``partition`` saves: where the next owner starts reading
        back. The ends now, unless a crashed attempt dead-lettered records at or past the read position:
        then the offset those letters begin at (moving past them would have them written again after the
        next crash: the five-SIGKILL test met a checkpoint saved before its partition reached them)."""
        done = self.suppress.get(partition)
        start = self.read_back_from.get(partition)
        if not done or start is None or max(done) < self.parts[partition].position:
            return ends
        target = self._dlq_target(partition)
        return {**ends, target: min(start, ends.get(target, start))}

    def _dlq_target(self, partition: int) -> int:
        """The dead-letter partition of source partition ``partition`` (one, so its letters stay in order)."""
        return self._dlq_partitions[partition % len(self._dlq_partitions)]

    async def _dlq_ends(self) -> dict[int, int]:
        assert self._consumer is not None
        tps = [TopicPartition(self.settings.kafka_dlq_topic, q) for q in self._dlq_partitions]
        ends = await self._consumer.end_offsets(tps)
        return {tp.partition: int(offset) for tp, offset in ends.items()}

    # ------------------------------------------------------------------ rebalancing
    async def _on_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self._lock:
            mine = [tp.partition for tp in revoked if tp.topic == self.topic]
            owned = [p for p in mine if p in self.parts]
            try:
                if owned:
                    await self._checkpoint(owned)
            except Exception as exc:  # aiokafka swallows callback errors: never leave half a state behind
                log.error(
                    "could not checkpoint revoked partitions %s (%s); the next owner re-reads them from "
                    "their last commit",
                    owned,
                    exc,
                )
            finally:
                for p in mine:
                    self._forget(p)
            if mine:
                log.info("partitions revoked: %s", mine)

    async def _on_assigned(self, assigned: list[TopicPartition]) -> None:
        assert self._consumer is not None
        async with self._lock:
            for tp in assigned:
                if tp.topic != self.topic:
                    continue
                await self._setup(tp)
            self.ready.set()

    async def _setup(self, tp: TopicPartition) -> None:
        """Take over one partition: fence, lineage, checkpoint, leftovers of a crash, read position.

        A failure leaves no half state: the partition is paused and set up again from its commit later
        (a missing checkpoint is the exception: that stops the processor, see MissingCheckpoint)."""
        assert self._consumer is not None
        p = tp.partition
        self._forget(p)
        try:
            part = await self._restore(tp)
        except MissingCheckpoint as exc:
            self._fatal = exc
            return
        except Exception as exc:
            self._forget(p)
            self.unsure[p] = time.monotonic() + SETUP_RETRY_S
            self._consumer.pause(tp)
            log.warning(
                "partition %d: taking it over failed (%s: %s); it stays paused and is set up again from "
                "its commit in %.0fs",
                p,
                type(exc).__name__,
                exc,
                SETUP_RETRY_S,
            )
            return
        self._consumer.seek(tp, part.position)
        self._consumer.resume(tp)
        self.parts[p] = part

    async def _retry_setup(self, now: float) -> None:
        assert self._consumer is not None
        assignment = self._consumer.assignment()
        for p, when in list(self.unsure.items()):
            tp = TopicPartition(self.topic, p)
            if tp not in assignment:
                self.unsure.pop(p, None)
            elif when <= now:
                await self._setup(tp)

    async def _restore(self, tp: TopicPartition) -> PartitionState:
        assert self._consumer is not None
        p = tp.partition
        self.tokens[p] = await asyncio.to_thread(self.store.claim, p, self.member)
        committed = await self._consumer.committed(tp)
        lineage: str | None = None
        ckpt: Checkpoint | None = None
        begin: int | None = None
        if committed is not None:
            lineage = await asyncio.to_thread(self.store.lineage, p)
            ckpt = await asyncio.to_thread(self.store.load, p, lineage, committed) if lineage else None
            if ckpt is None or ckpt.tables is None:
                begin = (await self._consumer.beginning_offsets([tp]))[tp]
                if committed <= begin:  # offsets reset to the earliest (as MissingCheckpoint says to do)
                    log.info(
                        "partition %d: the committed offset %d is the log's start and has no checkpoint "
                        "(offsets reset to the earliest): reprocessing the partition from it",
                        p,
                        committed,
                    )
                    committed = None
        if committed is None:
            if begin is None:
                begin = (await self._consumer.beginning_offsets([tp]))[tp]
            epoch = new_epoch()
            removed = await asyncio.to_thread(self.store.start_lineage, p, epoch, begin)
            part = self._new_partition(p, epoch, begin)
            dlq = await self._dlq_ends()
            await asyncio.to_thread(self._save, Checkpoint(self.topic, p, begin, epoch, 0, dlq, None), part)
            await self._consumer.commit({tp: begin})  # the first commit pins the lineage
            log.info(
                "partition %d: no commit yet, new lineage %s from offset %d%s",
                p,
                epoch,
                begin,
                f" (removed {removed} checkpoint(s) of an earlier lineage)" if removed else "",
            )
            return part
        if ckpt is None or ckpt.tables is None:
            raise MissingCheckpoint(
                f"partition {p} of {self.topic}: the committed offset {committed} of group "
                f"{self.settings.consumer_group} has no checkpoint under {self.store.folder(p)} (lineage "
                f"{lineage or 'none'}): OUTPUT_DIR was changed or cleaned. To resume, restore that folder; "
                "to reprocess the topic from its start, use a new CONSUMER_GROUP or reset this group's "
                "offsets to the earliest"
            )
        part = PartitionState.restore(
            ckpt.header(),
            ckpt.tables,
            self.interner,
            self.buffer_ms,
            self.history_ms,
            max_streams=self.settings.max_streams_per_partition,
        )
        removed = 0
        if self.parquet is not None:
            removed = await asyncio.to_thread(self.parquet.remove_uncommitted, p, ckpt.epoch, ckpt.seq)
        done = await self._read_back(p, ckpt)
        if done:
            self.suppress[p] = done
            self.read_back_from[p] = ckpt.dlq[self._dlq_target(p)]
        log.info(
            "partition %d: resuming at offset %d (lineage %s seq %d, %d stream(s)%s%s)",
            p,
            committed,
            ckpt.epoch,
            ckpt.seq,
            part.stream_count(),
            f", {removed} uncommitted file(s) removed" if removed else "",
            f", {len(done)} dead letter(s) already written" if done else "",
        )
        return part

    async def _read_back(self, partition: int, ckpt: Checkpoint) -> set[int]:
        """Offsets of ``partition`` a crashed attempt dead-lettered after ``ckpt`` (so they are not again)."""
        topic = self.settings.kafka_dlq_topic
        target = self._dlq_target(partition)
        start = ckpt.dlq.get(target)
        ends = await self._dlq_ends()
        end = ends.get(target, 0)
        if start is None or start >= end:
            return set()
        reader = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=50,
            **security_options(self.settings),
        )
        deadline = time.monotonic() + READ_BACK_S
        await reader.start()
        # aiokafka's consumer without a group starts a task in start() that its stop() cancels and awaits:
        # cancelled before it ran (a stop right after start: the deadline already passed), that await
        # raised CancelledError out of stop(), and on out of the partition's setup.
        await asyncio.sleep(0)
        done: set[int] = set()
        try:
            dtp = TopicPartition(topic, target)
            reader.assign([dtp])
            reader.seek(dtp, start)
            position = start
            while position < end and time.monotonic() < deadline:
                batch = await reader.getmany(dtp, timeout_ms=500)
                for record in batch.get(dtp, []):
                    position = record.offset + 1
                    try:
                        env = orjson.loads(record.value)
                        source = env["source"]
                    except (orjson.JSONDecodeError, KeyError, TypeError):
                        continue
                    if (
                        env.get("stage") == "processor"
                        and source.get("topic") == self.topic
                        and source.get("partition") == partition
                        and source.get("offset", -1) >= ckpt.offset
                    ):
                        done.add(int(source["offset"]))
                if not batch:
                    position = max(position, await reader.position(dtp))
            if position < end:  # going on would write some of them again: set the partition up later
                raise InfraError(
                    f"read back the dead letters {start}-{end} of {topic} only up to {position} in "
                    f"{READ_BACK_S:.0f}s; the partition waits rather than write any of them twice"
                )
        finally:
            await reader.stop()
        return done

    def _new_partition(self, partition: int, epoch: str, offset: int) -> PartitionState:
        return PartitionState(
            topic=self.topic,
            partition=partition,
            epoch=epoch,
            seq=0,
            position=offset,
            buffer_ms=self.buffer_ms,
            history_ms=self.history_ms,
            max_streams=self.settings.max_streams_per_partition,
        )

    # ------------------------------------------------------------------ reporting
    def _status(self) -> bytes:
        """A status message for the API's ``pipelineStatus``: lag, event time per stream (the
        :data:`STATUS_STREAMS` most behind, and how many there are), counts."""
        assert self._consumer is not None
        partitions = {}
        held = []  # per partition: (newest event ms, market code, closed through ms) of each market
        for p, part in self.parts.items():
            end = self._consumer.highwater(TopicPartition(self.topic, p))
            partitions[str(p)] = {
                "position": part.position,
                "end": end,
                "lag": None if end is None else max(0, end - part.position),
            }
            held.append(part.event_times())
        last, codes, closed = (
            np.concatenate([h[i] for h in held] or [np.empty(0, np.int64)]) for i in range(3)
        )
        seen = last > 0
        last, codes, closed = last[seen], codes[seen], closed[seen]
        total = int(last.size)
        # Bounded, whatever the number of markets (a Kafka record is at most 1 MB): the most behind first.
        order = np.lexsort((closed, codes, last))[:STATUS_STREAMS]
        shown = zip(last[order].tolist(), codes[order].tolist(), closed[order].tolist(), strict=True)
        return orjson.dumps(
            {
                "type": "status",
                "processor": self.member,
                "time_ms": int(time.time() * 1000),
                "partitions": partitions,
                "streams": [
                    dict(
                        zip(("exchange", "symbol"), self.interner.name(code), strict=True),
                        last_event_ms=event_ms,
                        closed_through_ms=through_ms,
                    )
                    for event_ms, code, through_ms in shown
                ],
                "streams_total": total,
                "trades": self.stats.trades,
                "candles": self.stats.candles,
                "late": self.stats.late,
                "rejected": self.stats.rejected,
                "rejected_by_reason": self.stats.reasons,
                "prediction_failures": self.stats.prediction_failures,
                "checkpoints": self.stats.checkpoints,
                "last_checkpoint_ms": round(self.stats.last_checkpoint_s * 1000, 2),
            }
        )

    def _report_lag(self) -> None:
        assert self._consumer is not None
        for p, part in self.parts.items():
            tp = TopicPartition(self.topic, p)
            end = self._consumer.highwater(tp)
            if end is not None:
                CONSUMER_LAG.labels(self.topic, str(p)).set(max(0, end - part.position))


def _rows_messages(kind: str, table: pa.Table, **extra: object) -> list[tuple[str, bytes]]:
    """One JSON message per row for the candles topic, keyed by symbol, tagged with its type.

    Built column-wise: timestamps become ISO 8601 strings (``2023-11-14T22:13:20+00:00``) in one NumPy call
    instead of a ``datetime`` per row."""
    columns: dict[str, list[Any]] = {}
    for name in table.column_names:
        column = table[name]
        if pa.types.is_timestamp(column.type):
            ms = column.cast(pa.int64()).to_numpy()
            stamps = ms.astype("datetime64[ms]")
            text = (
                np.datetime_as_string(stamps, unit="ms")
                if (ms % 1000).any()
                else np.datetime_as_string(stamps, unit="s")
            )
            columns[name] = [t + "+00:00" for t in text.tolist()]
        else:
            columns[name] = column.to_pylist()
    names = [*columns, "type", *extra]
    tail = (kind, *extra.values())
    dumps = orjson.dumps
    symbols = columns["symbol"]
    return [
        (symbol, dumps(dict(zip(names, (*values, *tail), strict=True))))
        for symbol, values in zip(symbols, zip(*columns.values(), strict=True), strict=True)
    ]
