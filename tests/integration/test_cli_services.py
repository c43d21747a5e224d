"""Commands whose broker or database is not there: bounded retries with backoff, each logged, then one line
naming the setting and the address (password masked) and a non-zero exit; a service that comes up during
the wait (compose start order) is simply used."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cryptostream.embedded import EmbeddedKafka, EmbeddedPostgres
from cryptostream.procs import free_port, stop_process, wait_for_port
from tests.integration.roles import listen_port

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "cryptostream"]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP", "DATABASE_URL", "METRICS_PORT")
    }
    env.update(STATE_DIR=str(tmp_path / "state"), OUTPUT_DIR=str(tmp_path / "out"), **extra)
    return env


def _fails_in_one_line(args: list[str], tmp_path: Path, **env: str) -> tuple[str, list[str]]:
    """Run a command that must give up: returns its last stderr line and the retries it logged."""
    started = time.monotonic()
    done = subprocess.run(
        [*CLI, *args],
        cwd=tmp_path,
        env=_env(tmp_path, SERVICE_WAIT_SECONDS="2", **env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    print(f"{' '.join(args)}: gave up after {time.monotonic() - started:.1f} s")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "s3cret" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    return lines[-1], [line for line in lines if "is unreachable (" in line and "; retry " in line]


@pytest.mark.parametrize("command", ["migrate", "serve", "up"])
def test_an_unreachable_database_is_retried_then_one_line(command: str, tmp_path: Path) -> None:
    db_port, api_port = listen_port(), listen_port()
    args = [command] if command == "migrate" else [command, "--port", str(api_port)]
    last, retries = _fails_in_one_line(
        args, tmp_path, DATABASE_URL=f"postgresql://cs:s3cret@127.0.0.1:{db_port}/db"
    )
    address = f"postgresql://cs:***@127.0.0.1:{db_port}/db"
    assert re.fullmatch(
        rf"cryptostream: DATABASE_URL {re.escape(address)} is unreachable: connection refused "
        r"\(\d+ attempts over 2 s; SERVICE_WAIT_SECONDS=2\)",
        last,
    ), last
    assert retries and all(address in line for line in retries)
    assert not (tmp_path / "state" / "postgres").exists()  # `up` started nothing it would have to undo


@pytest.mark.parametrize("command", [["process"], ["ingest", "--source", "synthetic"]])
def test_an_unreachable_broker_is_retried_then_one_line(command: list[str], tmp_path: Path) -> None:
    port = listen_port()
    last, retries = _fails_in_one_line(command, tmp_path, KAFKA_BOOTSTRAP=f"127.0.0.1:{port}")
    assert re.fullmatch(
        rf"cryptostream: KAFKA_BOOTSTRAP 127\.0\.0\.1:{port} is unreachable: connection refused "
        r"\(\d+ attempts over 2 s; SERVICE_WAIT_SECONDS=2\)",
        last,
    ), last
    assert retries


@pytest.fixture
def start_command(tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen[bytes], Path]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], **env: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = tmp_path / f"{args[0]}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [*CLI, *args], cwd=tmp_path, env=_env(tmp_path, **env), stdout=out, stderr=subprocess.STDOUT
            )
        started.append(proc)
        return proc, log

    yield start
    for proc in started:
        stop_process(proc, signal.SIGTERM, timeout=30)  # waits: nothing is left unreaped


def _wait_for_line(proc: subprocess.Popen[bytes], log: Path, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        assert proc.poll() is None, f"exited {proc.returncode} before {text!r}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {text!r} within {timeout} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.1)


def test_migrate_waits_for_a_database_that_starts_after_it(start_command, tmp_path: Path) -> None:
    port = listen_port()
    proc, log = start_command(
        ["migrate"],
        DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/postgres",
        SERVICE_WAIT_SECONDS="120",
    )
    _wait_for_line(proc, log, "is unreachable (connection refused); retry 1")
    with EmbeddedPostgres(tmp_path / "pg", port=port, fast_unsafe=True):
        assert proc.wait(120) == 0, log.read_text()
    text = log.read_text()
    assert "answered (attempt" in text and re.search(r"is at revision \d+ \(head\), was empty", text), text


def test_process_waits_for_a_broker_that_starts_after_it(start_command, tmp_path: Path) -> None:
    port = listen_port()
    proc, log = start_command(["process"], KAFKA_BOOTSTRAP=f"127.0.0.1:{port}", SERVICE_WAIT_SECONDS="120")
    _wait_for_line(proc, log, "is unreachable (connection refused); retry 1")
    with EmbeddedKafka(tmp_path / "kafka", port=port):
        _wait_for_line(proc, log, "processor consuming")
        assert stop_process(proc, signal.SIGTERM, timeout=60) == 0, log.read_text()[-3000:]
    assert "answered (attempt" in log.read_text()


# Start `cryptostream serve` under a soft limit of 256 open files and the given hard limit, as a system with
# low defaults would (exec keeps the process: its limits are the server's).
LOW_LIMIT = (
    "import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (256, int(sys.argv[1]))); "
    "os.execv(sys.executable, [sys.executable, '-m', 'cryptostream', 'serve'])"
)


@pytest.mark.parametrize("room", [True, False], ids=["hard-limit-with-room", "hard-limit-too-low"])
def test_serve_raises_its_open_files_limit_for_the_subscribers_it_accepts(
    room: bool, database_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A WebSocket per live subscriber: the API raises its soft limit of open files to API_MAX_SUBSCRIBERS
    plus room for the rest, up to the hard limit, and says at start-up when the hard limit leaves less."""
    import resource

    ceiling = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    hard = 8_192 if room else 2_048
    hard = hard if ceiling == resource.RLIM_INFINITY else min(hard, ceiling)
    subscribers = hard - 2_048 if room else hard  # plus 1,024 for the rest: under, or over, the hard limit
    port = free_port()
    env = _env(
        tmp_path,
        DATABASE_URL=database_url,
        KAFKA_BOOTSTRAP=kafka_bootstrap,
        API_PORT=str(port),
        API_MAX_SUBSCRIBERS=str(subscribers),
    )
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", LOW_LIMIT, str(hard)], env=env, cwd=tmp_path, stdout=out, stderr=out
        )
    try:
        assert wait_for_port("127.0.0.1", port, 60, proc), log.read_text()
        limits = Path(f"/proc/{proc.pid}/limits").read_text().splitlines()
        soft_now, hard_now = next(line for line in limits if line.startswith("Max open files")).split()[3:5]
        assert (int(soft_now), int(hard_now)) == (subscribers + 1_024 if room else hard, hard)
        warned = f"API_MAX_SUBSCRIBERS={subscribers}; raise the limit" in log.read_text()
        assert warned is not room, log.read_text()
    finally:
        stop_process(proc, signal.SIGTERM, timeout=15)
