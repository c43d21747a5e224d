"""Shared subscriptions: a live event executed and encoded once per subscription shape, and the same bytes
written to every subscriber of that shape.

Through strawberry, each subscriber's every update ran its own result path: the selection set (memoized
per event by :class:`graphql_api.arrow.ArrowExecutor`), strawberry's per-result extension hooks, the
message dict, JSON encoding, a task switch, then the send; 45-100 us of CPU per delivery on the 2-core
development machine. Here the cost per event is one execution and one encoding per distinct *shape*, and one
WebSocket frame per operation id; per subscriber it is one write of those bytes to its transport
(:mod:`graphql_api.wsprotocol`), 23 us there, most of it the kernel's loopback ``send()`` (31-32 us when
each frame went through ASGI's send; ``bench/bench_api.py``):

- **Shape** (:class:`Shape`): what a result depends on. The operation (query text, ``operationName``,
  variables, which name one subscription field and its selection), the kind of update and the markets the
  resolver chose (a symbol with no exchange names the venue the catalog picks *at subscribe time*). Payload
  types' fields are plain attributes, so the result does not depend on the connection's context.
- **Outlet** (:class:`Outlet`): one operation on one socket. Its frame is prebuilt around the payload:
  ``{"id":<id>,"type":"next","payload":<payload>}`` on graphql-transport-ws, ``{"type":"data","id":<id>,
  "payload":<payload>}`` on the legacy graphql-ws (the key order strawberry writes).

Everything before the first update still goes through strawberry and graphql-core unchanged: parsing,
validation, limits, variable coercion, the resolver's argument checks and errors, ``error`` and
``complete`` messages, and the subscriber dropped for falling behind (an error result, then
``complete``). Only the updates themselves bypass strawberry's per-result path: the resolver finds the
operation's :class:`Outlet` in :data:`OUTLET` (set by the WebSocket handlers of :mod:`graphql_api.websocket`
for the operation's task) and registers its subscriber with the shape; the fan-out writes each frame as
it comes (:meth:`Outlet.start`, no task woken when the socket takes it at once) and the operation's task waits
for the end (:meth:`graphql_api.fanout.Subscriber.deliver`). The slow-subscriber policy is the fan-out's,
unchanged: a bounded queue per subscriber, dropped when full, never waited for.

Errors in a result (a non-null field that is null) are masked and logged by the schema's
``process_errors``, as strawberry does. The per-event execution runs without strawberry's resolver
middleware: the schema's extensions (:mod:`graphql_api.schema`) have no ``resolve`` hook.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine, Generator, Hashable
from contextvars import ContextVar
from inspect import isawaitable
from typing import Any

import orjson
from graphql import ExecutionResult, GraphQLError, execute_subscription_event, parse
from graphql.execution import Executor
from starlette.websockets import WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketDisconnected as StarletteDisconnected
from strawberry.http.exceptions import WebSocketDisconnected
from strawberry.schema import Schema

from graphql_api.fanout import ClientGone
from graphql_api.wsprotocol import FRAMES, text_frame

__all__ = ["DISCONNECTED", "OUTLET", "Message", "Outlet", "Shape", "shape_of"]

log = logging.getLogger(__name__)

# What sending to a client that has gone raises, depending on who notices first: strawberry's adapter,
# starlette (a close already sent: the client left, or the server closed the socket for the client's doing,
# as graphql-transport-ws does for a duplicate id or a malformed message), or the ASGI server's disconnect.
DISCONNECTED = (WebSocketDisconnected, StarletteDisconnected, WebSocketDisconnect)


class Message:
    """One update framed for one operation id: its text, and its WebSocket frame's bytes (serialized once, on
    first use, however many sockets it is written to)."""

    __slots__ = ("_wire", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._wire: bytes | None = None

    @property
    def wire(self) -> bytes:
        wire = self._wire
        if wire is None:
            wire = self._wire = text_frame(self.text.encode())
        return wire


class Outlet:
    """One subscription operation on one WebSocket: its frame around a shared payload, and its socket."""

    __slots__ = ("context", "operation_name", "prefix", "query", "schema", "variables", "websocket", "write")

    def __init__(
        self,
        websocket: WebSocket,
        schema: Schema,
        context: Any,
        operation_id: str,
        query: str,
        variables: dict[str, Any] | None,
        operation_name: str | None,
        *,
        legacy: bool,
    ) -> None:
        self.websocket = websocket
        self.schema = schema
        self.context = context
        self.query = query
        self.variables = variables
        self.operation_name = operation_name
        op = orjson.dumps(operation_id).decode()
        # Everything of the frame's text before the payload: two outlets with the same prefix send the same
        # bytes for an update (the fan-out frames an update once per prefix).
        if legacy:
            self.prefix = f'{{"type":"data","id":{op},"payload":'
        else:
            self.prefix = f'{{"id":{op},"type":"next","payload":'
        extensions = (websocket.scope.get("extensions") or {}) if websocket is not None else {}
        # Writes a frame's bytes (``Message.wire``) to the socket now, or answers False (nothing written):
        # the fan-out's way for the usual case, one call per delivery. None under other ASGI servers.
        self.write: Callable[[bytes], bool] | None = extensions.get(FRAMES)

    def frame(self, payload: str) -> Message:
        """The message carrying ``payload`` (an encoded ``{"data": ...}``) for this operation."""
        return Message(self.prefix + payload + "}")

    @staticmethod
    def wire(message: Message) -> bytes:
        """``message``'s WebSocket frame, the bytes :attr:`write` takes."""
        return message.wire

    def start(self, message: Message) -> Awaitable[None] | None:
        """Send ``message``: None when the socket took it at once (the usual case, and then no task had to
        wake for it), else the rest of the send, to be awaited (the client reads slowly: the transport
        paused). Under :class:`graphql_api.wsprotocol.FrameWriterProtocol` the frame's bytes go straight to
        the transport when they can; otherwise, and under other servers, through ASGI."""
        write = self.write
        if write is not None and write(message.wire):
            return None
        send = self.websocket.send_text(message.text)
        try:
            blocked_on = send.send(None)
        except StopIteration:
            return None
        except DISCONNECTED as exc:
            send.close()
            raise ClientGone(str(exc)) from exc
        except BaseException:
            send.close()
            raise
        return _Rest(send, blocked_on)


