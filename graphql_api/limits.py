"""Limits a public API needs before any route runs: the size of a request body, and live subscriptions per
WebSocket and per client address.

- **Bodies** larger than ``API_MAX_BODY_BYTES`` get HTTP 413 with a JSON reason, whether the client announced
  the size (``Content-Length``) or streams it in chunks; nothing of such a body reaches a route. WebSocket
  messages have the same limit (uvicorn's ``ws_max_size``, set where the server is configured).
- **Subscriptions**: one WebSocket may hold ``API_MAX_SUBSCRIPTIONS_PER_CONNECTION`` at once, one client
  address ``API_MAX_SUBSCRIPTIONS_PER_CLIENT`` over all its sockets, and the process ``API_MAX_SUBSCRIBERS``
  (the fan-out's own cap). Past a limit the new subscription gets a GraphQL error
  (``TOO_MANY_SUBSCRIPTIONS``) and everything already running goes on.
- **Shapes**: an update is encoded once per subscription shape (document, variables, markets, interval) and
  written to every socket of that shape, so its cost grows with the shapes that follow a market, not with
  the subscribers. One client address may hold :data:`MAX_SHAPES_PER_MARKET` shapes of one market, kind and
  interval: 1,000 subscriptions differing only by an alias held an API's loop for 40 s (``/health`` 3-4 s),
  where 1,000 of one shape cost 0.12 of a core.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Hashable, Iterator, Sequence
from typing import Any

import orjson
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from graphql_api.inputs import InputError

__all__ = ["MAX_SHAPES_PER_MARKET", "BodyLimit", "SubscriptionLimits"]

MAX_SHAPES_PER_MARKET = 8  # subscription shapes one client may hold of one market, kind and interval


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: HTTP request bodies of at most ``most`` bytes (see the module docstring)."""

    def __init__(self, app: ASGIApp, most: int) -> None:
        self.app = app
        self.most = most

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.most:
            await self._refuse(send)
            return
        body = bytearray()
        while True:  # read it all (at most ``most`` bytes) before the route sees any of it
            message = await receive()
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if len(body) > self.most:
                await self._refuse(send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        detail = f"the request body is larger than {self.most:,} bytes (API_MAX_BODY_BYTES)"
        payload = orjson.dumps({"detail": detail, "code": "BODY_TOO_LARGE"})
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


class SubscriptionLimits:
    """Live subscriptions held per WebSocket and per client address (see the module docstring)."""

    def __init__(self, per_connection: int, per_client: int) -> None:
        self.per_connection = per_connection
        self.per_client = per_client
        self.by_client: dict[str, int] = {}
        # (client, kind, market, interval) -> shape key -> subscriptions of it
        self.shapes: dict[tuple[Any, ...], dict[Hashable, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, connection: HTTPConnection | None) -> AsyncIterator[None]:
        """One subscription of ``connection`` while the block runs; an :class:`InputError` past a limit."""
        if connection is None:  # not over a WebSocket (a test calling the schema directly)
            yield
            return
        held = int(getattr(connection.state, "subscriptions", 0))
        client = connection.client.host if connection.client is not None else "?"
        if held >= self.per_connection:
            raise InputError(
                f"this WebSocket already holds {held} live subscriptions "
                "(API_MAX_SUBSCRIPTIONS_PER_CONNECTION); end one first",
                code="TOO_MANY_SUBSCRIPTIONS",
                status=429,
            )
        if self.by_client.get(client, 0) >= self.per_client:
            raise InputError(
                f"{client} already holds {self.by_client[client]} live subscriptions "
                "(API_MAX_SUBSCRIPTIONS_PER_CLIENT); end some first",
                code="TOO_MANY_SUBSCRIPTIONS",
                status=429,
            )
        connection.state.subscriptions = held + 1
        self.by_client[client] = self.by_client.get(client, 0) + 1
        try:
            yield
        finally:
            connection.state.subscriptions = int(connection.state.subscriptions) - 1
            left = self.by_client[client] - 1
            if left:
                self.by_client[client] = left
            else:
                del self.by_client[client]

    @contextlib.contextmanager
    def shape(
        self,
        connection: HTTPConnection | None,
        key: Hashable,
        kind: str,
        markets: Sequence[Any],
        interval: str,
    ) -> Iterator[None]:
        """One subscription of shape ``key`` following ``markets`` while the block runs; an
        :class:`InputError` when it would be the client's shape past :data:`MAX_SHAPES_PER_MARKET` of one."""
        if connection is None:
            yield
            return
        client = connection.client.host if connection.client is not None else "?"
        slots = [(client, kind, market, interval) for market in dict.fromkeys(markets)]
        for slot in slots:
            held = self.shapes.get(slot, {})
            if key not in held and len(held) >= MAX_SHAPES_PER_MARKET:
                raise InputError(
                    f"{client} already follows {slot[2][0]} {slot[2][1]} {kind} with {len(held)} different "
                    "subscription documents; subscribe with one of those (aliases, fields and variables "
                    "make a document different)",
                    code="TOO_MANY_SUBSCRIPTIONS",
                    status=429,
                )
        for slot in slots:
            held = self.shapes.setdefault(slot, {})
            held[key] = held.get(key, 0) + 1
        try:
            yield
        finally:
            for slot in slots:
                held = self.shapes[slot]
                if held[key] > 1:
                    held[key] -= 1
                else:
                    del held[key]
                    if not held:
                        del self.shapes[slot]
