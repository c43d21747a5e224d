"""End-to-end fixtures: the `cryptostream` command as a user runs it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from cryptostream.procs import free_port
from tests.e2e.polling import graphql, wait_until

CLI = [sys.executable, "-m", "cryptostream"]


class Pipeline:
    """A running `cryptostream up` and how to reach it."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        return graphql(self.url, query, **variables)

    def wait_until(self, check: Callable[[], bool], timeout: float, what: str) -> float:
        try:
            return wait_until(check, timeout, what, failure=self._exited, every=0.5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}:\n{self.tail()}") from None

    def _exited(self) -> str | None:
        if self.proc.poll() is None:
            return None
        return f"`cryptostream up` exited ({self.proc.returncode})"

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def interrupt(self, timeout: float = 90) -> int:
        """Ctrl+C, as a user in a terminal would."""
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout)


@pytest.fixture
def pipeline_env(tmp_path: Path) -> dict[str, str]:
    """Environment of a newcomer: no KAFKA_BOOTSTRAP, no DATABASE_URL; state and archive in tmp."""
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP", "DATABASE_URL")}
    env.update(
        STATE_DIR=str(tmp_path / "state"),
        OUTPUT_DIR=str(tmp_path / "outputs"),
        MAX_BUFFER_SECONDS="1",
        PARQUET_CHUNK_SECONDS="1",
    )
    return env


@pytest.fixture
def start_pipeline(tmp_path: Path, pipeline_env: dict[str, str]) -> Iterator[Callable[..., Pipeline]]:
    started: list[Pipeline] = []

    def start(*args: str, sigint_ignored: bool = False) -> Pipeline:
        """``sigint_ignored``: start it as a shell starts a background job, with SIGINT ignored."""
        port = free_port()
        log = tmp_path / f"up-{len(started)}.log"
        ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [*CLI, "up", "--port", str(port), *args],
                env=pipeline_env,
                cwd=tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=ignore,
            )
        p = Pipeline(proc, port, log)
        started.append(p)
        return p

    yield start
    for p in started:
        if p.proc.poll() is None:
            p.proc.send_signal(signal.SIGINT)
            try:
                p.proc.wait(60)
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait()  # reaped here, not left for a later test's child watcher to trip over
    artifacts = Path(os.environ.get("TEST_ARTIFACTS", "test-artifacts"))
    if artifacts.parent.exists():
        artifacts.mkdir(exist_ok=True)
        for p in started:
            shutil.copy(p.log, artifacts / f"e2e-{p.log.name}")
