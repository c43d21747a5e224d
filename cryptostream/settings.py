"""All configuration, read once at start-up from the environment and an optional ``.env`` file.

The names and defaults of the original README are kept (``SYMBOLS``, ``KAFKA_BOOTSTRAP``, ``KAFKA_TOPIC``,
``KAFKA_PARTITIONS``, ``BATCH_SIZE``, ``REPLAY_SPEED``, ``MAX_POLL_RECORDS``, ``CONSUMER_GROUP``,
``OUTPUT_DIR``, ``MAX_BUFFER_SECONDS``, ``PARQUET_CHUNK_SECONDS``). Nothing else in the code base reads
``os.environ``: every role gets a :class:`Settings` instance.

``SYMBOLS=all`` (or a count, ``SYMBOLS=500``) is expanded here, once, into the list it means (see
:func:`cryptostream.markets.whole_market`), so every role sees a plain list of symbols.
"""

from __future__ import annotations

import difflib
import io
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from dotenv.parser import parse_stream  # python-dotenv, which pydantic-settings reads .env with
from pydantic import Field, PrivateAttr, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from cryptostream.errors import SettingsError, UnsupportedSymbol
from cryptostream.symbols import normalize_symbol
from cryptostream.venues import DEMO

__all__ = ["Settings", "load_settings", "mask_url"]

CommaList = Annotated[list[str], NoDecode]

SELECTION = re.compile(r"all|[+-]?\d+", re.IGNORECASE)  # SYMBOLS=all, SYMBOLS=500 (and 0, -1: refused)
SELECTED = "@"  # marks a selection until it is expanded: no symbol contains it
SYMBOLS_FORMS = "`all`, a count >= 1 or a comma list of symbols"


