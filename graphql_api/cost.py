"""The cost of a GraphQL query: the cells it may return, counted before anything runs.

Each top-level field (also one inside a fragment) costs the rows it may return times the fields selected
under it: its ``limit`` argument (from the literal, the request's variables, the variable's default, or
the schema's default) for list fields, one row for the others (``latestCandle``). Aliases are fields of
their own: ``a: candles(limit: 10000)`` and ``b: candles(limit: 10000)`` cost twice one. A query over
``GRAPHQL_MAX_COST`` cells is refused with ``QUERY_TOO_COSTLY`` and the figure, over HTTP and WebSocket.
Depth, aliases, tokens and fields have their own limits (``graphql_api.schema``); this one bounds what a
query that passes them can make the database and the serializer do (30 aliases x 10,000 rows x 13 fields).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    ValueNode,
    VariableNode,
)

__all__ = ["query_cost", "too_costly"]

INT_MAX = 2**31 - 1  # GraphQL's Int


def _limit(value: ValueNode, variables: dict[str, Any], defaults: Mapping[str, ValueNode]) -> int | None:
    """The ``limit`` a value node gives: a literal, or a variable from the request (an integral float
    counts: GraphQL takes ``10000.0`` as an Int) or its default in the operation."""
    if isinstance(value, VariableNode):
        name = value.name.value
        if name not in variables:
            return _limit(defaults[name], variables, {}) if name in defaults else None
        given = variables[name]
        if isinstance(given, float) and given.is_integer():
            return int(given)
        return given if isinstance(given, int) and not isinstance(given, bool) else None
    return int(value.value) if isinstance(value, IntValueNode) else None


def _rows(
    field: FieldNode, schema: GraphQLSchema, variables: dict[str, Any], defaults: Mapping[str, ValueNode]
) -> int:
    query = schema.query_type
    definition = query.fields.get(field.name.value) if query is not None else None
    if definition is None or "limit" not in definition.args:
        return 1
    for argument in field.arguments or ():
        if argument.name.value == "limit":
            given = _limit(argument.value, variables, defaults)
            if given is not None:  # beyond GraphQL's Int the request is invalid: strawberry says why
                return given if 0 <= given <= INT_MAX else 0
    default = definition.args["limit"].default_value
    return int(default) if isinstance(default, int) else 1


class _Count:
    """Counts a query's cells: every level of fragments (a level left out was a way around the limit:
    60 ``... on Query {`` wrapped 1.8 M values past a 500,000 limit), each named fragment once however
    often it is spread (spreads nested in spreads would otherwise cost the counter itself 2^n), and a
    fragment that spreads itself counts nothing (the query is invalid: strawberry says so)."""

    def __init__(
        self,
        fragments: dict[str, FragmentDefinitionNode],
        schema: GraphQLSchema,
        variables: dict[str, Any],
        defaults: Mapping[str, ValueNode],
    ) -> None:
        self.fragments = fragments
        self.schema = schema
        self.variables = variables
        self.defaults = defaults
        self.memo: dict[tuple[str, str], int] = {}  # (what, fragment) -> count
        self.open: set[tuple[str, str]] = set()  # fragments being counted (a cycle counts 0)

    def _fragment(self, what: str, name: str) -> int:
        key = (what, name)
        if key in self.memo:
            return self.memo[key]
        if key in self.open or name not in self.fragments:
            return 0
        self.open.add(key)
        selection = self.fragments[name].selection_set
        value = self.leaves(selection) if what == "leaves" else self.top(selection)
        self.open.discard(key)
        self.memo[key] = value
        return value

    def leaves(self, selection: SelectionSetNode | None) -> int:
        """Fields selected under a field, fragments expanded (at least 1: the field itself)."""
        if selection is None:
            return 1
        count = 0
        for node in selection.selections:
            if isinstance(node, FieldNode):
                count += self.leaves(node.selection_set) if node.selection_set else 1
            elif isinstance(node, InlineFragmentNode):
                count += self.leaves(node.selection_set)
            elif isinstance(node, FragmentSpreadNode):
                count += self._fragment("leaves", node.name.value)
        return max(count, 1)

    def top(self, selection: SelectionSetNode) -> int:
        """The cells of the operation's top-level fields, through the fragments that hold them
        (``... on Query { }``, ``...F``): each is a query of its own however it is spelled."""
        total = 0
        for node in selection.selections:
            if isinstance(node, FieldNode):
                rows = _rows(node, self.schema, self.variables, self.defaults)
                total += rows * self.leaves(node.selection_set) if rows else 0
            elif isinstance(node, InlineFragmentNode):
                total += self.top(node.selection_set)
            elif isinstance(node, FragmentSpreadNode):
                total += self._fragment("top", node.name.value)
        return total


def query_cost(
    document: DocumentNode,
    operation_name: str | None,
    schema: GraphQLSchema,
    variables: dict[str, Any] | None,
) -> int:
    """Cells the query operation ``operation_name`` picks may return (0 for other operations)."""
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    chosen = [
        op for op in operations if operation_name is None or (op.name and op.name.value == operation_name)
    ]
    if len(chosen) != 1 or chosen[0].operation is not OperationType.QUERY:
        return 0  # strawberry says what is wrong with it; subscriptions stream, they are not a result
    operation = chosen[0]
    defaults = {
        d.variable.name.value: d.default_value
        for d in operation.variable_definitions or ()
        if d.default_value
    }
    values = variables if isinstance(variables, dict) else {}
    return _Count(fragments, schema, values, defaults).top(operation.selection_set)


def too_costly(cost: int, most: int) -> GraphQLError | None:
    if cost <= most:
        return None
    return GraphQLError(
        f"this query may return {cost:,} values (rows x fields, each alias counted); at most {most:,} "
        "(GRAPHQL_MAX_COST): ask for fewer rows, fields or aliases, or split it",
        extensions={"code": "QUERY_TOO_COSTLY", "cost": cost, "limit": most},
    )