class _Rest:
    """The rest of a coroutine that was started by hand and has suspended on ``blocked_on``: awaiting this
    hands the suspension to the awaiting task (what ``yield from`` does), and the coroutine runs to its end.
    Starting sends by hand is what lets one event be written to thousands of sockets without waking a task
    per socket; a send only suspends when its socket's transport is paused."""

    __slots__ = ("blocked_on", "coroutine")

    def __init__(self, coroutine: Coroutine[Any, Any, None], blocked_on: Any) -> None:
        self.coroutine = coroutine
        self.blocked_on = blocked_on

    def __await__(self) -> Generator[Any, Any, None]:
        try:
            yield from self._rest()
        except DISCONNECTED as exc:
            raise ClientGone(str(exc)) from exc

    def _rest(self) -> Generator[Any, Any, None]:
        coroutine, blocked_on = self.coroutine, self.blocked_on
        while True:
            try:
                sent = yield blocked_on
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as exc:  # cancellation, thrown in by the awaiting task
                try:
                    blocked_on = coroutine.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    blocked_on = coroutine.send(sent)
                except StopIteration:
                    return


# The outlet of the WebSocket operation whose task is running (None anywhere else: HTTP, tests calling the
# schema). Set in the operation's own task, so concurrent operations never see each other's.
OUTLET: ContextVar[Outlet | None] = ContextVar("graphql_api_outlet", default=None)


class Shape:
    """One distinct subscription: executes an update's selection set and encodes its payload, once."""

    __slots__ = ("_build", "_executor", "key", "schema")

    def __init__(self, key: Hashable, build: Callable[[], Executor[Any]], schema: Schema) -> None:
        self.key = key
        self.schema = schema
        self._build = build  # only the first subscriber of a shape needs its executor built
        self._executor: Executor[Any] | None = None

    def payload(self, item: Any) -> str:
        """``{"data": ...}`` (and ``"errors"``, masked) for the update ``item``, as JSON text."""
        executor = self._executor
        if executor is None:
            executor = self._executor = self._build()
        result = execute_subscription_event(executor.build_per_event_executor(item))
        if isawaitable(result):  # an async field resolver on a payload type: not shareable as written
            close = getattr(result, "close", None)
            if close is not None:
                close()
            log.error("live update of %s has an async field; payload types must be plain", type(item))
            result = ExecutionResult(None, [GraphQLError("async field in a live update")])
        body: dict[str, Any] = {"data": result.data}
        if result.errors:
            errors = list(result.errors)
            self.schema.process_errors(errors)  # masks internal errors in place, logs them
            body["errors"] = [error.formatted for error in errors]
        return orjson.dumps(body).decode()


def shape_of(outlet: Outlet, kind: str, markets: list[Any], interval: str) -> Shape:
    """The shape of ``outlet``'s subscription operation, following ``markets``."""
    variables = orjson.dumps(outlet.variables or {}, option=orjson.OPT_SORT_KEYS, default=str)
    key = (outlet.query, outlet.operation_name, variables, kind, tuple(markets), interval)

    def build() -> Executor[Any]:
        # The document this subscriber's operation was validated from (parsed once per shape, not per event);
        # ``_schema``: strawberry's graphql-core schema, which it has no public name for.
        executor_class = outlet.schema.execution_context_class or Executor
        executor = executor_class.build(
            outlet.schema._schema,
            parse(outlet.query),
            context_value=outlet.context,
            raw_variable_values=outlet.variables,
            operation_name=outlet.operation_name,
        )
        if isinstance(executor, list):  # cannot happen: this very operation was coerced for the resolver
            raise GraphQLError("; ".join(error.message for error in executor))
        return executor

    return Shape(key, build, outlet.schema)
