"""The ``cryptostream`` command.

This module is the composition root: the one core module that wires the roles (``ingest``, ``processor``,
``graphql_api``) together, importing each lazily inside its command. Nothing else in ``cryptostream/``
imports upward.

``cryptostream up`` runs everything on one machine: an embedded broker and database unless the settings
name real ones, migrations, then ingest, processor and API as supervised child processes. Before it
starts anything it checks the ports it will listen on and waits for the services the settings name, so a
conflict or an unreachable service is one line and a non-zero exit, not a traceback or a restart loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

from cryptostream import __version__
from cryptostream.errors import CryptostreamError, InfraError, SettingsError
from cryptostream.logs import setup_logging
from cryptostream.settings import Settings, load_settings, mask_url
from cryptostream.venues import DEMO

__all__ = ["app", "main"]

log = logging.getLogger("cryptostream")

HELP = """Real-time crypto market data: exchange trades -> Kafka -> 1 s candles, volatility and up/down
predictions -> PostgreSQL and a Parquet archive -> GraphQL API and live dashboard.

Start with `cryptostream up`: the whole pipeline on this machine, with an embedded Kafka broker and
PostgreSQL unless KAFKA_BOOTSTRAP / DATABASE_URL name real ones. The other commands run one role each, as
the distributed shape (docker compose) does. Settings come from environment variables or a .env file."""

# Plain click help: Typer's rich panels print a type after every option, even `--help <bool>`.
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None, help=HELP)


class Source(StrEnum):
    live = "live"
    synthetic = "synthetic"
    replay = "replay"


class TrainSource(StrEnum):
    archive = "archive"
    database = "database"


class ModelChoice(StrEnum):
    auto = "auto"
    logit = "logit"
    sgd = "sgd"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"cryptostream {__version__}")
        raise typer.Exit()


@app.callback()
def _cryptostream(
    version: bool = typer.Option(
        False, "--version", callback=_show_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    pass


# The options that override a setting: an error about the setting names the option the user typed.
OPTION_OF = {
    "symbols": "--symbols",
    "api_port": "--port",
    "api_host": "--host",
    "replay_speed": "--speed",
    "prediction_horizon_seconds": "--horizon",
}


def _settings(role: str, **overrides: Any) -> Settings:
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        settings = load_settings(**given)
    except SettingsError as exc:
        for name in given:
            setting = name.upper()
            if name in OPTION_OF and str(exc).startswith(f"{setting} "):
                raise SettingsError(f"{OPTION_OF[name]} ({setting}){str(exc)[len(setting) :]}") from None
        raise
    setup_logging(settings.log_level, settings.log_format, role)
    return settings


def _finite_rate(rate: float) -> None:
    if not math.isfinite(rate):
        raise SettingsError(f"--rate must be a number of trades per second, got {rate}")


def _replay_file(path: Path, option: str | None = None) -> None:
    said = f"{option}: " if option else ""
    if path.is_dir():
        raise SettingsError(f"{said}{path} is a folder: name a replay file in it")
    if not path.is_file():
        raise SettingsError(f"{said}replay file {path} does not exist")


def _recording_file(path: Path) -> None:
    """``--record`` names a file this user can append to (a folder there restarted ingest until `up` gave
    up, one traceback each time)."""
    try:
        with open(path, "ab"):
            pass
    except OSError as exc:
        raise SettingsError(
            f"--record must name a file this user can write, got {path} ({exc.strerror})"
        ) from None


def _run(coro_factory: Callable[[asyncio.Event], Coroutine[Any, Any, Any]]) -> None:
    """Run a role until it finishes or SIGINT/SIGTERM asks it to stop (then it finishes cleanly)."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await coro_factory(stop)

    asyncio.run(runner())


SYMBOLS_HELP = (
    "Comma list; `all` = every market trading on EXCHANGES (both exchanges' for the demo); N = the first N "
    "of them, quote currencies with the most markets first, then the most-listed coins (BTCUSD, ETHUSD, "
    "...). Overrides SYMBOLS."
)


def _live_symbols(settings: Settings, **overrides: Any) -> Settings:
    """The live source: SYMBOLS=all / N counted by the exchanges' market lists of today (fetched first, into
    the cache the selection reads), and refused before anything starts when no exchange trades one of them
    (looked for in fresh lists first: it may be listed since the lists at hand) or an exchange cannot
    stream them all. `up` refused a misspelt symbol only once its broker, database and API had started."""
    from cryptostream.markets import UnlistedSymbols
    from ingest.exchanges import check_markets, refresh_market_lists

    fetched = settings.symbols_selection is not None
    if fetched:
        asyncio.run(refresh_market_lists(settings))
        settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    try:
        check_markets(settings)
    except UnlistedSymbols:
        if fetched:
            raise
        asyncio.run(refresh_market_lists(settings))
        check_markets(settings)
    return settings


