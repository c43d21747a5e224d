"""GraphQL over WebSockets: strawberry's protocol handlers, adjusted where their defaults hurt users, and
quieter connection logs.

- **A refused operation is an ``error`` message, not a closed connection.** On graphql-transport-ws,
  strawberry closes the whole socket (4400) when a document has a syntax error or names no runnable
  operation. One socket carries every subscription of a page (the dashboard's, GraphiQL's), so one bad
  document would end them all; the protocol's ``error`` message ("operation execution error(s) ... before
  execution starts") ends just that operation and tells the client why.
- **A client that goes away is routine.** Its operation may be sending when the socket closes. strawberry
  logs that as an ERROR with a traceback (graphql-transport-ws), or leaves it as "Task exception was never
  retrieved" (graphql-ws). Here it is a DEBUG line.
- **Connections are not news.** uvicorn logs every WebSocket at INFO three times (``[accepted]``,
  ``connection open``, ``connection closed``); with a dashboard per viewer that is most of the log. Those
  lines become DEBUG lines, and so do asyncio's "socket.send() raised exception." warnings that a client
  vanishing mid-stream causes; the subscriber count is in ``/health`` and ``/metrics``.

- **Live updates are shared.** Each operation's task knows its :class:`graphql_api.shared.Outlet` (its
  socket, its id and its protocol's frame), so a subscription resolver can have its updates encoded once per
  shape and written here without strawberry's per-result path.

The first point overrides ``_get_pre_execution_close_reason``, a private method of strawberry's handler
(strawberry 0.341). If a strawberry upgrade renames it, the override does nothing, a warning says so at
start-up, and ``tests/integration/test_api_websocket.py`` fails.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

from graphql import GraphQLError
from starlette.websockets import WebSocket
from strawberry.http.exceptions import NonJsonMessageReceived, NonTextMessageReceived
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler

from graphql_api.context import Context
from graphql_api.shared import DISCONNECTED, OUTLET, Outlet

__all__ = [
    "MAX_OPERATION_ID",
    "LegacyWSHandler",
    "TransportWSHandler",
    "check_strawberry",
    "message_problem",
    "quiet_connection_logs",
]

log = logging.getLogger(__name__)


def check_strawberry() -> None:
    """Warn when the method :class:`TransportWSHandler` overrides is gone from strawberry."""
    if not hasattr(BaseGraphQLTransportWSHandler, "_get_pre_execution_close_reason"):
        log.warning(
            "strawberry no longer has BaseGraphQLTransportWSHandler._get_pre_execution_close_reason: a "
            "subscription with a bad document now closes the client's whole WebSocket (graphql_api.websocket)"
        )


def _shared(view: object) -> bool:
    """Whether the GraphQL router shares live updates (``create_app(shared_updates=...)``)."""
    return bool(getattr(view, "shared_updates", True))


def _starlette(websocket: object) -> WebSocket:
    """The Starlette WebSocket under strawberry's adapter (``ASGIWebSocketAdapter.ws``)."""
    ws = getattr(websocket, "ws", None)
    if not isinstance(ws, WebSocket):
        raise TypeError(f"expected strawberry's ASGI WebSocket adapter, got {type(websocket).__name__}")
    return ws


def _bind_outlet(
    handler: TransportWSHandler | LegacyWSHandler,
    operation_id: str,
    query: str,
    variables: dict[str, object] | None,
    operation_name: str | None,
    legacy: bool,
) -> None:
    """In the operation's own task: tell its resolver where its shared updates go (both protocols)."""
    if _shared(handler.view):
        OUTLET.set(
            Outlet(
                _starlette(handler.websocket),
                handler.schema,  # type: ignore[arg-type]
                handler.context,
                operation_id,
                query,
                variables,
                operation_name,
                legacy=legacy,
            )
        )


# Longest operation id accepted: every update an operation is sent carries its id, and a subscriber's
# queue holds up to API_SUBSCRIBER_QUEUE of them (clients use counters or UUIDs: 36 characters).
MAX_OPERATION_ID = 128
_OPERATION = {"subscribe", "complete", "start", "stop"}  # message types that name an operation
_RUN = {"subscribe", "start"}  # ... and those that carry one to run


def message_problem(message: object) -> str | None:
    """What is wrong with the shape of a client's message, or None. strawberry trusts it: a message that is
    not an object, an id that is not a string, or a payload that is not an object raised in its handler,
    which dropped the socket (and every subscription on it) without a close frame."""
    if not isinstance(message, dict):
        return "a message must be a JSON object"
    kind = message.get("type")
    if not isinstance(kind, str):
        return "a message's type must be a string"
    if kind in _OPERATION:
        ident = message.get("id")
        if not isinstance(ident, str) or not 0 < len(ident) <= MAX_OPERATION_ID:
            return f"a {kind} message's id must be a string of 1 to {MAX_OPERATION_ID} characters"
    if kind in _RUN:
        payload = message.get("payload")
        if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
            return f'a {kind} message\'s payload must be an object with a string "query"'
        for name, kinds, what in (
            ("variables", dict, "an object"),
            ("operationName", str, "a string"),
            ("extensions", dict, "an object"),
        ):
            if not isinstance(payload.get(name), (kinds, type(None))):
                return f"a {kind} message's {name} must be {what} or null"
    return None


