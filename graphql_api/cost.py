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

from collections.abc import Iterator, Mapping
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


def _leaves(
    selection: SelectionSetNode | None, fragments: dict[str, FragmentDefinitionNode], depth: int = 0
) -> int:
    """Fields selected under a field, fragments expanded (at least 1: the field itself)."""
    if selection is None or depth > 50:
        return 1
    count = 0
    for node in selection.selections:
        if isinstance(node, FieldNode):
            count += _leaves(node.selection_set, fragments, depth + 1) if node.selection_set else 1
        elif isinstance(node, InlineFragmentNode):
            count += _leaves(node.selection_set, fragments, depth + 1)
        elif isinstance(node, FragmentSpreadNode) and node.name.value in fragments:
            count += _leaves(fragments[node.name.value].selection_set, fragments, depth + 1)
    return max(count, 1)


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


def _top_fields(
    selection: SelectionSetNode, fragments: dict[str, FragmentDefinitionNode], depth: int = 0
) -> Iterator[FieldNode]:
    """The operation's top-level fields, through the fragments that hold them (``... on Query { }``,
    ``...F``): each is a query of its own however it is spelled."""
    for node in selection.selections:
        if isinstance(node, FieldNode):
            yield node
        elif depth > 50:  # a fragment cycle is invalid: strawberry says so
            continue
        elif isinstance(node, InlineFragmentNode):
            yield from _top_fields(node.selection_set, fragments, depth + 1)
        elif isinstance(node, FragmentSpreadNode) and node.name.value in fragments:
            yield from _top_fields(fragments[node.name.value].selection_set, fragments, depth + 1)


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
    total = 0
    for node in _top_fields(operation.selection_set, fragments):
        total += _rows(node, schema, values, defaults) * _leaves(node.selection_set, fragments)
    return total


def too_costly(cost: int, most: int) -> GraphQLError | None:
    if cost <= most:
        return None
    return GraphQLError(
        f"this query may return {cost:,} values (rows x fields, each alias counted); at most {most:,} "
        "(GRAPHQL_MAX_COST): ask for fewer rows, fields or aliases, or split it",
        extensions={"code": "QUERY_TOO_COSTLY", "cost": cost, "limit": most},
    )
