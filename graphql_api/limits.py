"""Limits a public API needs before any route runs: the size of a request body, and live subscriptions per
WebSocket and per client address.

- **Bodies** larger than ``API_MAX_BODY_BYTES`` get HTTP 413 with a JSON reason, whether the client announced
  the size (``Content-Length``) or streams it in chunks; nothing of such a body reaches a route. WebSocket
  messages have the same limit (uvicorn's ``ws_max_size``, set where the server is configured).
- **Subscriptions**: one WebSocket may hold ``API_MAX_SUBSCRIPTIONS_PER_CONNECTION`` at once, one client
  address ``API_MAX_SUBSCRIPTIONS_PER_CLIENT`` over all its sockets, and the process ``API_MAX_SUBSCRIBERS``
  (the fan-out's own cap). Past a limit the new subscription gets a GraphQL error
  (``TOO_MANY_SUBSCRIPTIONS``) and everything already running goes on.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import orjson
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from graphql_api.inputs import InputError

__all__ = ["BodyLimit", "SubscriptionLimits"]


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