def _require_kafka(settings: Settings) -> str:
    if not settings.kafka_bootstrap:
        raise SettingsError(
            "KAFKA_BOOTSTRAP is not set: point it at a Kafka broker, or use `cryptostream up`"
            + _running_up_has(settings, "kafka_bootstrap", "KAFKA_BOOTSTRAP")
        )
    return settings.kafka_bootstrap


def _require_database(settings: Settings, why: str) -> str:
    if not settings.database_dsn:
        raise SettingsError(
            f"DATABASE_URL is not set: {why}" + _running_up_has(settings, "database_url", "DATABASE_URL")
        )
    return settings.database_dsn


def _beside_up_without_database(settings: Settings, doing: str) -> None:
    """Warn, first thing, when DATABASE_URL is not set while a ``cryptostream up`` runs on STATE_DIR: run
    beside the demo, a role that does ``doing`` without it was surely meant to use the demo's database."""
    hint = "" if settings.database_dsn else _running_up_has(settings, "database_url", "DATABASE_URL")
    if hint:
        log.warning("DATABASE_URL is not set: %s%s", doing, hint)


def _running_up_has(settings: Settings, key: str, setting: str) -> str:
    """The end of a "not set" message when a ``cryptostream up`` runs on STATE_DIR: the address its
    ``endpoints.json`` gives (a role run beside the demo does not find the demo's broker by itself)."""
    try:
        endpoints = json.loads((settings.state_dir / "endpoints.json").read_text())
        pid, value = int(endpoints["pid"]), str(endpoints[key])
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    try:
        os.kill(pid, 0)  # signal 0: whether it runs (a stopped `up` leaves its file behind)
    except ProcessLookupError:
        return ""
    except OSError:
        pass  # it runs, as another user
    return f"; the `cryptostream up` running here (pid {pid}) has {setting}={value}"


async def _wait_for_database(dsn: str, timeout: float) -> None:  # noqa: ASYNC109 - a budget over retries
    """Wait until PostgreSQL at ``dsn`` accepts a connection (see :func:`wait_for_service`)."""
    import asyncpg

    from cryptostream.procs import wait_for_service

    async def probe() -> None:
        try:
            conn = await asyncpg.connect(dsn, timeout=5)
        except asyncpg.CannotConnectNowError:
            raise  # "the database system is starting up": retried
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:  # it answered, and said no
            raise InfraError(f"DATABASE_URL {mask_url(dsn)} refused the connection: {exc}") from None
        conn.terminate()  # nothing to say to it; no round trip to wait for

    await wait_for_service(
        probe,
        setting="DATABASE_URL",
        address=mask_url(dsn),
        timeout=timeout,
        retry_on=(OSError, asyncpg.CannotConnectNowError),
    )


def _wait_for_services(settings: Settings, *, kafka: bool = False, database: bool = False) -> None:
    """Wait for the broker (``kafka``) and the database (``database``, if DATABASE_URL is set) to answer,
    retrying with backoff for up to SERVICE_WAIT_SECONDS; raise a one-line :class:`InfraError` if not."""
    if kafka:
        from cryptostream.kafka import wait_for_broker

        asyncio.run(
            wait_for_broker(_require_kafka(settings), settings.service_wait_seconds, settings=settings)
        )
    if database and settings.database_dsn:
        asyncio.run(_wait_for_database(settings.database_dsn, settings.service_wait_seconds))


def _require_schema(settings: Settings) -> None:
    """A database that is set has this version's schema (:func:`cryptostream.migrate.check_schema`)."""
    if settings.database_dsn:
        from cryptostream.migrate import check_schema

        check_schema(settings.database_dsn)


def _require_free_port(host: str, port: int, setting: str, host_setting: str = "METRICS_HOST") -> None:
    """Raise a one-line :class:`InfraError` when a server could not listen on ``host:port``: a busy port
    names ``setting``, anything else (an address not on this machine) ``host_setting`` too."""
    from cryptostream.procs import bind_error, describe_os_error

    error = bind_error(host, port)
    if error is None:
        return
    if error.errno == errno.EADDRINUSE:
        raise InfraError(
            f"port {port} ({setting}) is already in use on {host}: stop what listens there, or choose "
            "another port"
        )
    raise InfraError(
        f"cannot listen on {_address(host, port)} ({host_setting}, {setting}): {describe_os_error(error)}"
    )


