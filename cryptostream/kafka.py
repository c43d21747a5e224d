"""Kafka helpers shared by every role: topic creation, producer and consumer construction.

Everything here speaks the plain Kafka protocol through aiokafka, so it works the same against Apache
Kafka (the distributed shape) and the embedded Tansu broker. Where the broker lacks a feature (Tansu has no
idempotent producer), :func:`start_producer` falls back and logs it once per process.

Every client built anywhere in the code base takes :func:`security_options` (TLS and SASL from the settings);
``tests/unit/test_kafka_security.py`` fails when a new ``AIOKafka*`` constructor does not.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context

from cryptostream.errors import InfraError, SettingsError
from cryptostream.procs import describe_os_error, wait_for_service
from cryptostream.settings import Settings

__all__ = ["consumer_for", "ensure_topics", "security_options", "start_producer", "wait_for_broker"]

log = logging.getLogger(__name__)


def security_options(settings: Settings) -> dict[str, Any]:
    """The aiokafka keyword arguments of KAFKA_SECURITY_PROTOCOL and its KAFKA_SASL_* / KAFKA_SSL_* settings
    (consistent by then: :class:`Settings` refuses a combination that cannot work)."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        try:  # no CA file = the system's trusted CAs, as a managed Kafka's public certificate needs
            options["ssl_context"] = create_ssl_context(
                cafile=settings.kafka_ssl_cafile,
                certfile=settings.kafka_ssl_certfile,
                keyfile=settings.kafka_ssl_keyfile,
            )
        except (ssl.SSLError, OSError) as exc:  # the files exist (checked at start-up) but do not load
            raise SettingsError(f"{_bad_pem(settings)} could not be loaded: {exc}") from None
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        assert settings.kafka_sasl_password is not None  # Settings requires it with a SASL protocol
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism or "PLAIN"
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return options


def _bad_pem(settings: Settings) -> str:
    """Which setting made the SSL context fail: the CA file alone, or else the client certificate and key."""
    try:
        create_ssl_context(cafile=settings.kafka_ssl_cafile)
    except (ssl.SSLError, OSError):
        return "KAFKA_SSL_CAFILE"
    return "KAFKA_SSL_CERTFILE / KAFKA_SSL_KEYFILE"


def _servers(bootstrap: str) -> list[tuple[str, int]]:
    out = []
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        if not host or not (port.isascii() and port.isdigit()):
            host, port = server.strip(), "9092"
        out.append((host.strip("[]"), int(port)))
    return out


async def _metadata(bootstrap: str, settings: Settings) -> None:
    """One metadata round trip. A plain TCP connect first gives a clear reason (refused, unknown host) and
    spares the log aiokafka's own error lines for a broker that is not there yet."""
    last: OSError | None = None
    for host, port in _servers(bootstrap):
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        except OSError as exc:
            last = exc
            continue
        writer.close()
        await writer.wait_closed()
        break
    else:
        assert last is not None
        raise last
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=5000, **security_options(settings)
    )
    client_log = logging.getLogger("aiokafka")
    level = client_log.level
    client_log.setLevel(logging.CRITICAL)  # a broker still starting is retried, not an error
    try:
        await admin.start()
        await admin.list_topics()
    finally:
        client_log.setLevel(level)
        await admin.close()


def _kafka_reason(exc: BaseException) -> str:
    if isinstance(exc, KafkaError):
        return f"it does not answer as a Kafka broker ({type(exc).__name__})"
    return describe_os_error(exc)


async def wait_for_broker(
    bootstrap: str,
    timeout: float = 30.0,  # noqa: ASYNC109
    *,
    settings: Settings,
) -> None:
    """Return once the broker at ``bootstrap`` answers metadata requests, connecting as ``settings`` say (TLS,
    SASL), retrying with backoff (each retry logged); raise :class:`InfraError`, one line naming
    KAFKA_BOOTSTRAP and ``bootstrap``, after ``timeout`` seconds."""
    security_options(settings)  # a certificate that does not load is a settings error, not retried
    await wait_for_service(
        lambda: _metadata(bootstrap, settings),
        setting="KAFKA_BOOTSTRAP",
        address=bootstrap,
        timeout=timeout,
        retry_on=(KafkaError, OSError),
        reason=_kafka_reason,
    )