class TransportWSHandler(BaseGraphQLTransportWSHandler[Context, None]):
    """graphql-transport-ws, the dashboard's and GraphiQL's protocol."""

    async def handle_message(self, message: Any) -> None:
        problem = message_problem(message)
        if problem is not None:  # the protocol: a message it does not specify closes the socket with 4400
            await self.handle_invalid_message(problem)
            return
        await super().handle_message(message)

    async def run_operation(self, operation: Operation[Context, None]) -> None:
        _bind_outlet(
            self, operation.id, operation.query, operation.variables, operation.operation_name, False
        )
        await super().run_operation(operation)

    @staticmethod
    def _get_pre_execution_close_reason(error: GraphQLError) -> str | None:
        return None  # never close the socket for one operation's error: send it an ``error`` message

    async def handle_task_exception(self, error: Exception) -> None:
        if isinstance(error, DISCONNECTED):
            log.debug("subscription ended: the client went away (%r)", error)
        else:
            await super().handle_task_exception(error)


_NOT_JSON = object()  # what a text message that is not JSON reads as (legacy graphql-ws)
_NOT_TEXT = object()  # ... and a binary message
_LEGACY_TYPES = ("connection_init", "start", "stop", "connection_terminate")  # what a legacy client sends


class _ReportsNonJson:
    """strawberry's WebSocket adapter, but a text message that is not JSON comes out as :data:`_NOT_JSON`
    instead of being skipped in silence (strawberry's legacy handler reads with ``ignore_parsing_errors``),
    and a binary one as :data:`_NOT_TEXT` instead of closing the socket (1002, every subscription on it
    gone), so the client gets an ``error`` saying so. Everything else is the adapter's."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def iter_json(self, *, ignore_parsing_errors: bool = False) -> Any:
        while True:
            try:
                async for message in self._inner.iter_json(ignore_parsing_errors=False):
                    yield message
                return
            except NonJsonMessageReceived:
                yield _NOT_JSON
            except NonTextMessageReceived:
                yield _NOT_TEXT


class LegacyWSHandler(BaseGraphQLWSHandler[Context, None]):
    """The legacy graphql-ws protocol (Apollo's subscriptions-transport-ws)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.websocket = _ReportsNonJson(self.websocket)  # type: ignore[assignment]

    async def handle_message(self, message: Any) -> None:
        if message is _NOT_JSON:
            problem: str | None = "a message must be JSON"
        elif message is _NOT_TEXT:
            problem = "a message must be text (JSON), not binary"
        else:
            problem = message_problem(message)
            if problem is None and message["type"] not in _LEGACY_TYPES:  # strawberry ignores it in silence
                expected = ", ".join(_LEGACY_TYPES)
                problem = f"unknown message type {message['type'][:40]!r}: expected {expected}"
        if problem is not None:  # as subscriptions-transport-ws did: an error, the connection kept
            ident = message.get("id") if isinstance(message, dict) else None
            reply: dict[str, Any] = {"type": "error", "payload": {"message": problem}}
            if isinstance(ident, str) and len(ident) <= MAX_OPERATION_ID:
                reply["id"] = ident
            await self.websocket.send_json(reply)
            return
        await super().handle_message(message)

    async def handle_async_results(
        self,
        operation_id: str,
        query: str,
        operation_name: str | None,
        variables: dict[str, object] | None,
    ) -> None:
        _bind_outlet(self, operation_id, query, variables, operation_name, True)
        try:
            await super().handle_async_results(operation_id, query, operation_name, variables)
        except DISCONNECTED as exc:
            log.debug("subscription %s ended: the client went away (%r)", operation_id, exc)


def _uvicorn_connection_line(message: str) -> bool:
    """uvicorn's ``[accepted]`` and the ``websockets`` library's ``connection open`` / ``connection closed``
    (uvicorn hands it its ``uvicorn.error`` logger)."""
    return message in ("connection open", "connection closed") or (
        '"WebSocket ' in message and message.endswith("[accepted]")
    )


def _asyncio_closed_socket_line(message: str) -> bool:
    """asyncio's warning for each write to a socket the peer has reset, past the fifth: a subscription
    whose client vanished sends what it had queued before the server notices the loss."""
    return message == "socket.send() raised exception."


# logger -> which of its lines are routine
_ROUTINE = {"uvicorn.error": _uvicorn_connection_line, "asyncio": _asyncio_closed_socket_line}


class _Routine(logging.Filter):
    """Turns the routine INFO and WARNING lines of one logger into DEBUG lines."""

    def __init__(self, routine: Callable[[str], bool]) -> None:
        super().__init__()
        self.routine = routine

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno in (logging.INFO, logging.WARNING) and self.routine(str(record.msg)):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


@contextlib.contextmanager
def quiet_connection_logs() -> Iterator[None]:
    """While the app runs (its lifespan), WebSocket connections and disconnections log at DEBUG."""
    filters = {name: _Routine(routine) for name, routine in _ROUTINE.items()}
    for name, quiet in filters.items():
        logging.getLogger(name).addFilter(quiet)
    try:
        yield
    finally:
        for name, quiet in filters.items():
            logging.getLogger(name).removeFilter(quiet)
