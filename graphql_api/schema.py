"""The GraphQL schema: queries and subscriptions, with the limits and caches of the settings.

``python -m graphql_api > schema.graphql`` writes the SDL kept in the repository (a test fails when
it is stale). Limits: query depth, aliases and tokens (``GRAPHQL_MAX_*``) are checked while validating,
before any resolver runs; parsing and validation results are cached per query text, so the 2,000th
client sending the same subscription costs a dictionary lookup. Errors a user caused (bad arguments,
unknown symbol, refused query) are shown as they are; anything unexpected is logged with its traceback
and shown as "Internal error" without internals.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import strawberry
from graphql import ASTValidationRule, GraphQLError
from strawberry.extensions import (
    MaxAliasesLimiter,
    ParserCache,
    QueryDepthLimiter,
    SchemaExtension,
    ValidationCache,
)
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionContext

from cryptostream.errors import QueryError
from cryptostream.settings import Settings
from graphql_api.arrow import ArrowExecutor
from graphql_api.fanout import SubscriberDropped
from graphql_api.inputs import InputError
from graphql_api.queries import Query
from graphql_api.subscriptions import Subscription
from graphql_api.types import SCALARS

__all__ = ["build_schema", "sdl"]

log = logging.getLogger(__name__)

SHOWN = (InputError, QueryError, SubscriberDropped)
CACHE_SIZE = 1024


def _internal(error: GraphQLError) -> bool:
    """True for errors nobody meant to show a user (a bug, a database outage)."""
    original = error.original_error
    return original is not None and not isinstance(original, (*SHOWN, GraphQLError))


INTERNAL = "Internal error; see the server log"


class Limits(SchemaExtension):
    """Token, depth and alias limits in one extension (fewer extensions = less work per streamed result)."""

    def __init__(self, max_tokens: int, rules: tuple[type[ASTValidationRule], ...]) -> None:
        self.max_tokens = max_tokens
        self.rules = rules

    def on_operation(self) -> Iterator[None]:
        context = self.execution_context
        context.parse_options["max_tokens"] = self.max_tokens
        context.validation_rules = context.validation_rules + self.rules
        yield


class ApiSchema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        """Log internal errors with their traceback and mask them in place (strawberry sends this very list).

        Masking here rather than with strawberry's MaskErrors extension: that one runs a hook per streamed
        result, a measurable share of the fan-out's cost with thousands of subscribers."""
        for i, error in enumerate(errors):
            if _internal(error):
                log.error("GraphQL resolver failed: %s", error, exc_info=error.original_error)
                errors[i] = GraphQLError(INTERNAL, error.nodes, error.source, error.positions, error.path)
            else:
                log.debug("GraphQL request refused: %s", error.message)


def build_schema(settings: Settings | None = None, executor: type[Any] = ArrowExecutor) -> strawberry.Schema:
    """The schema with the limits of ``settings`` (none when ``settings`` is None, as for the SDL)."""
    extensions: list[Any] = []
    if settings is not None:
        # The limiters build a validation rule class per instance; the validation cache keys on those
        # classes, so build them once here and hand every request the same ones (else it never hits).
        rules = (
            *QueryDepthLimiter(max_depth=settings.graphql_max_depth).validation_rules,
            *MaxAliasesLimiter(max_alias_count=settings.graphql_max_aliases).validation_rules,
        )
        extensions = [
            lambda: Limits(settings.graphql_max_tokens, rules),
            lambda: ParserCache(maxsize=CACHE_SIZE),
            lambda: ValidationCache(maxsize=CACHE_SIZE),
        ]
    return ApiSchema(
        query=Query,
        subscription=Subscription,
        extensions=extensions,
        execution_context_class=executor,
        config=StrawberryConfig(scalar_map=SCALARS),
    )


def sdl() -> str:
    """The schema in GraphQL SDL, as kept in ``schema.graphql``."""
    return build_schema().as_str() + "\n"