def mask_url(url: str) -> str:
    """``url`` with its password (``user:password@``, or ``password=`` in the query) replaced by ``***``.

    The user part runs to the *last* ``@``, so an unencoded ``@`` in a password leaves no piece of it visible.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, host = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = f"{userinfo.split(':', 1)[0]}:***@{host}"
    return re.sub(r"([?&]password=)[^&]*", r"\1***", scheme + sep + rest)


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Every knob of cryptostream. Environment variable = field name in upper case."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        frozen=True,
        allow_inf_nan=False,  # REPLAY_SPEED=inf, MAX_BUFFER_SECONDS=nan: no setting means either
    )

    # --- what to capture --------------------------------------------------------------------------
    symbols: CommaList = Field(
        default_factory=lambda: ["BTCUSDT", "ETHUSDT", "SOLUSDT"],
        description="Symbols to stream, comma separated; normalized (BTC-USD -> BTCUSD). `all` = every "
        "market trading on EXCHANGES (their market lists: STATE_DIR/markets, else the shipped snapshot; "
        "both exchanges' for the demo alone); a count N = the first N of them, quote currencies with the "
        "most markets first, then the most-listed coins (BTCUSD, ETHUSD, ...).",
    )
    max_symbols: int = Field(
        default=5000,
        ge=1,
        le=100_000,
        description="Most symbols one pipeline is configured for (SYMBOLS); more stops start-up.",
    )
    _symbols_selection: str | None = PrivateAttr(default=None)
    exchanges: CommaList = Field(
        default_factory=lambda: ["binance", "coinbase"],
        description="Exchanges the live source connects to; also the venue order readers prefer when a "
        "request names a symbol but no exchange (`synthetic` = the demo market).",
    )

    # --- Kafka ------------------------------------------------------------------------------------
    kafka_bootstrap: str | None = Field(
        default=None,
        description="Kafka bootstrap servers; unset = `cryptostream up` starts an embedded broker.",
    )
    kafka_topic: str = Field(
        default="crypto-trades", description="Topic of normalized trades (key = symbol)."
    )
    kafka_candles_topic: str = Field(
        default="crypto-candles", description="Topic of live and closed candles."
    )
    kafka_dlq_topic: str = Field(
        default="crypto-trades-dlq", description="Dead-letter topic of rejected trades."
    )
    kafka_partitions: int = Field(default=4, ge=1, le=1024, description="Partitions of the trades topic.")
    kafka_idempotence: Literal["auto", "on", "off"] = Field(
        default="auto", description="Idempotent producer: auto = on where the broker supports it."
    )
    kafka_linger_ms: int = Field(
        default=5, ge=0, le=10_000, description="Producer linger before a batch goes."
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        description="How every Kafka client connects: PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or SASL_SSL "
        "(a managed Kafka: SASL_SSL).",
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, description="SASL mechanism with a SASL_* protocol; unset = PLAIN."
    )
    kafka_sasl_username: str | None = Field(default=None, description="SASL user name (SASL_* protocols).")
    kafka_sasl_password: SecretStr | None = Field(
        default=None, description="SASL password (SASL_* protocols); never logged."
    )
    kafka_ssl_cafile: Path | None = Field(
        default=None,
        description="PEM file of the CAs that sign the broker's certificate (SSL, SASL_SSL); unset = the "
        "system's trusted CAs.",
    )
    kafka_ssl_certfile: Path | None = Field(
        default=None, description="PEM client certificate for mutual TLS (with KAFKA_SSL_KEYFILE)."
    )
    kafka_ssl_keyfile: Path | None = Field(
        default=None, description="PEM private key of KAFKA_SSL_CERTFILE (unencrypted)."
    )

    # --- ingest -----------------------------------------------------------------------------------
    batch_size: int = Field(default=1, ge=1, le=100_000, description="Trades per producer batch.")
    replay_speed: float = Field(
        default=1.0, ge=0.0, description="Replay speed multiplier: 1 = real time, 0 = as fast as possible."
    )
    publish_queue_size: int = Field(
        default=100_000, ge=1, description="Trades held in memory before ingest applies back-pressure."
    )

    # --- exchanges (live source) ------------------------------------------------------------------
    binance_ws_url: str = Field(
        default="wss://stream.binance.com:9443", description="Binance WebSocket base (Binance.US, testnet)."
    )
    binance_rest_url: str = Field(default="https://api.binance.com", description="Binance REST base.")
    binance_stream: Literal["trade", "aggTrade"] = Field(default="trade", description="Binance trade stream.")
    coinbase_feed: Literal["exchange", "advanced"] = Field(
        default="exchange", description="Coinbase Exchange `matches` or Advanced Trade `market_trades`."
    )
    coinbase_ws_url: str = Field(
        default="wss://ws-feed.exchange.coinbase.com", description="Coinbase Exchange WebSocket URL."
    )
    coinbase_advanced_ws_url: str = Field(
        default="wss://advanced-trade-ws.coinbase.com", description="Coinbase Advanced Trade WebSocket URL."
    )
    coinbase_rest_url: str = Field(
        default="https://api.exchange.coinbase.com", description="Coinbase REST base (backfill)."
    )
    ws_stall_seconds: float = Field(
        default=30.0, gt=0, le=3600, description="Reconnect when a feed sends nothing for this long."
    )
    reconnect_max_seconds: float = Field(default=60.0, gt=0, le=3600, description="Cap of reconnect backoff.")
    backfill: bool = Field(default=True, description="Fill trade-id gaps from the exchange's REST history.")
    backfill_hold_seconds: float = Field(
        default=30.0,
        ge=0.0,
        le=3600.0,
        description="How long a live source holds a symbol's progress while it backfills a gap.",
    )
    progress_interval_ms: int = Field(
        default=200,
        ge=10,
        le=60_000,
        description="How often live and synthetic sources write progress records (event time reached).",
    )
    future_tolerance_seconds: float = Field(
        default=10.0,
        ge=0.0,
        le=86_400.0,
        description="Trades stamped further than this ahead of their receipt time are rejected as future.",
    )

    # --- processor --------------------------------------------------------------------------------
    max_poll_records: int = Field(default=500, ge=1, le=1_000_000, description="Max records per poll.")
    consumer_group: str = Field(default="crypto-consumer-group", description="Processor consumer group.")
    kafka_session_timeout_ms: int = Field(
        default=10_000, ge=1_000, le=300_000, description="How long a silent processor keeps its partitions."
    )
    output_dir: Path = Field(default=Path("./data/outputs"), description="Parquet archive root.")
    max_buffer_seconds: float = Field(
        default=5.0, ge=0.0, le=3600.0, description="Out-of-order buffer: watermark = max event time - this."
    )
    parquet_chunk_seconds: float = Field(
        default=10.0, gt=0.0, le=3600.0, description="Flush (and offset commit) interval."
    )
    flush_windows_on_stop: bool = Field(
        default=False,
        description="At shutdown, ingest writes progress that closes the windows it fed and the processor "
        "reads the log to its end first (`up` sets it: its in-memory broker forgets the log).",
    )
    max_streams_per_partition: int = Field(
        default=50_000,
        ge=1,
        le=10_000_000,
        description="Most markets (exchange, symbol) one partition of the trades topic holds; trades of a "
        "new market past it are dead-lettered as `stream_cap`.",
    )
    volatility_window_seconds: int = Field(
        default=60, ge=2, le=86_400, description="Rolling window of the volatility (std of 1 s log returns)."
    )
    live_candle_interval_ms: int = Field(
        default=250, ge=0, le=60_000, description="Throttle of in-progress candle updates per symbol."
    )

    # --- storage ----------------------------------------------------------------------------------
    database_url: SecretStr | None = Field(
        default=None,
        description="PostgreSQL/TimescaleDB URL; unset = `cryptostream up` starts an embedded one.",
    )
    state_dir: Path = Field(
        default=Path("./.cryptostream"), description="Embedded broker/database state (kept between runs)."
    )
    service_wait_seconds: float = Field(
        default=60.0,
        ge=0.0,
        le=3600.0,
        description="How long a command waits at start for Kafka and the database to answer, retrying with "
        "backoff (a service may start after it); 0 = try once.",
    )

    retention_days: int | None = Field(
        default=None,
        ge=4,
        description="TimescaleDB: drop 1 s candles, volatility and predictions older than this (roll-ups and "
        "the archive keep theirs; at least 4: roll-ups are refreshed from the last 3 days of 1 s rows).",
    )
    rollup_retention_days: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=dict,
        description="TimescaleDB: days each roll-up level keeps, e.g. `1m=30,5m=180` (levels 1m, 5m, 1h, 1d; "
        "unset levels keep everything; at least 4).",
    )
    compress_after_days: int = Field(default=7, ge=1, description="TimescaleDB: compress chunks this old.")

    # --- model --------------------------------------------------------------------------------------
    prediction_horizon_seconds: int = Field(
        default=60, ge=1, le=86_400, description="Horizon of the up/down prediction."
    )
    model_dir: Path = Field(default=Path("./data/models"), description="Trained model files and reports.")

    # --- API --------------------------------------------------------------------------------------
    api_host: str = Field(default="127.0.0.1", description="Interface the API binds to.")
    api_port: int = Field(default=8000, ge=1, le=65_535, description="Port of the API and dashboard.")
    api_max_limit: int = Field(default=10_000, ge=1, le=1_000_000, description="Most rows one query returns.")
    graphql_max_depth: int = Field(default=10, ge=2, le=100, description="Deepest GraphQL query accepted.")
    graphql_max_aliases: int = Field(default=30, ge=1, le=1000, description="Most aliases in one query.")
    graphql_max_tokens: int = Field(default=2000, ge=50, le=100_000, description="Most tokens in one query.")
    graphql_max_cost: int = Field(
        default=500_000,
        ge=1_000,
        le=100_000_000,
        description="Most values (rows x fields, each alias counted) one query may return.",
    )
    cors_origins: CommaList = Field(
        default_factory=lambda: ["*"],
        description="Allowed CORS origins (default `*`; with API_PRODUCTION none unless named here).",
    )
    api_production: bool = Field(
        default=False,
        description="Expose the API safely: no GraphiQL, no introspection, no /metrics on the API port, CORS "
        "only to the origins CORS_ORIGINS names (never `*`).",
    )
    api_max_body_bytes: int = Field(
        default=1_000_000,
        ge=1024,
        le=100_000_000,
        description="Largest request body (and WebSocket message) the API accepts; larger ones get HTTP 413.",
    )
    api_cache_seconds: float = Field(
        default=1.0,
        ge=0,
        le=3600,
        description="How long a REST or figure answer (GET /api/...) is kept and shared by all asking the "
        "same; answers are at most this much older than the store (0 = never kept).",
    )
    api_max_subscriptions_per_connection: int = Field(
        default=100, ge=1, le=1_000_000, description="Live subscriptions one WebSocket may hold at once."
    )
    api_max_subscriptions_per_client: int = Field(
        default=1_000,
        ge=1,
        le=1_000_000,
        description="Live subscriptions one client address may hold at once, over all its WebSockets (behind "
        "a proxy every client has the proxy's address: raise it).",
    )
    api_subscriber_queue: int = Field(
        default=1000, ge=1, le=1_000_000, description="Updates queued per live subscriber before dropping it."
    )
    api_max_subscribers: int = Field(
        default=10_000, ge=1, le=1_000_000, description="Live subscriptions one API process accepts."
    )

    metrics_port: int | None = Field(
        default=None, ge=1, le=65_535, description="Port of /metrics for ingest and processor (unset = off)."
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        description="Interface METRICS_PORT binds to (compose sets 0.0.0.0 inside its containers).",
    )

    # --- logs -------------------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="Log level.")
    log_format: Literal["human", "json"] = Field(default="human", description="human or json lines.")

    @field_validator("symbols", "exchanges", "cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return _split_commas(value)

    @field_validator("rollup_retention_days", mode="before")
    @classmethod
    def _level_days(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        out: dict[str, int] = {}
        for part in _split_commas(value):
            level, _, days = part.partition("=")
            level = level.strip()
            if level not in ("1m", "5m", "1h", "1d") or not days.strip().isdigit():
                raise ValueError(f"must be a comma list of LEVEL=DAYS, LEVEL 1m, 5m, 1h or 1d, got {part!r}")
            if int(days) < 4:
                raise ValueError(f"must keep each level 4 days or more (refreshed over 3), got {part!r}")
            out[level] = int(days)
        return out

    @field_validator("symbols")
    @classmethod
    def _normalize_symbols(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must name at least one symbol, e.g. BTCUSDT,ETHUSDT")
        if len(value) == 1 and SELECTION.fullmatch(value[0]):
            word = value[0].lower()
            if word != "all" and int(word) < 1:
                raise ValueError(f"must be {SYMBOLS_FORMS}, got {value[0]!r}")
            return [SELECTED + word.lstrip("+")]  # expanded by _select_symbols, once EXCHANGES is known
        out: list[str] = []
        for raw in value:
            if SELECTION.fullmatch(raw):
                raise ValueError(f"must be {SYMBOLS_FORMS}, not a mix, got {','.join(value)!r}")
            if difflib.SequenceMatcher(None, raw.lower(), "all").ratio() >= 0.75:
                # "alll", "al": a typo of `all` would otherwise be a symbol the demo market happily makes
                raise ValueError(f"must be {SYMBOLS_FORMS}, got {raw!r} (did you mean all?)")
            try:
                symbol = normalize_symbol(raw)
            except UnsupportedSymbol as exc:
                raise ValueError(str(exc)) from None
            if symbol not in out:
                out.append(symbol)
        return out

    @model_validator(mode="after")
    def _select_symbols(self) -> Settings:
        """``all`` / N -> the symbols they mean (by the market lists of EXCHANGES); then MAX_SYMBOLS."""
        if self.symbols[0].startswith(SELECTED):
            from cryptostream import markets  # only here: the market lists are read only for a selection

            word = self.symbols[0].removeprefix(SELECTED)
            listing = [name for name in self.exchanges if name in markets.EXCHANGES]
            listing = listing or list(markets.EXCHANGES)  # the demo alone imitates both exchanges
            catalogs = markets.local_catalogs(listing, self.state_dir / "markets")
            listed = markets.whole_market(catalogs.values())
            object.__setattr__(self, "symbols", listed if word == "all" else listed[: int(word)])  # frozen
            self._symbols_selection = word
        if len(self.symbols) > self.max_symbols:
            raise ValueError(
                f"SYMBOLS names {len(self.symbols)} symbols, more than MAX_SYMBOLS ({self.max_symbols}): "
                "name fewer, or raise MAX_SYMBOLS"
            )
        return self

    @property
    def symbols_selection(self) -> str | None:
        """``all`` or the count SYMBOLS was given as (``symbols`` holds what it means), else ``None``."""
        return self._symbols_selection

    @field_validator("exchanges")
    @classmethod
    def _known_exchanges(cls, value: list[str]) -> list[str]:
        names = [name.lower() for name in value]
        unknown = [name for name in names if name not in ("binance", "coinbase", DEMO)]
        if unknown or not names:
            raise ValueError(
                f"must be a comma list of binance, coinbase, {DEMO}; got {','.join(value) or 'nothing'}"
            )
        return list(dict.fromkeys(names))  # binance,binance opened two feeds: every trade published twice

    @field_validator("kafka_bootstrap")
    @classmethod
    def _host_ports(cls, value: str | None) -> str | None:
        """A comma list of ``host:port`` (``[v6]:port``; a bare host means port 9092), as every Kafka client
        takes it: a scheme, a path or a port out of range was retried for SERVICE_WAIT_SECONDS, or a
        traceback."""
        if value is None or not value.strip():
            return None
        servers = [part.strip() for part in value.split(",") if part.strip()]  # a stray comma names nothing
        for server in servers or [value.strip()]:  # only commas: refused as what it is
            match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(\d{1,5}))?", server)
            if match is None or (match[2] is not None and not 1 <= int(match[2]) <= 65_535):
                raise ValueError(
                    f"must be a comma list of host:port (e.g. localhost:9092, with no scheme), got {server!r}"
                )
        return ",".join(servers)

    @field_validator("api_host", "metrics_host")
    @classmethod
    def _interface(cls, value: str) -> str:
        """A host name or an IP address to bind (``0.0.0.0``, ``::``, ``fe80::1%eth0``): anything else failed
        at the bind, or earlier in a log line, with a traceback."""
        if value.startswith("[") and value.endswith("]"):  # a URL's form of IPv6: the socket takes it bare
            raise ValueError(f"takes an IPv6 address without brackets, got {value!r} (write {value[1:-1]})")
        if not re.fullmatch(r"[A-Za-z0-9._:%-]{1,253}", value):
            raise ValueError(f"must be a host name or an IP address (127.0.0.1, 0.0.0.0, ::), got {value!r}")
        return value

    @field_validator(
        "output_dir",
        "state_dir",
        "model_dir",
        "kafka_ssl_cafile",
        "kafka_ssl_certfile",
        "kafka_ssl_keyfile",
        mode="before",
    )
    @classmethod
    def _home(cls, value: Any) -> Any:
        """``~/data`` is the home folder, as in a shell (a folder named ``~`` was made in the working one)."""
        return Path(value).expanduser() if isinstance(value, str | Path) and str(value).strip() else value

    @field_validator("kafka_topic", "kafka_candles_topic", "kafka_dlq_topic", "consumer_group")
    @classmethod
    def _kafka_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", value):
            raise ValueError(f"must use only letters, digits, '.', '_' and '-', got {value!r}")
        return value

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", "log_level", mode="before")
    @classmethod
    def _upper_case(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value.strip().upper() or None  # sasl_ssl = SASL_SSL; empty = unset
        return value

    @field_validator(
        "kafka_sasl_username",
        "kafka_sasl_password",
        "kafka_ssl_cafile",
        "kafka_ssl_certfile",
        "kafka_ssl_keyfile",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile")
    @classmethod
    def _existing_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"must name an existing PEM file, got '{value}'")
        return value

    @model_validator(mode="after")
    def _kafka_security_consistent(self) -> Settings:
        """Refuse Kafka security settings that would be silently ignored or cannot work (one line each)."""
        protocol = self.kafka_security_protocol
        sasl = protocol.startswith("SASL_")
        tls = protocol.endswith("SSL")
        if sasl:
            if not self.kafka_sasl_username:
                raise ValueError(f"KAFKA_SASL_USERNAME must be set with KAFKA_SECURITY_PROTOCOL={protocol}")
            if self.kafka_sasl_password is None or not self.kafka_sasl_password.get_secret_value():
                raise ValueError(f"KAFKA_SASL_PASSWORD must be set with KAFKA_SECURITY_PROTOCOL={protocol}")
        else:
            for name in ("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password"):
                if getattr(self, name) is not None:
                    raise ValueError(
                        f"{name.upper()} needs KAFKA_SECURITY_PROTOCOL=SASL_SSL or SASL_PLAINTEXT, "
                        f"got {protocol}"
                    )
        if not tls:
            for name in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile"):
                if getattr(self, name) is not None:
                    raise ValueError(
                        f"{name.upper()} needs KAFKA_SECURITY_PROTOCOL=SSL or SASL_SSL, got {protocol}"
                    )
        if (self.kafka_ssl_certfile is None) != (self.kafka_ssl_keyfile is None):
            missing = "KAFKA_SSL_KEYFILE" if self.kafka_ssl_keyfile is None else "KAFKA_SSL_CERTFILE"
            other = "KAFKA_SSL_CERTFILE" if missing == "KAFKA_SSL_KEYFILE" else "KAFKA_SSL_KEYFILE"
            raise ValueError(f"{missing} must be set with {other} (mutual TLS needs both)")
        return self

    @model_validator(mode="after")
    def _distinct_topics(self) -> Settings:
        """Each topic holds one kind of record: a dead-letter topic that is the trades topic fed rejected
        trades back in as trades, without end (and a shared name got one topic, of one partition)."""
        names = {
            "KAFKA_TOPIC": self.kafka_topic,
            "KAFKA_CANDLES_TOPIC": self.kafka_candles_topic,
            "KAFKA_DLQ_TOPIC": self.kafka_dlq_topic,
        }
        seen: dict[str, str] = {}
        for setting, name in names.items():
            if name in seen:
                raise ValueError(
                    f"{setting} must differ from {seen[name]} (each topic holds one kind of record), "
                    f"both are {name!r}"
                )
            seen[name] = setting
        return self

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        url = value.get_secret_value()
        if not re.match(r"postgres(ql)?(\+asyncpg)?://", url):
            raise ValueError(
                "must start with postgresql:// (postgresql://user:password@host:5432/database), "
                f"got {mask_url(url)!r}"
            )
        if "," in url.partition("://")[2].partition("/")[0].rpartition("@")[2]:
            # asyncpg takes a list of hosts; the migrations (SQLAlchemy) looked one up by that whole name
            raise ValueError(
                "must name one host (a list of hosts is not supported: name the primary, or a proxy in "
                f"front of them), got {mask_url(url)!r}"
            )
        try:  # what asyncpg would stop on later, with a traceback: a port that is no number, a broken host
            urlsplit(url).port  # noqa: B018 - parsed on access
        except ValueError as exc:
            raise ValueError(
                f"is not a URL ({exc}): use postgresql://user:password@host:5432/database, "
                f"got {mask_url(url)!r}"
            ) from None
        return value

    @property
    def database_dsn(self) -> str | None:
        """The database URL in the plain ``postgresql://`` form asyncpg takes."""
        if self.database_url is None:
            return None
        return re.sub(r"^postgres(ql)?(\+asyncpg)?://", "postgresql://", self.database_url.get_secret_value())

    def describe_database(self) -> str:
        """The database URL with any password masked, for logs."""
        if self.database_dsn is None:
            return "none (Parquet archive only)"
        return mask_url(self.database_dsn)


