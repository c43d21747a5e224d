"""Scale-out: ``cryptostream process`` replicas in one consumer group, as ``--scale processor=N`` runs them.

Two processors share the partitions, a third joins, trades keep flowing, and one processor is stopped in
the middle of a wave: politely (SIGTERM: final checkpoint, leaves the group) or not (SIGKILL: the group
notices after the session timeout). Each partition's next owner resumes from the committed offset and the
checkpoint in the shared OUTPUT_DIR. In the end PostgreSQL and the Parquet archive each hold exactly the
batch result: no candle lost, none stored twice, no volume counted twice, nothing dead-lettered.
"""

from __future__ import annotations

import asyncio
import math
import signal

import pytest
from aiokafka.partitioner import DefaultPartitioner

from cryptostream.kafka import ensure_topics, start_producer
from ingest.publisher import Publisher
from ingest.synthetic import SyntheticMarket
from tests.conftest import T0, closing_progress
from tests.integration.helpers import db_candles, db_count, parquet_rows, read_topic
from tests.integration.roles import Role, lag_by_partition, listen_port, role_env, scrape, wait_for
from tests.reference import assert_candles_equal, batch_candles, batch_volatility, rows_by_key

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

# Chosen so that Kafka's key partitioner puts at least one symbol on each of the six partitions.
SYMBOLS = ["DOTUSDT", "LTCUSDT", "BTCUSDT", "SOLUSDT", "BCHUSDT", "ETHUSDT", "XRPUSDT", "ETCUSDT"]
PARTITIONS = 6
REBALANCE_S = 45  # Tansu takes seconds to settle a group; a SIGKILLed member is noticed after the session


def waves(n: int, per_wave: int) -> list[list]:
    """Disordered, duplicated trades in ``n`` waves; a quiet gap of event time between waves."""
    market = SyntheticMarket(SYMBOLS, rate=250, seed=23, disorder_ms=800, duplicate_rate=0.03)
    out, start = [], T0
    for _ in range(n):
        wave = market.generate(per_wave, start_ms=start)
        out.append(wave)
        start = max(t.timestamp for t in wave) + 5_000
    return out


def test_every_partition_carries_trades():
    partitioner = DefaultPartitioner()
    parts = list(range(PARTITIONS))
    assert {partitioner(s.encode(), parts, parts) for s in SYMBOLS} == set(parts)


