"""Arrow-backed lists for GraphQL, and an executor that completes them column by column.

graphql-core completes a list of objects one field of one item at a time: 1,000 candles x 11 fields is
11,000 resolver calls and serializations, about 35 ms on this machine before any JSON is written. The
data comes out of the store as Arrow columns anyway, so resolvers hand back :class:`ArrowRows` (a list of
objects) or :class:`ArrowColumn` (a list of scalars) and :class:`ArrowExecutor` completes them from the
columns when the selection allows it: every selected field a plain attribute of a leaf type, no
``@defer``/``@stream``. Anything else (a field with a resolver, a nested object, a null where the schema
says non-null) falls back to graphql-core's ordinary path, which sees plain Python objects and reports
errors exactly as it always does. The result is the same JSON either way; ``tests/unit/test_api_arrow.py``
checks that.

For subscriptions the executor also memoizes the result of one event for one operation: 2,000 clients
subscribed with the same query text (one parsed document, thanks to the parser cache) and variables get
the same event, so the selection set is executed once per event instead of 2,000 times.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar, overload

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from graphql import (
    GraphQLBoolean,
    GraphQLFloat,
    GraphQLInt,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLString,
    OperationType,
)
from graphql.execution.collect_fields import FieldDetailsList
from graphql.language import OperationDefinitionNode
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

__all__ = ["ArrowColumn", "ArrowExecutor", "ArrowRows", "LiveEvent", "PlainExecutor"]

T = TypeVar("T")

_INT32 = (-(2**31), 2**31 - 1)
_DEFINITION = "strawberry-definition"


class ArrowRows(Sequence[T], Generic[T]):
    """The rows of an Arrow table as a read-only list of ``factory(**row)`` objects, built on demand."""

    __slots__ = ("_rows", "factory", "table")

    def __init__(self, table: pa.Table, factory: Callable[..., T]) -> None:
        self.table = table
        self.factory = factory
        self._rows: list[T] | None = None

    def _materialize(self) -> list[T]:
        if self._rows is None:
            self._rows = [self.factory(**row) for row in self.table.to_pylist()]
        return self._rows

    def __len__(self) -> int:
        return int(self.table.num_rows)

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[T]: ...
    def __getitem__(self, index: int | slice) -> T | Sequence[T]:
        return self._materialize()[index]

    def __iter__(self) -> Iterator[T]:
        return iter(self._materialize())


class ArrowColumn(Sequence[Any]):
    """One Arrow column (or array) as a read-only list of Python scalars."""

    __slots__ = ("_values", "array")

    def __init__(self, array: pa.Array | pa.ChunkedArray) -> None:
        self.array = array
        self._values: list[Any] | None = None

    def values(self) -> list[Any]:
        if self._values is None:
            self._values = self.array.to_pylist()
        return self._values

    def __len__(self) -> int:
        return len(self.array)

    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Any]: ...
    def __getitem__(self, index: int | slice) -> Any:
        return self.values()[index]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.values())


class LiveEvent:
    """Mixin of subscription payload types: the executor memoizes per-operation results on the instance."""

    def graphql_memo(self) -> dict[Any, Any]:
        memo: dict[Any, Any] = self.__dict__.setdefault("_graphql_memo", {})
        return memo


def _unwrap(type_: GraphQLOutputType) -> GraphQLOutputType:
    return type_.of_type if isinstance(type_, GraphQLNonNull) else type_


def _column_values(array: pa.Array | pa.ChunkedArray, leaf: Any, non_null: bool) -> list[Any] | None:
    """The column as JSON-ready Python values, or None when only the slow path can complete it.

    Nulls of a nullable field stay null (``None``); a null where the schema says non-null takes the slow
    path, where graphql-core reports it as it always does."""
    nulls = array.null_count
    if nulls and non_null:
        return None
    if nulls == len(array):
        return [None] * nulls
    kind = array.type
    if leaf is GraphQLFloat and pa.types.is_floating(kind):
        if not pc.all(pc.is_finite(array)).as_py():  # nulls are skipped
            return None  # graphql-core raises the proper "cannot represent" error
        return _pylist(array)
    if leaf is GraphQLInt and pa.types.is_integer(kind):
        if len(array):
            bounds = pc.min_max(array)
            if bounds["min"].as_py() < _INT32[0] or bounds["max"].as_py() > _INT32[1]:
                return None
        return _pylist(array)
    if leaf.name == "Long" and pa.types.is_integer(kind):
        return _pylist(array)
    if leaf is GraphQLFloat and pa.types.is_integer(kind):
        return [None if v is None else float(v) for v in _pylist(array)]
    if leaf.name == "DateTime" and not nulls and pa.types.is_timestamp(kind) and kind.tz in ("UTC", "+00:00"):
        # What strawberry's DateTime gives (datetime.isoformat()), for whole seconds, 15x faster than
        # building 1,000 datetime objects; anything else takes the per-value path below.
        moments = array.to_numpy() if isinstance(array, pa.Array) else array.combine_chunks().to_numpy()
        seconds = moments.astype("datetime64[s]")
        if (moments == seconds).all():
            return [text + "+00:00" for text in np.datetime_as_string(seconds, unit="s").tolist()]
    if (leaf is GraphQLString and pa.types.is_string(kind)) or (
        leaf is GraphQLBoolean and pa.types.is_boolean(kind)
    ):
        return _pylist(array)
    serialize = leaf.serialize
    return [None if v is None else serialize(v) for v in _pylist(array)]


def _pylist(array: pa.Array | pa.ChunkedArray) -> list[Any]:
    values: list[Any] = array.to_pylist()
    return values


class ArrowExecutor(StrawberryGraphQLCoreExecutionContext):
    """Strawberry's executor plus the column-wise completion and per-event memo described above."""

    def complete_list_value(
        self,
        return_type: GraphQLList[GraphQLOutputType],
        field_details_list: FieldDetailsList,
        info: Any,
        path: Any,
        result: Any,
        position_context: Any,
    ) -> Any:
        if (
            isinstance(result, (ArrowRows, ArrowColumn))
            and self.get_stream_usage(field_details_list, path) is None
        ):
            item_type = return_type.of_type
            non_null = isinstance(item_type, GraphQLNonNull)
            inner = _unwrap(item_type)
            if isinstance(result, ArrowColumn) and not isinstance(inner, (GraphQLList, GraphQLObjectType)):
                values = _column_values(result.array, inner, non_null)
                if values is not None:
                    return values
            elif isinstance(result, ArrowRows) and isinstance(inner, GraphQLObjectType):
                rows = self._complete_rows(inner, field_details_list, result)
                if rows is not None:
                    return rows
        return super().complete_list_value(
            return_type, field_details_list, info, path, result, position_context
        )

    def _complete_rows(
        self, object_type: GraphQLObjectType, field_details_list: FieldDetailsList, rows: ArrowRows[Any]
    ) -> list[dict[str, Any]] | None:
        grouped, defers, _ = self.collect_subfields(object_type, field_details_list)
        if defers:
            return None
        table = rows.table
        keys: list[str] = []
        columns: list[list[Any]] = []
        n = table.num_rows
        for key, details in grouped.items():
            name = details[0].node.name.value
            if name == "__typename":
                keys.append(key)
                columns.append([object_type.name] * n)
                continue
            field = object_type.fields.get(name)
            if field is None or any(d.node.arguments or d.node.selection_set for d in details):
                return None
            definition = field.extensions.get(_DEFINITION)
            python_name = getattr(definition, "python_name", None)
            if python_name is None or getattr(definition, "base_resolver", True) is not None:
                return None
            if python_name not in table.column_names:
                return None
            leaf = _unwrap(field.type)
            if isinstance(leaf, (GraphQLList, GraphQLObjectType)) or not hasattr(leaf, "serialize"):
                return None
            values = _column_values(table[python_name], leaf, isinstance(field.type, GraphQLNonNull))
            if values is None:
                return None
            keys.append(key)
            columns.append(values)
        if not keys:
            return [{} for _ in range(n)]
        return [dict(zip(keys, row, strict=True)) for row in zip(*columns, strict=True)]

    def _memo_key(self) -> tuple[int, bytes]:
        """What a subscription event's result depends on besides the event: the operation and variables."""
        key: tuple[int, bytes] | None = getattr(self, "_memo", None)
        if key is None:
            key = (id(self.operation), _variables_key(self.variable_values.coerced))
            self._memo = key
        return key

    def build_per_event_executor(self, payload: Any) -> Any:
        # Called once per subscriber per event: on a memo hit, skip copying the executor altogether.
        if isinstance(payload, LiveEvent) and self.operation.operation is OperationType.SUBSCRIPTION:
            found = payload.graphql_memo().get(self._memo_key())
            if found is not None and found[0] is self.operation:
                return _Memoized(found[1])
        executor = super().build_per_event_executor(payload)
        executor._memo = self._memo_key() if isinstance(payload, LiveEvent) else None  # type: ignore[attr-defined]
        return executor

    def execute_operation(self, serially: bool | None = None) -> Any:
        root = self.root_value
        operation: OperationDefinitionNode = self.operation
        if (
            serially is False
            and isinstance(root, LiveEvent)
            and operation.operation is OperationType.SUBSCRIPTION
        ):
            result: Any = super().execute_operation(serially)
            if not self.is_awaitable(result) and not result.errors:
                # The operation is kept with the result so its id cannot be reused while the memo lives.
                root.graphql_memo()[self._memo_key()] = (operation, result)
            return result
        return super().execute_operation(serially)


class _Memoized:
    """Stands in for a per-event executor whose result is already known."""

    __slots__ = ("result",)

    def __init__(self, result: Any) -> None:
        self.result = result

    def execute_operation(self, serially: bool | None = None) -> Any:
        return self.result


class PlainExecutor(StrawberryGraphQLCoreExecutionContext):
    """Strawberry's default executor, named so benchmarks can compare against it."""


def _variables_key(variables: dict[str, Any]) -> bytes:
    if not variables:
        return b""
    return orjson.dumps(variables, option=orjson.OPT_SORT_KEYS, default=str)