def _address(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets (``[::1]:8000``; ``::1:8000`` is no address)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---------------------------------------------------------------------------------------------- up
@app.command()
def up(
    source: Source = typer.Option(
        Source.synthetic, help="live exchanges, synthetic market, or a file replay."
    ),
    symbols: str | None = typer.Option(None, metavar="LIST|all|N", help=SYMBOLS_HELP),
    port: int | None = typer.Option(None, metavar="PORT", help="API port (API_PORT, default 8000)."),
    path: Path | None = typer.Option(None, metavar="FILE", help="File to replay (with --source replay)."),
    rate: float = typer.Option(50.0, min=0.001, metavar="N", help="Synthetic trades per second."),
    record: Path | None = typer.Option(
        None, metavar="FILE", help="Also append every ingested trade to this JSONL file."
    ),
) -> None:
    """Run the whole pipeline on this machine in one command (Ctrl+C stops everything)."""
    settings = _settings("up", symbols=symbols, api_port=port)
    _replays_only(source, path=path)
    _finite_rate(rate)
    if source is Source.replay:  # what ingest would refuse, said before anything starts
        if path is None:
            raise SettingsError("--source replay needs a file: cryptostream up --source replay --path FILE")
        _replay_file(path, "--path")
    if record is not None:
        _recording_file(record)
    from cryptostream.embedded import EmbeddedKafka, EmbeddedPostgres
    from cryptostream.kafka import ensure_topics, wait_for_broker
    from cryptostream.migrate import upgrade

    if not settings.kafka_bootstrap and settings.kafka_security_protocol != "PLAINTEXT":
        raise SettingsError(
            f"KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol} needs KAFKA_BOOTSTRAP: the broker "
            "`up` starts itself is plaintext on 127.0.0.1 (unset KAFKA_SECURITY_PROTOCOL, or name your Kafka)"
        )
    # Every port is checked before anything starts: a busy one is a one-line error, not a restart loop.
    _require_free_port(settings.api_host, settings.api_port, "--port / API_PORT", "API_HOST")
    role_env: dict[str, dict[str, str]] = {}
    if settings.metrics_port:  # ingest and processor each serve /metrics: the processor takes the next port
        if settings.metrics_port == 65_535:
            raise SettingsError("METRICS_PORT must be < 65535 for `up` (the processor uses the next port)")
        if settings.api_port in (settings.metrics_port, settings.metrics_port + 1):
            # each port was free when asked, then the first role to start took it: the API did not start
            raise SettingsError(
                f"API_PORT (--port) {settings.api_port} must differ from METRICS_PORT "
                f"{settings.metrics_port} and the processor's METRICS_PORT + 1 ({settings.metrics_port + 1})"
            )
        _require_free_port(settings.metrics_host, settings.metrics_port, "METRICS_PORT, ingest's /metrics")
        _require_free_port(
            settings.metrics_host, settings.metrics_port + 1, "METRICS_PORT + 1, the processor's /metrics"
        )
        role_env["process"] = {"METRICS_PORT": str(settings.metrics_port + 1)}
    if source is Source.live:
        settings = _live_symbols(settings, symbols=symbols, api_port=port)
    _writable_folder(settings.state_dir, "STATE_DIR")
    _writable_folder(settings.output_dir, "OUTPUT_DIR")
    state = settings.state_dir.resolve()
    stack = contextlib.ExitStack()
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            raise KeyboardInterrupt

    # SIGINT too, explicitly: a shell starts a background job with SIGINT ignored, and Python leaves an
    # ignored SIGINT ignored, so Ctrl+C (or kill -INT) would not stop the pipeline.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        with stack:
            # real services named in the settings first: nothing is started for a run that cannot reach them
            _wait_for_services(settings, kafka=bool(settings.kafka_bootstrap), database=True)
            env = dict(os.environ)
            demo_model: threading.Thread | None = None
            if source is Source.synthetic:  # trained (first start only) while the services start
                model_dir, demo_model = _demo_model(settings, state)
                env["MODEL_DIR"] = str(model_dir)
            bootstrap = settings.kafka_bootstrap
            if not bootstrap:
                bootstrap = stack.enter_context(EmbeddedKafka(state)).bootstrap
                asyncio.run(wait_for_broker(bootstrap, settings.service_wait_seconds, settings=settings))
                # The embedded broker keeps topics in memory: windows still open at shutdown could never be
                # read again, so ingest ends with progress that closes them and the processor reads to the
                # end.
                env["FLUSH_WINDOWS_ON_STOP"] = "true"
                # The embedded broker holds every JoinGroup for half the session timeout: at the 10 s default,
                # 5 s of the wait for the first candle. A single local processor needs no long grace period.
                env.setdefault("KAFKA_SESSION_TIMEOUT_MS", "3000")
                if settings.kafka_idempotence == "auto":
                    # Tansu has no idempotent producer: known here, so no role asks it and logs the refusal.
                    env["KAFKA_IDEMPOTENCE"] = "off"
            dsn = settings.database_dsn
            if not dsn:
                dsn = stack.enter_context(EmbeddedPostgres(state / "postgres")).url
            env.update(
                KAFKA_BOOTSTRAP=bootstrap,
                DATABASE_URL=dsn,
                SYMBOLS=",".join(settings.symbols),
                API_PORT=str(settings.api_port),
                OUTPUT_DIR=str(settings.output_dir.resolve()),
            )
            if source is Source.synthetic:
                env["EXCHANGES"] = DEMO  # the demo market is the venue a symbol-only request means here
            upgrade(dsn, settings=settings)
            effective = load_settings(  # the options given win over the environment here too (--port)
                kafka_bootstrap=bootstrap,
                database_url=dsn,
                symbols=settings.symbols,
                api_port=settings.api_port,
            )
            asyncio.run(ensure_topics(effective))
            api_url = f"http://{_address(settings.api_host, settings.api_port)}"
            _write_private(
                state / "endpoints.json",
                {
                    "kafka_bootstrap": bootstrap,
                    "database_url": mask_url(dsn),  # where, not how to log in
                    "api_url": api_url,
                    "output_dir": str(settings.output_dir.resolve()),
                    "pid": os.getpid(),
                },
            )
            log.info(
                "Kafka %s | database %s | archive %s",
                bootstrap,
                effective.describe_database(),
                settings.output_dir.resolve(),
            )
            ingest_args = ["ingest", "--source", source.value, "--rate", str(rate)]
            if path is not None:
                ingest_args += ["--path", str(path.resolve())]
            if record is not None:
                ingest_args += ["--record", str(record.resolve())]
            roles = {"process": ["process"], "serve": ["serve"], "ingest": ingest_args}
            if demo_model is not None:
                demo_model.join()
            supervisor = _Supervisor(roles, env, role_env)
            try:
                supervisor.start()
                supervisor.watch(
                    ready=lambda: _listening(settings.api_host, settings.api_port),
                    on_ready=lambda: log.info(
                        "pipeline up: dashboard %s/ , GraphiQL %s/graphql  (Ctrl+C to stop)", api_url, api_url
                    ),
                )
            except KeyboardInterrupt:
                log.info(
                    "stopping: ingest first (flushes accepted trades), then processor (final checkpoint), API"
                )
            finally:
                supervisor.stop(["ingest", "process", "serve"])
    except KeyboardInterrupt:  # before the roles ran (once they run, stopping them is said above)
        log.info("interrupted while starting; what had started is stopped; state kept in %s", state)
        return
    log.info("stopped; state kept in %s", state)


def _listening(host: str, port: int) -> bool:
    """Whether something accepts connections on ``host:port`` (a wildcard host is asked on loopback)."""
    import socket

    target = "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host
    try:
        with socket.create_connection((target, port), timeout=0.2):
            return True
    except OSError:
        return False


def _writable_folder(path: Path, setting: str) -> None:
    """``path`` is a folder this user can write (made if missing), or a one-line error naming ``setting``:
    a file there, or no permission, otherwise showed up later as a traceback or a processor retrying its
    partitions four times a second."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise SettingsError(
            f"{setting} must be a folder this user can write, got {path} ({exc.strerror})"
        ) from None


def _write_private(path: Path, data: dict[str, Any]) -> None:
    """``data`` as JSON in ``path``, readable by this user only (0600 from its first byte)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an older file keeps its mode through O_TRUNC: set it
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, indent=2)