def settled(replicas: list[Role]) -> bool:
    """Every live replica owns at least one partition, and together they own each partition exactly once."""
    owned = [r.owned() for r in replicas]
    union = set().union(*owned)
    return all(owned) and union == set(range(PARTITIONS)) and sum(map(len, owned)) == PARTITIONS


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_processors_join_and_leave_the_group_without_losing_or_double_counting_candles(
    sig, make_settings, db, tmp_path
):
    settings = make_settings(
        kafka_partitions=PARTITIONS,
        max_buffer_seconds=1.0,
        parquet_chunk_seconds=0.5,
        volatility_window_seconds=20,
        max_poll_records=500,
        kafka_session_timeout_ms=4000,  # how soon a SIGKILLed replica's partitions move (if the field exists)
    )
    batches = waves(5, per_wave=2500)
    trades = [t for wave in batches for t in wave]
    expected = batch_candles(trades)
    env = role_env(settings)
    env.setdefault("KAFKA_SESSION_TIMEOUT_MS", "4000")  # the same, should the Settings field be absent
    replicas: list[Role] = []
    ports: dict[str, int] = {}

    def start(name: str) -> Role:
        ports[name] = listen_port()
        role = Role.start(name, ["process"], {**env, "METRICS_PORT": str(ports[name])}, tmp_path)
        replicas.append(role)
        return role

    def live() -> list[Role]:
        return [r for r in replicas if r.alive]

    # One producer for the whole test, as the ingest role has. It writes no progress until the end, when it
    # closes every window it fed, as a source that stops does.
    await ensure_topics(settings)
    producer = await start_producer(settings)
    publisher = Publisher(producer, settings.kafka_topic, batch_size=settings.batch_size, queue_size=50_000)
    await publisher.start()

    async def stream(wave: list, chunks: int = 10, pause: float = 0.15) -> None:
        size = math.ceil(len(wave) / chunks)
        for i in range(0, len(wave), size):
            await publisher.put(wave[i : i + size])
            await asyncio.sleep(pause)

    try:
        # two processors share the six partitions
        start("p1"), start("p2")
        await wait_for(lambda: settled(live()), REBALANCE_S, "two processors own all partitions", live())
        await stream(batches[0])

        # a third joins while the next wave flows
        feeding = asyncio.create_task(stream(batches[1], chunks=20, pause=0.2))
        start("p3")
        await wait_for(lambda: settled(live()), REBALANCE_S, "three processors own all partitions", live())
        await feeding

        # one stops in the middle of a wave: the one owning the most partitions
        feeding = asyncio.create_task(stream(batches[2], chunks=20, pause=0.2))
        await asyncio.sleep(1.5)
        victim = max(live(), key=lambda r: len(r.owned()))
        moved = victim.owned()
        assert moved, "the victim must own partitions for the test to mean anything"
        seen = {r.name: len(r.messages()) for r in live() if r is not victim}
        code = await asyncio.to_thread(victim.stop, sig)
        assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL), victim.tail()
        await feeding
        survivors = live()
        assert len(survivors) == 2
        await wait_for(lambda: settled(survivors), REBALANCE_S, "two survivors own all partitions", survivors)

        # more trades after the hand-over, then the source ends
        await stream(batches[3])
        await stream(batches[4])
        for mark in closing_progress(trades):
            await publisher.put_progress(mark)

        async def all_stored() -> bool:
            return await db_count(settings.database_dsn) >= len(expected) and len(
                parquet_rows(settings.output_dir)
            ) >= len(expected)

        try:
            await wait_for(all_stored, 60, f"all {len(expected)} candles stored", survivors, 0.5)
        except AssertionError as exc:
            missing = sorted(set(expected) - set(rows_by_key(await db_candles(db))))
            late = len(await read_topic(settings, settings.kafka_dlq_topic, expect=10**6, timeout=2))
            raise AssertionError(
                f"missing in the database: {missing[:10]}; {late} dead letters; {exc}"
            ) from None

        async def lag_zero_where_owned() -> bool:
            """Each survivor reports the lag of every partition it owns, and has read them all."""
            for role in survivors:
                lag = lag_by_partition(await scrape(ports[role.name]), settings.kafka_topic)
                if any(lag.get(p) != 0 for p in role.owned()):
                    return False
            return True

        await wait_for(lag_zero_where_owned, 20, "lag 0 on every partition, reported by its owner", survivors)
        for role in survivors:
            assert await asyncio.to_thread(role.stop, signal.SIGTERM) == 0, role.tail()
    finally:
        await publisher.stop()
        await producer.stop()
        for role in replicas:
            if role.alive:
                await asyncio.to_thread(role.stop, signal.SIGKILL, 10)
    assert publisher.acknowledged - publisher.marks == len(trades)

    assert_candles_equal(rows_by_key(await db_candles(db)), expected)
    assert_candles_equal(rows_by_key(parquet_rows(settings.output_dir)), expected)
    vol_db = {
        (r["exchange"], r["symbol"], int(r["bucket"].timestamp() * 1000)): r["volatility"]
        for r in await db.fetch("SELECT exchange, symbol, bucket, volatility FROM volatility_1s")
    }
    vol_expected = batch_volatility(expected, 20)
    assert vol_db.keys() == vol_expected.keys()
    assert all(math.isclose(vol_db[k], v, rel_tol=1e-7, abs_tol=1e-15) for k, v in vol_expected.items())
    assert await read_topic(settings, settings.kafka_dlq_topic, expect=1, timeout=2) == [], "nothing is late"

    # the victim's partitions really changed hands, each resumed from its checkpoint
    resumed = {
        int(m.split()[1].rstrip(":"))
        for r in replicas
        if r.name in seen
        for m in r.messages()[seen[r.name] :]
        if m.startswith("partition ") and "resuming at offset" in m
    }
    assert moved <= resumed, f"partitions {sorted(moved - resumed)} were not resumed from a checkpoint"
    for role in replicas:
        assert not [r for r in role.records() if r.get("not_json")], f"{role.name} wrote non-JSON log lines"
