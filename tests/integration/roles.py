"""Run cryptostream roles as real subprocesses (as the containers of docker-compose.yml run them).

A role gets its settings only through environment variables, exactly as in a container; its JSON log
lines (``LOG_FORMAT=json``) are written to a file the tests read to see which partitions it owns.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from cryptostream.procs import spawn, stop_process
from cryptostream.settings import Settings

SETTINGS_VARS = {name.upper() for name in Settings.model_fields}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

_ASSIGNED = re.compile(r"^partition (\d+): ")
_REVOKED = re.compile(r"^partitions revoked: \[([\d, ]*)\]")


def listen_port() -> int:
    """A port for a role to listen on, outside the kernel's ephemeral range (32768-60999 by default).

    ``free_port()`` hands out an ephemeral port, which an outgoing connection (a Kafka client, say) can
    take before the role binds it; ports below the range are never handed out that way.
    """
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20_000, 32_000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port in 20000-32000")


def role_env(settings: Settings, **extra: Any) -> dict[str, str]:
    """The environment a container would get: every Settings field of ``settings`` as a variable."""
    env = {k: v for k, v in os.environ.items() if k.upper() not in SETTINGS_VARS}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, list):
            value = ",".join(value)
        elif isinstance(value, dict):
            value = ",".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[name.upper()] = str(value)
    env.update(LOG_FORMAT="json", LOG_LEVEL="INFO")
    env.update({k: str(v) for k, v in extra.items()})
    return env


@dataclass
class Role:
    """One ``cryptostream <args>`` child process and its log."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, name: str, args: list[str], env: dict[str, str], folder: Path) -> Role:
        log = folder / f"{name}.log"
        proc = spawn([sys.executable, "-m", "cryptostream", *args], log_file=log, env=env, cwd=folder)
        return cls(name, proc, log)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def records(self) -> list[dict[str, Any]]:
        """The JSON log records so far (a line that is not JSON, e.g. a crash trace, is kept as text)."""
        out = []
        text = self.log.read_bytes() if self.log.exists() else b""
        for line in text.splitlines():
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                record = {"message": line.decode(errors="replace"), "not_json": True}
            out.append(record if isinstance(record, dict) else {"message": str(record), "not_json": True})
        return out

    def messages(self) -> list[str]:
        return [str(r.get("message", "")) for r in self.records()]

    def owned(self) -> set[int]:
        """Partitions this processor owns now, from its assignment and revocation log lines."""
        owned: set[int] = set()
        for message in self.messages():
            if m := _REVOKED.match(message):
                owned -= {int(p) for p in m.group(1).replace(" ", "").split(",") if p}
            elif m := _ASSIGNED.match(message):
                owned.add(int(m.group(1)))
        return owned

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        return stop_process(self.proc, sig, timeout=timeout)


async def wait_for(
    condition: Callable[[], Any], timeout: float, what: str, roles: list[Role], interval: float = 0.2
) -> None:
    """Poll ``condition()`` (plain or async) until true; on timeout or a death, fail with the logs."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        for role in roles:
            if not role.alive:
                raise AssertionError(f"{role.name} exited with {role.proc.returncode}:\n{role.tail()}")
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {r.name} owns {sorted(r.owned())}\n{r.tail(1500)}" for r in roles)
            raise AssertionError(f"{what}: not within {timeout:.0f}s\n{tails}")
        await asyncio.sleep(interval)


async def scrape(port: int) -> Samples:
    """Every sample of ``/metrics`` on ``port``, parsed by Prometheus' own text-format parser."""
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics")
    response.raise_for_status()
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def lag_by_partition(samples: Samples, topic: str) -> dict[int, float]:
    """``cryptostream_consumer_lag`` of ``topic``, by partition."""
    return {
        int(dict(labels)["partition"]): v
        for (name, labels), v in samples.items()
        if name == "cryptostream_consumer_lag" and dict(labels).get("topic") == topic
    }
