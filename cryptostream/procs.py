"""Child processes that cannot outlive their parent.

Every service cryptostream starts (the embedded broker and database, the roles of ``cryptostream up``) is
started here with ``PR_SET_PDEATHSIG``: if the parent dies, even by SIGKILL, the kernel signals the child,
so a crash never leaves an orphan holding a port or a data folder. Children get their own session, so a
Ctrl+C in the terminal reaches only the parent, which then stops them in order.

The services they provide are waited for here too: a port that must be free before anything starts, and a
service that must answer before a command goes on (:func:`wait_for_service`, with backoff, because in the
distributed shape a broker or database may come up after the command that needs it).
"""

from __future__ import annotations

import asyncio
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
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import IO, Any

from cryptostream.errors import InfraError

__all__ = [
    "bind_error",
    "describe_os_error",
    "free_port",
    "raise_open_files",
    "spawn",
    "stop_process",
    "wait_for_port",
    "wait_for_service",
]

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
    """A TCP port nothing listens on, held for about a minute against other processes asking the kernel for
    one: the time a server it is meant for takes to start and bind it.

    A port the kernel picks (bind to port 0) is free only while it is bound; once closed, another process's
    bind to port 0 may get it before the server it was picked for binds it (two test workers starting
    servers, two ``cryptostream up`` at once). So the port is left in TIME_WAIT: it accepts one connection
    from itself and closes that connection's server side first. The kernel does not pick a port in
    TIME_WAIT for anyone, while a server binding it with SO_REUSEADDR, as every server cryptostream starts
    does (PostgreSQL, the Tansu broker, uvicorn, Node, prometheus_client), gets it at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        port = int(sock.getsockname()[1])
        with contextlib.suppress(OSError):  # not held, but still free right now
            sock.listen(1)
            with socket.create_connection(("127.0.0.1" if host in ("", "0.0.0.0") else host, port), 1):
                accepted, _ = sock.accept()
                accepted.close()
        return port


def raise_open_files(wanted: int) -> tuple[int, int]:
    """Raise this process's soft limit of open files to ``wanted`` where the hard limit allows (children
    inherit it): (the soft limit now, the hard limit; -1 for unlimited). Many systems start processes at
    1,024 open files, while every WebSocket of a live subscriber is one."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):  # a sandbox may refuse: keep what we have
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return int(soft), int(hard)


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


def bind_error(host: str, port: int) -> OSError | None:
    """Why a server could not listen on ``host:port`` right now (in use, not an address here), or None."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except OSError as exc:
        return exc
    with socket.socket(family, kind, proto) as sock:
        # as uvicorn and prometheus_client bind: a closed connection in TIME_WAIT does not block the port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            return exc
    return None


def describe_os_error(exc: BaseException) -> str:
    """A short reason for a failed connection: "connection refused", "name lookup failed: ...", ..."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"name lookup failed: {str(exc.strerror).lower()}"
    if isinstance(exc, TimeoutError):
        return "no answer (timed out)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


async def wait_for_service(
    probe: Callable[[], Awaitable[None]],
    *,
    setting: str,
    address: str,
    timeout: float,  # noqa: ASYNC109 - a total budget over many probes, not one call's timeout
    retry_on: tuple[type[BaseException], ...] = (OSError,),
    reason: Callable[[BaseException], str] = describe_os_error,
    first_delay: float = 0.5,
) -> None:
    """Return once ``probe()`` succeeds. While it raises one of ``retry_on``, log the retry and try again
    with doubling delays (at most 10 s) for up to ``timeout`` seconds (0 = once); then raise
    :class:`InfraError` in one line naming ``setting`` and ``address`` (give it with passwords masked).
    Anything else ``probe`` raises is final and propagates at once."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = first_delay
    attempt = 0
    while True:
        attempt += 1
        try:
            await probe()
            if attempt > 1:
                log.info("%s %s answered (attempt %d)", setting, address, attempt)
            return
        except retry_on as exc:
            why = reason(exc)
            left = deadline - loop.time()
            if left <= 0:
                tried = f"{attempt} attempts over {timeout:.0f} s" if attempt > 1 else "1 attempt"
                raise InfraError(
                    f"{setting} {address} is unreachable: {why} ({tried}; SERVICE_WAIT_SECONDS={timeout:g})"
                ) from exc
            pause = min(delay, 10.0, left)
            log.warning(
                "%s %s is unreachable (%s); retry %d in %.1f s (giving up in %.1f s)",
                setting,
                address,
                why,
                attempt,
                pause,
                left,
            )
            await asyncio.sleep(pause)
            delay *= 2