async def ensure_topics(settings: Settings, bootstrap: str | None = None) -> None:
    """Create the trades, candles and dead-letter topics if they do not exist yet."""
    servers = bootstrap or settings.kafka_bootstrap
    if not servers:
        raise InfraError("KAFKA_BOOTSTRAP is not set (or run `cryptostream up`, which starts a broker)")
    wanted = {
        settings.kafka_topic: settings.kafka_partitions,
        settings.kafka_candles_topic: settings.kafka_partitions,
        settings.kafka_dlq_topic: 1,
    }
    admin = AIOKafkaAdminClient(
        bootstrap_servers=servers, request_timeout_ms=10_000, **security_options(settings)
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        if settings.kafka_topic in existing:
            await _say_fewer_partitions(admin, settings)
        missing = [
            NewTopic(name, num_partitions=n, replication_factor=1)
            for name, n in wanted.items()
            if name not in existing
        ]
        if missing:
            try:
                response = await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                return  # another role created them between list and create
            for name, code, message in (e[:3] for e in response.topic_errors):
                if code == 0:
                    log.info("created topic %s with %d partition(s)", name, wanted[name])
                elif code != TopicAlreadyExistsError.errno:
                    detail = f"error {code} {message or ''}".strip()
                    raise InfraError(f"could not create Kafka topic {name}: {detail}")
    finally:
        await admin.close()


async def _say_fewer_partitions(admin: AIOKafkaAdminClient, settings: Settings) -> None:
    """Warn when the trades topic has fewer partitions than KAFKA_PARTITIONS asks: an existing topic keeps
    its own (adding partitions moves markets to other partitions mid-stream; this code never does)."""
    for topic in await admin.describe_topics([settings.kafka_topic]):
        have = len(topic.get("partitions") or [])
        if topic.get("topic") == settings.kafka_topic and 0 < have < settings.kafka_partitions:
            log.warning(
                "topic %s already exists with %d partitions: KAFKA_PARTITIONS=%d applies to new topics only "
                "(more partitions move markets between them: stop ingest, let the processors drain, then "
                "alter the topic)",
                settings.kafka_topic,
                have,
                settings.kafka_partitions,
            )


_REFUSED_IDEMPOTENCE: set[str] = set()  # bootstrap servers that refused an idempotent producer


async def start_producer(
    settings: Settings, bootstrap: str | None = None, **overrides: Any
) -> AIOKafkaProducer:
    """A started producer: acks=all, idempotent where the broker supports it (with ``auto`` the broker is
    asked once per process, and a refusal is logged once)."""
    servers = bootstrap or settings.kafka_bootstrap
    options: dict[str, Any] = {
        "bootstrap_servers": servers,
        "acks": "all",
        "linger_ms": settings.kafka_linger_ms,
        "max_batch_size": 1024 * 1024,
        "request_timeout_ms": 30_000,
        "retry_backoff_ms": 200,
        **security_options(settings),
    }
    options.update(overrides)
    auto_refused = settings.kafka_idempotence == "auto" and servers in _REFUSED_IDEMPOTENCE
    if settings.kafka_idempotence != "off" and not auto_refused:
        producer = AIOKafkaProducer(enable_idempotence=True, **options)
        sender_log = logging.getLogger("aiokafka.producer.sender")
        level = sender_log.level
        if settings.kafka_idempotence == "auto":
            sender_log.setLevel(logging.CRITICAL)  # a refusal here is an answer, not an error
        try:
            await producer.start()
            return producer
        except KafkaError as exc:
            await producer.stop()
            if settings.kafka_idempotence == "on":
                raise InfraError(
                    f"KAFKA_IDEMPOTENCE=on but the broker refused an idempotent producer: {exc}"
                ) from exc
            _REFUSED_IDEMPOTENCE.add(str(servers))
            log.info(
                "Kafka at %s does not support idempotent producers: producing with acks=all and retries "
                "(KAFKA_IDEMPOTENCE=off skips the question)",
                servers,
            )
        finally:
            sender_log.setLevel(level)
    producer = AIOKafkaProducer(**options)
    await producer.start()
    return producer


def consumer_for(
    settings: Settings, *topics: str, bootstrap: str | None = None, **overrides: Any
) -> AIOKafkaConsumer:
    """An unstarted consumer in ``CONSUMER_GROUP`` with manual commits (offsets follow durable sinks)."""
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap or settings.kafka_bootstrap,
        "group_id": settings.consumer_group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": settings.max_poll_records,
        "fetch_max_bytes": 64 * 1024 * 1024,
        "max_partition_fetch_bytes": 16 * 1024 * 1024,
        # The embedded broker holds a fetch for the whole max wait when one of its partitions has nothing
        # new, even if others do: at the default 500 ms that stalled a full-speed replay for 0.1-0.5 s at a
        # time (bench/bench_processor.py). 50 ms costs an idle consumer 20 small requests a second.
        "fetch_max_wait_ms": 50,
        "session_timeout_ms": settings.kafka_session_timeout_ms,
        "heartbeat_interval_ms": max(100, min(1_000, settings.kafka_session_timeout_ms // 4)),
        "isolation_level": "read_uncommitted",
        **security_options(settings),
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)
