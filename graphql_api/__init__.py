"""The API: Strawberry GraphQL on FastAPI, the original REST routes, and the dashboard."""

from graphql_api.app import create_app

__all__ = ["create_app"]
