"""A port from ``free_port`` stays out of other processes' reach until its server binds it.

Two pytest workers (or two ``cryptostream up``) each start servers on ports the kernel picked; a picked port
that was merely closed can be picked again by the other process before its own server binds it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from cryptostream.embedded import EmbeddedKafka
from cryptostream.procs import free_port, wait_for_port

pytestmark = pytest.mark.integration

# Another process: a plain bind of the port (what the kernel's own choice respects), then 5,000 binds to
# port 0, none of which may return it.
OTHER_PROCESS = """
import errno, socket, sys
port = int(sys.argv[1])
with socket.socket() as sock:
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        assert exc.errno == errno.EADDRINUSE, exc
    else:
        sys.exit(f"another process could bind {port}")
for _ in range(5_000):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        assert sock.getsockname()[1] != port, f"the kernel handed {port} to another process"
"""


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_a_free_port_is_held_from_other_processes_yet_its_server_binds_it(host: str, tmp_path: Path) -> None:
    port = free_port(host)
    other = subprocess.run(
        [sys.executable, "-c", OTHER_PROCESS, str(port)], capture_output=True, text=True, timeout=60
    )
    assert other.returncode == 0, other.stderr

    async def serve() -> None:  # uvicorn's and the test exchanges' way: asyncio, SO_REUSEADDR
        server = await asyncio.start_server(lambda reader, writer: writer.close(), host, port)
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()

    asyncio.run(serve())
    with EmbeddedKafka(tmp_path) as broker:  # the Tansu broker on a port free_port picked and holds
        assert wait_for_port("127.0.0.1", broker.port, 5)
