"""The GraphQL schema: queries and subscriptions, with the limits and caches of the settings.

``python -m graphql_api > schema.graphql`` writes the SDL kept in the repository (a test fails when
it is stale). Limits: tokens (``GRAPHQL_MAX_TOKENS``) while parsing; query depth, aliases
(``GRAPHQL_MAX_DEPTH``, ``GRAPHQL_MAX_ALIASES``) and fields (:data:`MAX_FIELDS`) while validating, before
any resolver runs. Documents that pass validation are kept per query text (bounded in tokens:
:mod:`graphql_api.documents`), so the 2,000th client sending the same subscription costs a dictionary
lookup. Errors a user caused (bad arguments, unknown symbol, refused query) are shown as they are;
anything unexpected is logged with its traceback and shown as "Internal error" without internals.

Which operation runs follows the GraphQL spec's GetOperation: a document with several operations needs
``operationName`` (strawberry alone would run the first). A subscription sent as a plain HTTP request
(one result, not a stream) is refused with a message saying to use a WebSocket.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator
from typing import Any

import asyncpg
import strawberry
from graphql import (
    ASTValidationRule,
    DocumentNode,
    FieldNode,
    GraphQLError,
    Node,
    OperationDefinitionNode,
    OperationType,
)
from graphql.validation import NoSchemaIntrospectionCustomRule
from graphql.validation.validate import ValidationAbortedError
from strawberry.exceptions import MissingQueryError
from strawberry.extensions import MaxAliasesLimiter, QueryDepthLimiter, SchemaExtension
from strawberry.schema.config import StrawberryConfig
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.schema.schema import StreamResult
from strawberry.types import ExecutionContext, ExecutionResult
from strawberry.types.execution import PreExecutionError
from strawberry.types.graphql import OperationType as StrawberryOperationType

from cryptostream.errors import QueryError
from cryptostream.settings import Settings
from graphql_api.arrow import ArrowExecutor
from graphql_api.cost import query_cost, too_costly
from graphql_api.documents import DocumentCache
from graphql_api.failures import StoreFailures
from graphql_api.fanout import SubscriberDropped
from graphql_api.inputs import InputError
from graphql_api.queries import Query
from graphql_api.subscriptions import Subscription
from graphql_api.types import SCALARS

__all__ = ["build_schema", "sdl"]

log = logging.getLogger(__name__)

# Errors of the request, not of the server: their messages are the answer. strawberry's own name a missing
# query, an operationName the document does not have, or an operation type the transport does not run.
SHOWN = (
    InputError,
    QueryError,
    SubscriberDropped,
    MissingQueryError,
    CannotGetOperationTypeError,
    InvalidOperationTypeError,
)
# Fields one document may select, each repetition counted. graphql-core's overlapping-fields check compares
# fields pairwise within a fixed budget and answers a bare "Validation aborted." past it (~750 identical
# fields); every document within this limit and GRAPHQL_MAX_TOKENS stays well inside that budget.
MAX_FIELDS = 500
# The code of each limit's refusal, as QUERY_TOO_COSTLY has one (graphql_api.cost). graphql-core's token limit
# and strawberry's alias and depth limiters make errors without one, so they are known by their message.
LIMIT_CODES = (
    (re.compile(r"\d+ aliases found\. Allowed: \d+"), "TOO_MANY_ALIASES"),
    (re.compile(r".* exceeds maximum operation depth of \d+"), "QUERY_TOO_DEEP"),
    (re.compile(r"Syntax Error: Document contains more than \d+ tokens\. .*"), "TOO_MANY_TOKENS"),
)


def _internal(error: GraphQLError) -> bool:
    """True for errors nobody meant to show a user (a bug, a database outage)."""
    original = error.original_error
    return original is not None and not isinstance(original, (*SHOWN, GraphQLError))


INTERNAL = "Internal error; see the server log"
# The store down (or not migrated): said as REST says it (503 STORE_UNAVAILABLE), so a client can tell an
# outage from a bug.
STORE_FAILURES = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
UNAVAILABLE = "the store is unavailable or not migrated; see the server log"


def _fields(document: DocumentNode) -> int:
    """Field selections written in ``document`` (fragments counted once, where they are defined)."""
    count = 0
    stack: list[Node] = list(document.definitions)
    while stack:  # no recursion: nesting is bounded by the tokens only
        node = stack.pop()
        count += isinstance(node, FieldNode)
        selections = getattr(node, "selection_set", None)
        if selections is not None:
            stack.extend(selections.selections)
    return count


class FieldLimit(ASTValidationRule):
    """At most :data:`MAX_FIELDS` fields per document. Checked on entering the document, before any other
    rule looks at a selection, and it ends validation there (as graphql-core's own budget does)."""

    def enter_document(self, node: DocumentNode, *_: object) -> None:
        found = _fields(node)
        if found > MAX_FIELDS:
            raise ValidationAbortedError(
                f"{found} fields found. Allowed: {MAX_FIELDS} per request (each repeated field counts); "
                "select fewer fields or split the request",
                extensions={"code": "TOO_MANY_FIELDS"},
            )


Parse = Callable[[str], DocumentNode]


class Limits(SchemaExtension):
    """Token, depth, alias and field limits and the document cache in one extension (fewer extensions = less
    work per streamed result). A document the cache kept has passed validation with these rules (the cache
    and the rules belong to one schema), so it is not validated again; one that passes is kept.

    Parsing here instead of with strawberry's ParserCache: that one parses outside strawberry's error
    handling, so a syntax error escaped as an exception (a WebSocket operation died with a traceback and
    the client got a bare ``complete`` or nothing). A document that does not parse is left to strawberry,
    which parses it again and reports the error to the client."""

    def __init__(
        self, max_tokens: int, documents: DocumentCache, rules: tuple[type[ASTValidationRule], ...]
    ) -> None:
        self.max_tokens = max_tokens
        self.documents = documents
        self.rules = rules

    def on_operation(self) -> Iterator[None]:
        context = self.execution_context
        context.parse_options["max_tokens"] = self.max_tokens
        context.validation_rules = context.validation_rules + self.rules
        yield

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        if context.query and context.graphql_document is None:
            with contextlib.suppress(GraphQLError):
                context.graphql_document = self.documents(context.query)
        yield

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        text, document = context.query, context.graphql_document
        known = text is not None and document is not None and self.documents.valid(text, document)
        if known:
            context.pre_execution_errors = []  # strawberry validates only while this is None
        yield
        if not known and text is not None and document is not None and not context.pre_execution_errors:
            self.documents.passed(text, document)


def _operation_refused(
    document: DocumentNode, operation_name: str | None, *, streamed: bool
) -> GraphQLError | None:
    """Why the operation of ``document`` that ``operation_name`` picks cannot run here, if it cannot.

    ``streamed`` is False for a request answered with one result (HTTP), where a subscription cannot run."""
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if operation_name is None and len(operations) > 1:
        names = ", ".join(op.name.value if op.name else "(anonymous)" for op in operations)
        return GraphQLError(
            f"The document has {len(operations)} operations ({names}): send operationName to say which "
            "one to run",
            extensions={"code": "OPERATION_NAME_REQUIRED"},
        )
    if not streamed:
        for op in operations:
            named = operation_name is None or (op.name is not None and op.name.value == operation_name)
            if named and op.operation is OperationType.SUBSCRIPTION:
                return GraphQLError(
                    "Subscriptions stream over a WebSocket: connect to /graphql with the "
                    "graphql-transport-ws (or legacy graphql-ws) protocol. A plain HTTP request runs "
                    'queries only, e.g. { latestCandle(symbol: "BTCUSDT") { close } }',
                    extensions={"code": "SUBSCRIPTION_NEEDS_WEBSOCKET"},
                )
    return None


async def _refusal(error: GraphQLError) -> AsyncGenerator[PreExecutionError, None]:
    yield PreExecutionError(data=None, errors=[error])


class ApiSchema(strawberry.Schema):
    """The schema with its request checks (see the module docstring) and error masking.

    ``execute`` (HTTP) and ``stream`` (WebSocket; ``subscribe`` calls it) check which operation a request
    runs before strawberry does, with the same cached parse the :class:`Limits` extension then reuses."""

    def __init__(
        self, *args: Any, parse: Parse | None = None, max_cost: int | None = None, **kwargs: Any
    ) -> None:
        """``parse``: the cached parse of the :class:`Limits` extension (None: no checks, as for the SDL);
        ``max_cost``: GRAPHQL_MAX_COST (see :mod:`graphql_api.cost`)."""
        super().__init__(*args, **kwargs)
        self.parse = parse
        self.max_cost = max_cost
        self.store_failures = StoreFailures(log)

    def _too_costly(
        self, query: str | None, operation_name: str | None, variables: dict[str, Any] | None
    ) -> GraphQLError | None:
        if self.parse is None or self.max_cost is None or not isinstance(query, str) or not query:
            return None
        try:
            document = self.parse(query)
        except GraphQLError:
            return None  # strawberry reports it
        return too_costly(query_cost(document, operation_name, self._schema, variables), self.max_cost)

    def _refused(
        self, query: str | None, operation_name: str | None, *, streamed: bool
    ) -> GraphQLError | None:
        if self.parse is None or not isinstance(query, str) or not query:
            return None
        try:
            document = self.parse(query)
        except GraphQLError:
            return None  # strawberry reports it
        return _operation_refused(document, operation_name, streamed=streamed)

    async def execute(
        self,
        query: str | None,
        variable_values: dict[str, Any] | None = None,
        context_value: Any | None = None,
        root_value: Any | None = None,
        operation_name: str | None = None,
        allowed_operation_types: Iterable[StrawberryOperationType] | None = None,
        operation_extensions: dict[str, Any] | None = None,
    ) -> ExecutionResult:
        refused = self._refused(query, operation_name, streamed=False) or self._too_costly(
            query, operation_name, variable_values
        )
        if refused is not None:
            return ExecutionResult(data=None, errors=[refused])
        return await super().execute(
            query,
            variable_values,
            context_value,
            root_value,
            operation_name,
            allowed_operation_types,
            operation_extensions,
        )

    async def stream(
        self,
        query: str | None,
        variable_values: dict[str, Any] | None = None,
        context_value: Any | None = None,
        root_value: Any | None = None,
        operation_name: str | None = None,
        operation_extensions: dict[str, Any] | None = None,
        allowed_operation_types: Iterable[StrawberryOperationType] | None = None,
    ) -> StreamResult:
        # a query sent over a WebSocket runs as over HTTP: the same cost limit
        refused = self._refused(query, operation_name, streamed=True) or self._too_costly(
            query, operation_name, variable_values
        )
        if refused is not None:
            return _refusal(refused)
        return await super().stream(
            query,
            variable_values,
            context_value,
            root_value,
            operation_name,
            operation_extensions,
            allowed_operation_types,
        )

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        """Log internal errors with their traceback and mask them in place (strawberry sends this very list).

        Masking here rather than with strawberry's MaskErrors extension: that one runs a hook per streamed
        result, a measurable share of the fan-out's cost with thousands of subscribers."""
        for i, error in enumerate(errors):
            if error.original_error is None and not error.extensions:
                code = next((c for pattern, c in LIMIT_CODES if pattern.fullmatch(error.message)), None)
                if code is not None:
                    error.extensions = {"code": code}
            if _internal(error):
                down = isinstance(error.original_error, STORE_FAILURES)
                if down:  # an outage fails every request alike: said once a minute (graphql_api.failures)
                    assert error.original_error is not None
                    self.store_failures.failed("GraphQL", error.original_error)
                else:
                    log.error("GraphQL resolver failed: %s", error, exc_info=error.original_error)
                errors[i] = GraphQLError(
                    UNAVAILABLE if down else INTERNAL,
                    error.nodes,
                    error.source,
                    error.positions,
                    error.path,
                    extensions={"code": "STORE_UNAVAILABLE"} if down else None,
                )
            else:
                log.debug("GraphQL request refused: %s", error.message)


def build_schema(settings: Settings | None = None, executor: type[Any] = ArrowExecutor) -> strawberry.Schema:
    """The schema with the limits of ``settings`` (none when ``settings`` is None, as for the SDL)."""
    extensions: list[Any] = []
    parser: Parse | None = None
    if settings is not None:
        # The rules are built once: a document the cache keeps passed validation with exactly these.
        rules: tuple[type[ASTValidationRule], ...] = (
            FieldLimit,
            *QueryDepthLimiter(max_depth=settings.graphql_max_depth).validation_rules,
            *MaxAliasesLimiter(max_alias_count=settings.graphql_max_aliases).validation_rules,
        )
        if settings.api_production:  # the schema is in the repository (schema.graphql), not served
            rules = (*rules, NoSchemaIntrospectionCustomRule)
        max_tokens = settings.graphql_max_tokens
        parser = documents = DocumentCache(max_tokens)
        extensions = [lambda: Limits(max_tokens, documents, rules)]
    return ApiSchema(
        query=Query,
        subscription=Subscription,
        extensions=extensions,
        execution_context_class=executor,
        config=StrawberryConfig(scalar_map=SCALARS),
        parse=parser,
        max_cost=None if settings is None else settings.graphql_max_cost,
    )


def sdl() -> str:
    """The schema in GraphQL SDL, as kept in ``schema.graphql``."""
    return build_schema().as_str() + "\n"