DEMO_HISTORY_SECONDS = 1800  # of generated trades the demo model learns from (~5 s to make and train)
DEMO_RATE = 50.0
DEMO_SEED = 20_240_101
DEMO_SYMBOLS = 10  # the model is pooled over symbols: a few are enough, whatever SYMBOLS lists


def _demo_model(settings: Settings, state: Path) -> tuple[Path, threading.Thread | None]:
    """The model folder the demo serves: MODEL_DIR when it holds a model, else ``STATE_DIR/demo-model``,
    where a model trained on generated history is made on first start (and again when
    PREDICTION_HORIZON_SECONDS changes), in the thread returned. A live run never uses that folder."""
    from processor.model import registry
    from processor.model.errors import ModelError

    try:
        if registry.load_model_file(settings.model_dir) is not None:
            return settings.model_dir.resolve(), None
    except ModelError as exc:
        log.warning("MODEL_DIR %s: %s; the demo uses its own model", settings.model_dir.resolve(), exc)
    folder = state / "demo-model"
    try:
        current = registry.load_model_file(folder)
    except ModelError:
        current = None
    horizon = settings.prediction_horizon_seconds
    if current is not None and current.get("horizon_seconds") == horizon:
        return folder, None

    def work() -> None:
        from ingest.synthetic import SyntheticMarket
        from processor.model.demo import train_demo_model

        try:
            market = SyntheticMarket(list(settings.symbols[:DEMO_SYMBOLS]), rate=DEMO_RATE, seed=DEMO_SEED)
            start_ms = (int(time.time()) - DEMO_HISTORY_SECONDS) * 1000
            trades = market.generate(int(DEMO_RATE * DEMO_HISTORY_SECONDS), start_ms)
            result = train_demo_model(trades, folder, horizon, seed=DEMO_SEED)
        except Exception as exc:  # the demo runs without predictions rather than not at all
            log.warning("no demo model (%s: %s): the prediction panel stays empty", type(exc).__name__, exc)
            return
        log.info("demo model ready: %s", result.report["verdict"]["summary"].split(":")[0])

    log.info(
        "training a demo model on %d min of generated history into %s (first start only)",
        DEMO_HISTORY_SECONDS // 60,
        folder,
    )
    thread = threading.Thread(target=work, name="demo-model", daemon=True)
    thread.start()
    return folder, thread


