"""Every role is observable: ``/metrics`` of ingest, processor and API scraped while trades flow, and logs
as JSON lines (LOG_FORMAT=json, what `docker compose logs` ships) or readable lines (LOG_FORMAT=human).

The roles run as real subprocesses configured only by environment variables, as in docker-compose.yml.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

import httpx
import orjson
import psutil
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.integration.roles import (
    Role,
    Samples,
    lag_by_partition,
    listen_port,
    role_env,
    scrape,
    value,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(120)]

PARTITIONS = 4
SYMBOLS = "BTCUSDT,ETHUSDT,SOLUSDT,BNBUSDT,XRPUSDT"


async def records_in(settings) -> int:
    """How many records the trades topic holds, counted by reading it all.

    Not ``end_offsets()``: the embedded Tansu broker answers ListOffsets(latest) with the base offset of the
    last record batch, short by that batch's size (fetch responses carry the right high watermark).
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        parts = [TopicPartition(settings.kafka_topic, p) for p in range(PARTITIONS)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        count = 0
        deadline = asyncio.get_running_loop().time() + 20
        while asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            count += sum(len(messages) for messages in batch.values())
            ends = {tp: consumer.highwater(tp) for tp in parts}
            positions = {tp: await consumer.position(tp) for tp in parts}
            if all(end is not None and positions[tp] >= end for tp, end in ends.items()):
                return count
        raise AssertionError("could not read the trades topic to its end in 20 s")
    finally:
        await consumer.stop()


async def test_ingest_and_processor_metrics_move_and_lag_is_reported_per_partition(make_settings, tmp_path):
    settings = make_settings(
        kafka_partitions=PARTITIONS, symbols=SYMBOLS, max_buffer_seconds=0.5, parquet_chunk_seconds=0.5
    )
    ports = {"ingest": listen_port(), "process": listen_port()}
    roles = [
        Role.start(
            "process", ["process"], role_env(settings, METRICS_PORT=ports["process"], BATCH_SIZE=50), tmp_path
        ),
        Role.start(
            "ingest",
            ["ingest", "--source", "synthetic", "--rate", "400"],
            role_env(settings, METRICS_PORT=ports["ingest"], BATCH_SIZE=50),
            tmp_path,
        ),
    ]
    process, ingest = roles
    try:
        first: dict[str, Samples] = {}

        async def counting() -> bool:
            for role in roles:
                try:
                    first[role.name] = await scrape(ports[role.name])
                except httpx.HTTPError:
                    return False
            return (
                value(first["process"], "cryptostream_trades_in_total", role="processor", source="kafka") or 0
            ) > 0

        await wait_for(
            counting, 45, "both roles serve /metrics and the processor has read trades", roles, 0.5
        )
        for role in roles:  # on loopback unless METRICS_HOST says otherwise (it listened on every interface)
            listening = {
                (c.laddr.ip, c.laddr.port)
                for c in psutil.Process(role.proc.pid).net_connections("tcp")
                if c.status == psutil.CONN_LISTEN
            }
            assert listening == {("127.0.0.1", ports[role.name])}, (role.name, listening)

        async def lag_everywhere() -> bool:
            return set(lag_by_partition(await scrape(ports["process"]), settings.kafka_topic)) == set(
                range(PARTITIONS)
            )

        await wait_for(lag_everywhere, 20, "consumer lag reported for every partition", roles, 0.5)
        await asyncio.sleep(1.5)
        now = {role.name: await scrape(ports[role.name]) for role in roles}

        # ingest: trades received from the source and published to Kafka keep counting up
        for name, labels in (
            ("cryptostream_trades_in_total", {"role": "ingest", "source": "synthetic"}),
            ("cryptostream_trades_out_total", {"role": "ingest"}),
        ):
            before, after = value(first["ingest"], name, **labels), value(now["ingest"], name, **labels)
            assert before is not None and after is not None and after > before, (name, before, after)

        # processor: trades read keep counting up; candles closed and made durable in both sinks
        name, labels = "cryptostream_trades_in_total", {"role": "processor", "source": "kafka"}
        assert value(now["process"], name, **labels) > value(first["process"], name, **labels)
        assert value(now["process"], "cryptostream_candles_total") > 0
        for sink in ("parquet", "postgres"):
            rows = value(now["process"], "cryptostream_sink_rows_total", sink=sink, kind="ohlc")
            assert rows and rows > 0, f"no {sink} rows counted"
        assert value(now["process"], "cryptostream_checkpoint_seconds_count") > 0  # flush latency histogram
        lag = lag_by_partition(now["process"], settings.kafka_topic)
        assert sorted(lag) == list(range(PARTITIONS)) and all(v >= 0 for v in lag.values()), lag

        # once ingest stops, the processor catches up and every partition's lag reads 0
        assert ingest.stop(signal.SIGTERM) == 0, ingest.tail()
        published = await records_in(settings)

        async def caught_up() -> bool:
            now["process"] = await scrape(ports["process"])
            lags = set(lag_by_partition(now["process"], settings.kafka_topic).values())
            return value(now["process"], name, **labels) == published and lags == {0.0}

        try:
            await wait_for(caught_up, 20, "the processor caught up", [process], 0.5)
        except AssertionError as exc:
            read = value(now["process"], name, **labels)
            lags = lag_by_partition(now["process"], settings.kafka_topic)
            raise AssertionError(f"{published} records, {read} read, lag {lags}: {exc}") from None
        assert process.stop(signal.SIGTERM) == 0, process.tail()
    finally:
        for role in roles:
            if role.alive:
                role.stop(signal.SIGKILL, 10)

    for role in roles:
        records = role.records()
        assert records and not [r for r in records if r.get("not_json")], f"{role.name}: non-JSON log lines"
        assert {r["role"] for r in records} == {role.name}
        assert all({"time", "level", "logger", "message"} <= set(r) for r in records)


async def test_api_serves_metrics_of_its_requests(make_settings, tmp_path):
    settings = make_settings()
    port = listen_port()
    api = Role.start("serve", ["serve", "--port", str(port)], role_env(settings), tmp_path)
    try:

        async def healthy() -> bool:
            try:
                async with httpx.AsyncClient(timeout=5) as client:
                    return (await client.get(f"http://127.0.0.1:{port}/health")).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_for(healthy, 30, "the API answers /health", [api], 0.3)

        def health_requests(samples: Samples) -> float:
            return sum(
                v
                for (name, labels), v in samples.items()
                if name == "cryptostream_api_requests_total"
                and dict(labels).get("method") == "GET"
                and dict(labels).get("status") == "200"
                and dict(labels).get("route") != "/metrics"
            )

        before = await scrape(port)
        async with httpx.AsyncClient(timeout=5) as client:
            for _ in range(3):
                assert (await client.get(f"http://127.0.0.1:{port}/health")).status_code == 200
        after = await scrape(port)
        assert health_requests(after) - health_requests(before) == 3, sorted(
            (dict(labels), v)
            for (name, labels), v in after.items()
            if name == "cryptostream_api_requests_total"
        )
    finally:
        code = api.stop(signal.SIGTERM)
    assert code in (0, -signal.SIGTERM), api.tail()  # uvicorn re-raises SIGTERM after a clean shutdown


@pytest.mark.parametrize("fmt", ["json", "human"])
def test_log_format_switches_between_json_lines_and_readable_lines(fmt, make_settings, tmp_path):
    settings = make_settings()
    env = role_env(settings, LOG_FORMAT=fmt)
    done = subprocess.run(
        [sys.executable, "-m", "cryptostream", "migrate"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()
    lines = [line for line in done.stderr.decode().splitlines() if line.strip()]
    assert lines and any("(head)" in line and "is at revision" in line for line in lines), lines
    if fmt == "json":
        records = [orjson.loads(line) for line in lines]  # every line parses
        assert {r["role"] for r in records} == {"migrate"}
        assert all(r["level"] in ("debug", "info", "warning", "error") for r in records)
    else:
        assert not any(line.startswith("{") for line in lines)
        assert all(" migrate " in line for line in lines if "is at revision" in line)
