"""The API app factory: GraphQL (with GraphiQL), health, and the static dashboard. No import-time effects."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from strawberry.fastapi import GraphQLRouter

from cryptostream.settings import Settings
from cryptostream.store import ReadStore, open_store
from graphql_api.context import Context
from graphql_api.schema import schema

__all__ = ["create_app"]

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


def create_app(settings: Settings, store: ReadStore | None = None) -> FastAPI:
    """Build the API for ``settings``; pass ``store`` to reuse an open read store (tests)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = store is None
        app.state.store = store or await open_store(settings.database_dsn, settings.output_dir)
        log.info(
            "API reading from %s (%s); dashboard at /, GraphiQL at /graphql",
            app.state.store.name,
            settings.describe_database() if settings.database_dsn else settings.output_dir.resolve(),
        )
        try:
            yield
        finally:
            if own:
                await app.state.store.close()

    app = FastAPI(title="cryptostream", version="0.1.0", lifespan=lifespan)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST"],
        allow_headers=["*"],
    )

    async def context(request: Request) -> Context:
        return Context(store=request.app.state.store, settings=settings)

    app.include_router(
        GraphQLRouter(schema, context_getter=context, graphql_ide="graphiql"), prefix="/graphql"
    )

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        s: ReadStore = request.app.state.store
        ok = await s.ping()
        return {"status": "healthy" if ok else "degraded", "store": s.name, "database": ok}

    app.mount("/", StaticFiles(directory=STATIC, html=True), name="dashboard")
    return app