class _Supervisor:
    """Keeps the role processes of ``up`` running; restarts one that crashes (a few times, with backoff)."""

    MAX_RESTARTS = 5

    def __init__(
        self,
        roles: dict[str, list[str]],
        env: dict[str, str],
        role_env: dict[str, dict[str, str]] | None = None,
    ) -> None:
        self.roles = roles
        self.env = env
        self.role_env = role_env or {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.restarts: dict[str, int] = dict.fromkeys(roles, 0)

    def _spawn(self, role: str) -> None:
        from cryptostream.procs import spawn

        argv = [sys.executable, "-m", "cryptostream", *self.roles[role]]
        env = {**self.env, **self.role_env.get(role, {})}
        self.procs[role] = spawn(argv, env=env, inherit_output=True)

    def start(self) -> None:
        for role in self.roles:  # in the order given
            self._spawn(role)

    def watch(
        self, ready: Callable[[], bool] | None = None, on_ready: Callable[[], None] | None = None
    ) -> None:
        """Until interrupted; raise :class:`InfraError` when a role keeps failing (``up`` then stops).
        ``on_ready`` is called once, the first time ``ready()`` holds (the API answers: "pipeline up" is
        said when the dashboard link works, not before).

        Ingest ending with 0 has finished (a replay at the end of its file): the rest keeps serving what it
        wrote (it used to be restarted, replaying the file again as late trades, until ``up`` gave up). A
        role ending with 2 stopped on its one-line error (a setting it refuses, a service that did not
        answer within SERVICE_WAIT_SECONDS): restarting it would only say so again after a minute of
        backoff, so ``up`` stops at once."""
        while True:
            time.sleep(0.5 if ready is None else 0.1)
            if ready is not None and ready():
                ready = None
                if on_ready is not None:
                    on_ready()
            for role, proc in list(self.procs.items()):
                code = proc.poll()
                if code is None:
                    continue
                if role == "ingest" and code == 0:
                    del self.procs[role]
                    log.info("ingest finished; the API and dashboard keep serving (Ctrl+C to stop)")
                    continue
                if code == 2:
                    raise InfraError(
                        f"{role} stopped on the error above (exit code 2): stopping the pipeline"
                    )
                self.restarts[role] += 1
                if self.restarts[role] > self.MAX_RESTARTS:
                    raise InfraError(
                        f"{role} failed {self.restarts[role]} times (last exit code {code}): stopping the "
                        "pipeline; its log above says why"
                    )
                delay = min(30, 2 ** self.restarts[role])
                log.warning("%s exited with %s; restarting in %ds", role, code, delay)
                time.sleep(delay)
                self._spawn(role)

    def stop(self, order: list[str]) -> None:
        from cryptostream.procs import stop_process

        for role in order:
            proc = self.procs.get(role)
            if proc is not None:
                code = stop_process(proc, signal.SIGTERM, timeout=30)
                # -SIGTERM is a clean stop too: uvicorn re-raises the signal after its graceful shutdown
                if code in (0, -signal.SIGTERM):
                    log.info("%s stopped", role)
                else:
                    log.warning("%s stopped with exit code %s", role, code)


# ---------------------------------------------------------------------------------------------- roles
def _replays_only(source: Source, **options: Any) -> None:
    """Options that only a replay reads, given with another source, are a mistake said at once (they were
    silently ignored: ``up --source synthetic --path dump.csv`` streamed generated trades)."""
    given = [name for name, value in options.items() if value is not None]
    if given and source is not Source.replay:
        named = " and ".join(f"--{name}" for name in given)
        verb = "are" if len(given) > 1 else "is"
        raise SettingsError(f"{named} {verb} read only with --source replay, not --source {source.value}")


def _source(
    settings: Settings,
    source: Source,
    path: Path | None,
    rate: float,
    stop: asyncio.Event,
    exchange: str | None = None,
) -> AsyncIterator[Any]:
    """The trade source; it watches ``stop`` and ends with its final progress (see ``ingest.source``)."""
    if source is Source.synthetic:
        from ingest.synthetic import PriceFile, SyntheticMarket

        now = int(time.time() * 1000)
        prices = PriceFile(settings.state_dir / "ingest" / "synthetic.json")  # a restart goes on from there
        market = SyntheticMarket(
            settings.symbols, rate=rate, seed=now % 2**32, first_id=now * 1000, start_prices=prices.load()
        )
        return market.stream(stop=stop, progress_ms=settings.progress_interval_ms, save=prices.save)
    if source is Source.live:
        from ingest.exchanges import live_trades

        return live_trades(settings, stop=stop)
    if path is None:
        raise SettingsError("--source replay needs a file: cryptostream up --source replay --path FILE")
    from ingest.replay import replay_trades

    return replay_trades(settings, path, exchange=exchange, stop=stop)


@app.command()
def ingest(
    source: Source = typer.Option(Source.live, help="Where trades come from."),
    path: Path | None = typer.Option(None, metavar="FILE", help="File to replay (with --source replay)."),
    symbols: str | None = typer.Option(None, metavar="LIST|all|N", help=SYMBOLS_HELP),
    rate: float = typer.Option(50.0, min=0.001, metavar="N", help="Synthetic trades per second."),
    record: Path | None = typer.Option(
        None, metavar="FILE", help="Also append every trade to this JSONL file."
    ),
    exchange: str | None = typer.Option(
        None,
        metavar="NAME",
        help="Venue of a replayed file that does not name one (a Binance dump is binance).",
    ),
) -> None:
    """Capture trades from a source and publish them to KAFKA_TOPIC."""
    settings = _settings("ingest", symbols=symbols)
    _replays_only(source, path=path, exchange=exchange)
    _finite_rate(rate)
    if path is not None:
        _replay_file(path, "--path")
    if record is not None:
        _recording_file(record)
    if source is Source.live:
        settings = _live_symbols(settings, symbols=symbols)
    if settings.metrics_port:
        _require_free_port(settings.metrics_host, settings.metrics_port, "METRICS_PORT")
    _wait_for_services(settings, kafka=True)
    from cryptostream.metrics import serve_metrics
    from ingest.record import recorded
    from ingest.service import run_ingest

    serve_metrics(settings.metrics_port, settings.metrics_host)
    if record is not None:
        log.info("recording every trade to %s", record.resolve())

    def trades(stop: asyncio.Event) -> AsyncIterator[Any]:
        batches = _source(settings, source, path, rate, stop, exchange)
        return recorded(batches, record) if record is not None else batches

    _run(lambda stop: run_ingest(settings, trades(stop), stop, name=source.value))


@app.command()
def replay(
    path: Path = typer.Argument(
        ..., metavar="FILE", help="Binance dump (.csv or .zip), JSONL of trades, or Parquet."
    ),
    speed: float | None = typer.Option(
        None, metavar="X", help="REPLAY_SPEED: 1 = real time, 0 = as fast as possible."
    ),
    symbol: str | None = typer.Option(
        None, metavar="SYMBOL", help="Symbol of a Binance dump whose file name lacks it."
    ),
    exchange: str | None = typer.Option(
        None,
        metavar="NAME",
        help="Venue of a file that does not name one (a Binance dump is binance; else unknown).",
    ),
    progress: bool = typer.Option(True, help="Progress bar with rate and ETA (on a terminal)."),
) -> None:
    """Replay a file of trades into KAFKA_TOPIC, paced by REPLAY_SPEED."""
    settings = _settings("replay", replay_speed=speed)
    _replay_file(path)
    _wait_for_services(settings, kafka=True)
    from ingest.replay import replay_trades
    from ingest.service import run_ingest

    def trades(stop: asyncio.Event) -> AsyncIterator[Any]:
        bar = None if progress else False
        return replay_trades(settings, path, symbol=symbol, exchange=exchange, progress=bar, stop=stop)

    _run(lambda stop: run_ingest(settings, trades(stop), stop, name="replay"))


@app.command()
def process() -> None:
    """Consume trades, build candles and volatility, write Parquet (+ database), commit offsets."""
    settings = _settings("process")
    _beside_up_without_database(settings, "writing the Parquet archive only")
    _writable_folder(settings.output_dir, "OUTPUT_DIR")
    if settings.metrics_port:
        _require_free_port(settings.metrics_host, settings.metrics_port, "METRICS_PORT")
    _wait_for_services(settings, kafka=True, database=True)
    _require_schema(settings)
    from cryptostream.metrics import serve_metrics
    from processor.service import Processor
    from processor.sinks import ParquetSink, PostgresSink, Sink

    serve_metrics(settings.metrics_port, settings.metrics_host)
    sinks: list[Sink] = [ParquetSink(settings.output_dir)]
    if settings.database_dsn:
        sinks.append(PostgresSink(settings.database_dsn))
    else:
        log.info("DATABASE_URL not set: writing the Parquet archive only")
    from processor.model.scorer import load_live_scorer

    scorer = load_live_scorer(settings)
    if scorer is not None:
        log.info("live predictions: model %s (%d s horizon)", scorer.version, scorer.horizon_s)
    else:
        log.info("live predictions: none (no model in %s; run `cryptostream train`)", settings.model_dir)
    scorers = [scorer] if scorer is not None else []
    _run(lambda stop: Processor(settings, sinks, scorers=scorers).run(stop))


@app.command()
def train(
    source: TrainSource = typer.Option(
        TrainSource.archive, help="The Parquet archive under OUTPUT_DIR, or the database at DATABASE_URL."
    ),
    symbols: str | None = typer.Option(
        None, metavar="LIST", help="Comma list (default: every symbol stored)."
    ),
    exchanges: str | None = typer.Option(
        None,
        metavar="LIST",
        help="Comma list of venues (default: every venue with candles but the demo, which is used only "
        "when nothing else has any).",
    ),
    start: datetime | None = typer.Option(
        None, metavar="TIME", help="First candle time, UTC, e.g. 2026-01-31T12:00:00 (default: the oldest)."
    ),
    end: datetime | None = typer.Option(
        None, metavar="TIME", help="End of the candles, exclusive, UTC (default: the newest)."
    ),
    horizon: int | None = typer.Option(
        None, metavar="SECONDS", help="Seconds ahead (PREDICTION_HORIZON_SECONDS)."
    ),
    folds: int = typer.Option(5, min=1, max=50, metavar="N", help="Walk-forward folds."),
    model: ModelChoice = typer.Option(
        ModelChoice.auto, help="auto picks the lower walk-forward log loss of logit and sgd."
    ),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Train the up/down model walk-forward; write a versioned model and its report to MODEL_DIR."""
    settings = _settings("train", prediction_horizon_seconds=horizon)
    _writable_folder(settings.model_dir, "MODEL_DIR")  # not a traceback after the training
    if source is TrainSource.database:
        _require_database(settings, "training from the database needs one (or use the archive)")
        _wait_for_services(settings, database=True)
    from processor.model.train import train as run_training

    utc = [t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t for t in (start, end)]
    result = run_training(
        settings.model_dir,
        settings.prediction_horizon_seconds,
        source="archive" if source is TrainSource.archive else "database",
        output_dir=settings.output_dir,
        database_dsn=settings.database_dsn,
        symbols=load_settings(symbols=symbols).symbols if symbols else None,
        exchanges=[e.strip().lower() for e in exchanges.split(",") if e.strip()] if exchanges else None,
        start=utc[0],
        end=utc[1],
        folds=folds,
        candidates=("logit", "sgd") if model is ModelChoice.auto else (model.value,),
        show_progress=progress,
    )
    report = result.report
    typer.echo(f"model {report['model_version']} -> {settings.model_dir.resolve()}")
    for name, m in report["metrics"].items():
        auc = "-" if m["auc"] is None else f"{m['auc']:.3f}"
        typer.echo(
            f"  {name:<12} accuracy {m['accuracy']:.1%}  balanced {m['balanced_accuracy']:.1%}  "
            f"log loss {m['log_loss']:.4f}  AUC {auc}"
        )
    typer.echo(report["verdict"]["summary"])


# Open files the API needs besides its subscribers' WebSockets: database and broker connections, HTTP
# clients, log and archive files.
OTHER_FILES = 1_024


def _open_files_for(subscribers: int) -> None:
    """Let the API hold a WebSocket per subscriber: raise its open-files limit, or say at start-up what the
    system's hard limit leaves (accepting a connection past it fails: "Too many open files")."""
    from cryptostream.procs import raise_open_files

    wanted = subscribers + OTHER_FILES
    soft, hard = raise_open_files(wanted)
    if 0 <= soft < wanted:
        log.warning(
            "open files are limited to %d (hard limit %s): about %d live subscribers can connect, not "
            "API_MAX_SUBSCRIBERS=%d; raise the limit (ulimit -n, LimitNOFILE= in a systemd unit, "
            "ulimits in compose) or lower API_MAX_SUBSCRIBERS",
            soft,
            "unlimited" if hard < 0 else hard,
            max(soft - OTHER_FILES, 0),
            subscribers,
        )
    else:
        log.debug(
            "open files limit %s, for API_MAX_SUBSCRIBERS=%d", "unlimited" if soft < 0 else soft, subscribers
        )


@app.command()
def serve(
    host: str | None = typer.Option(None, metavar="ADDRESS", help="Interface to bind (API_HOST)."),
    port: int | None = typer.Option(None, metavar="PORT", help="Port (API_PORT)."),
) -> None:
    """Serve GraphQL, the REST routes and the dashboard."""
    settings = _settings("serve", api_host=host, api_port=port)
    _beside_up_without_database(settings, "serving the Parquet archive only")
    _require_free_port(settings.api_host, settings.api_port, "--port / API_PORT", "--host / API_HOST")
    internal_metrics = settings.api_production and settings.metrics_port is not None
    if internal_metrics:
        assert settings.metrics_port is not None
        if settings.metrics_port == settings.api_port:
            raise SettingsError(
                f"METRICS_PORT must differ from API_PORT (--port) with API_PRODUCTION on (/metrics is served "
                f"apart from the API), both are {settings.api_port}"
            )
        _require_free_port(settings.metrics_host, settings.metrics_port, "METRICS_PORT")
    _wait_for_services(settings, database=True)
    _require_schema(settings)
    import uvicorn

    from graphql_api import create_app
    from graphql_api.server import uvicorn_config

    if internal_metrics:  # API_PRODUCTION: /metrics is not on the public port, only on this one
        from cryptostream.metrics import serve_metrics

        serve_metrics(settings.metrics_port, settings.metrics_host)
    _open_files_for(settings.api_max_subscribers)
    config = uvicorn_config(
        create_app(settings), settings.api_host, settings.api_port, ws_max_size=settings.api_max_body_bytes
    )
    log.info(
        "API on http://%s (database: %s)",
        _address(settings.api_host, settings.api_port),
        settings.describe_database(),
    )
    uvicorn.Server(config).run()


@app.command()
def migrate(
    revision: str = typer.Argument(
        "head", metavar="REVISION", help="Schema revision to take the database to: head, base, 0001, ..."
    ),
    downgrade: bool = typer.Option(
        False, "--downgrade", help="Allow going back to a lower REVISION (drops what later ones added)."
    ),
) -> None:
    """Bring the database schema at DATABASE_URL up to date (or to REVISION)."""
    settings = _settings("migrate")
    dsn = _require_database(settings, "migrations need a database (postgresql://...)")
    from cryptostream.migrate import migrate_to, revision_named

    revision_named(revision)  # a typo is said before waiting for the database
    _wait_for_services(settings, database=True)

    done = migrate_to(dsn, revision, allow_downgrade=downgrade, settings=settings)
    log.info("database %s %s", settings.describe_database(), done)


@app.command("import")
def import_(
    path: Path = typer.Argument(
        ...,
        metavar="FOLDER",
        help="Archive of the older layout (the original project's OUTPUT_DIR: ohlc/symbol=X/date=D).",
    ),
    exchange: str = typer.Option(
        "unknown", metavar="NAME", help="Venue of those candles (the original did not record one)."
    ),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Copy an archive of the older layout into the database (DATABASE_URL) and the archive (OUTPUT_DIR)."""
    settings = _settings("import")
    _beside_up_without_database(settings, "importing into the Parquet archive only")
    if not path.is_dir():
        raise SettingsError(f"import needs a folder, {path} is not one")
    _writable_folder(settings.output_dir, "OUTPUT_DIR")
    _wait_for_services(settings, database=True)
    from processor.importer import import_archive

    if not settings.database_dsn:
        log.info("DATABASE_URL not set: importing into the Parquet archive only")
    report = asyncio.run(
        import_archive(path, settings.output_dir, settings.database_dsn, exchange, show_progress=progress)
    )
    log.info("imported %s into %s", report, settings.output_dir.resolve())


@app.command()
def compact(
    min_age_days: int = typer.Option(
        2, min=1, metavar="DAYS", help="Only merge days at least this many days old."
    ),
) -> None:
    """Merge the archive under OUTPUT_DIR (rows unchanged): fresh files of hours that ended over an hour
    ago into one file per market and hour (the processor does this itself as it goes), and past days into
    one file per market and day."""
    settings = _settings("compact")
    if not settings.output_dir.is_dir():  # a typo in OUTPUT_DIR is not "0 files merged"
        raise SettingsError(
            f"OUTPUT_DIR {settings.output_dir.resolve()} is not a folder: there is no archive to compact"
        )
    _writable_folder(settings.output_dir, "OUTPUT_DIR")
    from cryptostream.archive import HOUR_MS
    from cryptostream.compaction import compact as run_compaction

    an_hour_ago = int(time.time() * 1000) - HOUR_MS
    report = run_compaction(settings.output_dir, min_age_days=min_age_days, fresh_before_ms=an_hour_ago)
    log.info("compaction of %s: %s", settings.output_dir.resolve(), report)


def main() -> None:
    """Console entry point: settings errors and unreachable services are one line on stderr, exit code 2."""
    # A shell starts a background job with SIGINT ignored and Python keeps it ignored: every command stops
    # on Ctrl+C / kill -INT all the same (`up` and the roles install their own handlers on top of this).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        app()
    except CryptostreamError as exc:
        typer.echo(f"cryptostream: {exc}", err=True)
        sys.exit(2)
