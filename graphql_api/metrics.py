"""Prometheus metrics of the API (the shared ones live in :mod:`cryptostream.metrics`), and the ASGI
middleware that times every HTTP request by route (``/api/ohlc/``; no route has path parameters, so the
path is the template). Paths that are not routes are labelled ``static`` (dashboard files) or ``other``
(404s), so a client cannot blow up the label set."""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "FEED_DELAY",
    "FEED_MESSAGES",
    "REQUESTS",
    "REQUEST_SECONDS",
    "SUBSCRIBERS",
    "SUBSCRIBERS_DROPPED",
    "RequestMetrics",
]

REQUESTS = Counter("cryptostream_api_requests", "HTTP requests served", ["method", "route", "status"])
REQUEST_SECONDS = Histogram(
    "cryptostream_api_request_seconds",
    "Time to answer an HTTP request",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.04, 0.075, 0.1, 0.25, 0.5, 1, 2.5),
)
SUBSCRIBERS = Gauge("cryptostream_api_subscribers", "Live GraphQL subscriptions", ["kind"])
SUBSCRIBERS_DROPPED = Counter(
    "cryptostream_api_subscribers_dropped", "Subscriptions ended because the client fell behind", ["kind"]
)
FEED_MESSAGES = Counter("cryptostream_api_feed_messages", "Messages read from the candles topic", ["type"])
FEED_DELAY = Histogram(
    "cryptostream_api_feed_delay_seconds",
    "From the processor producing a message to the API handing it to subscribers",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class RequestMetrics:
    """Pure ASGI middleware (no BaseHTTPMiddleware: it would copy every body through a queue)."""

    def __init__(self, app: ASGIApp, routes: set[str]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            path = scope.get("path", "")
            route = path if path in self.routes else ("other" if status == 404 else "static")
            method = scope.get("method", "GET")
            REQUESTS.labels(method, route, str(status)).inc()
            REQUEST_SECONDS.labels(method, route).observe(time.perf_counter() - started)
