"""Child processes that cannot outlive their parent.

Every service cryptostream starts (the embedded broker and database, the roles of ``cryptostream up``) is
started here with ``PR_SET_PDEATHSIG``: if the parent dies, even by SIGKILL, the kernel signals the child,
so a crash never leaves an orphan holding a port or a data folder. Children get their own session, so a
Ctrl+C in the terminal reaches only the parent, which then stops them in order.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = ["free_port", "spawn", "stop_process", "wait_for_port"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _death_signal(sig: int) -> Callable[[], None]:
    libc_name = ctypes.util.find_library("c") or "libc.so.6"

    def apply() -> None:  # runs in the child between fork and exec, after any setuid
        libc = ctypes.CDLL(libc_name, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)

    return apply


def spawn(
    argv: Sequence[str],
    *,
    log_file: Path | None = None,
    death_signal: int = signal.SIGTERM,
    env: dict[str, str] | None = None,
    user: int | None = None,
    group: int | None = None,
    cwd: Path | None = None,
    inherit_output: bool = False,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` as a child that receives ``death_signal`` when this process dies."""
    stdout: IO[Any] | int | None
    if inherit_output:
        stdout = None
    elif log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        stdout = open(log_file, "ab")  # noqa: SIM115 - the child owns it; closed below in the parent
    else:
        stdout = subprocess.DEVNULL
    preexec = _death_signal(death_signal) if sys.platform.startswith("linux") else None
    try:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout is not None else None,
            env=env,
            user=user,
            group=group,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=preexec,  # noqa: PLW1509 - only prctl, no Python state touched
        )
    finally:
        if stdout not in (None, subprocess.DEVNULL) and not isinstance(stdout, int):
            stdout.close()


def stop_process(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10.0
) -> int | None:
    """Signal ``proc``, wait up to ``timeout`` seconds, then kill it. Returns its exit code."""
    if proc.poll() is not None:
        return proc.returncode
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log.warning(
            "pid %d did not stop within %.0fs after %s; killing it",
            proc.pid,
            timeout,
            signal.Signals(sig).name,
        )
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        return proc.wait(5)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
    """True once ``host:port`` accepts connections; False on timeout or if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False
