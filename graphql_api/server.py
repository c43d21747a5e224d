"""Running the app under uvicorn: the production options in one place, and a background server for
tests and benchmarks that talk to the API over real HTTP and WebSockets.

``ws``: uvicorn's sans-I/O WebSocket protocol, able to write a live update's frame straight to the socket
(:mod:`graphql_api.wsprotocol`). ``ws_per_message_deflate=False``: compressing every small subscription
message costs more CPU than the bytes it saves, and with thousands of subscribers that CPU is the fan-out's
budget.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any

import uvicorn
from fastapi import FastAPI

from cryptostream.procs import free_port
from graphql_api.wsprotocol import FrameWriterProtocol

__all__ = ["BackgroundServer", "uvicorn_config"]


def uvicorn_config(app: FastAPI, host: str, port: int, **overrides: Any) -> uvicorn.Config:
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_config": None,
        "ws": FrameWriterProtocol,
        "ws_per_message_deflate": False,
        "lifespan": "on",
        "backlog": 4096,
        # A client is its socket's address. uvicorn by default believes X-Forwarded-For from 127.0.0.1, so any
        # local client (or a proxy passing the header on) could name its own address and get round the
        # per-client subscription limits (API_MAX_SUBSCRIPTIONS_PER_CLIENT, the shapes per market).
        "proxy_headers": False,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)


class BackgroundServer:
    """``with BackgroundServer(app) as server: httpx.get(server.url + "/health")`` — uvicorn on a free port
    in a thread with its own event loop (the app's lifespan runs there, as it does in production)."""

    def __init__(
        self, app: FastAPI, host: str = "127.0.0.1", port: int | None = None, **overrides: Any
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.server = uvicorn.Server(uvicorn_config(app, host, self.port, **overrides))
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError(f"uvicorn on port {self.port} exited during start-up (see the log)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn on port {self.port} did not start within {timeout:.0f}s")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(5)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
