"""The GraphQL schema, assembled from queries (and subscriptions)."""

from __future__ import annotations

import strawberry

from graphql_api.queries import Query

__all__ = ["schema"]

schema = strawberry.Schema(query=Query)