_PHRASES = (
    ("Input should be", "must be"),
    ("greater than or equal to", ">="),
    ("less than or equal to", "<="),
    ("greater than", ">"),
    ("less than", "<"),
)


def _one_line(error: ValidationError) -> str:
    first = error.errors()[0]
    message = first["msg"].removeprefix("Value error, ")
    if not first["loc"]:  # a check across settings: its message names them; the input is all of them
        return message
    for verbose, short in _PHRASES:
        message = message.replace(verbose, short)
    name = str(first["loc"][0]).upper()
    value = first.get("input")
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if name == "DATABASE_URL" and isinstance(value, str):
        value = mask_url(value)  # what is wrong stays visible; the password does not
    if name == "KAFKA_SASL_PASSWORD":
        value = None  # never echoed, not even when it is the wrong thing
    shown = f", got {value!r}" if value is not None and "got" not in message else ""
    more = f" (and {len(error.errors()) - 1} more)" if len(error.errors()) > 1 else ""
    return f"{name} {message}{shown}{more}"


def _check_dotenv(path: Path | None) -> None:
    """Raise :class:`SettingsError` when the ``.env`` file at ``path`` cannot be read whole: python-dotenv
    skips a line it cannot parse with a warning, so its setting silently kept its default."""
    if path is None:
        return
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return
    except UnicodeDecodeError as exc:
        raise SettingsError(
            f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}): save it as UTF-8"
        ) from None
    except OSError as exc:
        raise SettingsError(
            f"{path} cannot be read ({exc.strerror}): fix its permissions or remove it"
        ) from None
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            line = (binding.original.string.strip().splitlines() or [""])[0][:60]
            raise SettingsError(
                f"{path} line {binding.original.line} is not NAME=value: {line!r} (quote a value with "
                "spaces, # or quotes in it; start a comment with #)"
            )


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment (and ``.env``); raise :class:`SettingsError` in one line."""
    env_file = overrides.get("_env_file", Settings.model_config.get("env_file"))
    _check_dotenv(Path(env_file) if isinstance(env_file, str | Path) else None)
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_one_line(exc)) from None
    if settings.api_production:
        if "cors_origins" not in settings.model_fields_set:
            settings = settings.model_copy(update={"cors_origins": []})  # same origin only, unless named
        elif "*" in settings.cors_origins:
            raise SettingsError(
                "CORS_ORIGINS must name the sites allowed to call the API when API_PRODUCTION is on, got '*'"
            )
    return settings
