"""The API app factory: GraphQL (with GraphiQL and subscriptions), the original REST routes, Plotly
figures, Prometheus metrics and the static dashboard.

``create_app`` has no import-time or construction-time effects: the store is opened, and the live feed's
Kafka consumer started (only when ``KAFKA_BOOTSTRAP`` is set), in the lifespan, and both are closed there.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import plotly
from cross_web import HTTPException  # what strawberry's views raise for a 4xx
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from strawberry.fastapi import GraphQLRouter

from cryptostream.errors import QueryError
from cryptostream.settings import Settings
from cryptostream.store import ReadStore, open_store
from graphql_api import rest, viz
from graphql_api.arrow import ArrowExecutor
from graphql_api.cache import ResponseCache
from graphql_api.catalog import MarketCatalog, configured_markets
from graphql_api.context import Context, Services
from graphql_api.docs import add_docs
from graphql_api.failures import StoreFailures
from graphql_api.fanout import Fanout
from graphql_api.inputs import InputError
from graphql_api.limits import BodyLimit
from graphql_api.metrics import RequestMetrics
from graphql_api.schema import build_schema
from graphql_api.status import StatusBoard
from graphql_api.websocket import (
    LegacyWSHandler,
    TransportWSHandler,
    check_strawberry,
    quiet_connection_logs,
)

__all__ = ["create_app"]

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


# GraphiQL's files, served by the app itself (graphql_api/static/vendor/graphiql/) so GraphiQL works with
# no internet. They are the npm files strawberry's page names, byte for byte: its integrity hashes still hold.
_UNPKG = "https://unpkg.com/"
_IDE_ASSETS = {
    "react@18.2.0/umd/react.production.min.js": "react.production.min.js",
    "react-dom@18.2.0/umd/react-dom.production.min.js": "react-dom.production.min.js",
    "js-cookie@3.0.5/dist/js.cookie.min.js": "js.cookie.min.js",
    "graphiql@3.8.3/graphiql.min.css": "graphiql.min.css",
    "graphiql@3.8.3/graphiql.min.js": "graphiql.min.js",
    "@graphiql/plugin-explorer@1.0.2/dist/style.css": "plugin-explorer.css",
    "@graphiql/plugin-explorer@1.0.2/dist/index.umd.js": "plugin-explorer.umd.js",
}


def graphiql_example(symbol: str) -> str:
    """What GraphiQL opens with: a query of this API on ``symbol`` that runs as it is (one operation, so the
    run button runs it), and a subscription to try."""
    return f"""# cryptostream: stored and live crypto candles,
# volatility and trend predictions.
#
# Run it with the run button (or Ctrl-Enter). The
# Docs panel (book icon, top left) describes every
# field; markets lists what is stored, by venue
# (exchange) and symbol. Dashboard: /, REST: /docs.

query Recent {{
  markets {{
    exchange symbol demo firstCandle lastCandle
  }}
  candles(symbol: "{symbol}", interval: "1m") {{
    exchange bucket open high low close volume
  }}
  latestPrediction(symbol: "{symbol}") {{
    bucket probabilityUp label
  }}
}}

# Live 1 s candles as they change: replace the
# query with this subscription (it needs the
# processor, and KAFKA_BOOTSTRAP set for the API).
#
# subscription Live {{
#   candles(symbols: ["{symbol}"]) {{
#     exchange symbol bucket close volume closed
#   }}
# }}
"""


# strawberry's GraphiQL page opens with GraphiQL's generic welcome text, a JavaScript template literal.
_EXAMPLE = re.compile(r"const EXAMPLE_QUERY = `.*?`;", re.DOTALL)


class _Router(GraphQLRouter[Context, None]):
    graphql_transport_ws_handler_class = TransportWSHandler
    graphql_ws_handler_class = LegacyWSHandler
    example = graphiql_example("BTCUSDT")
    shared_updates = True  # read by the WebSocket handlers (graphql_api.websocket)

    @property
    def graphql_ide_html(self) -> str:
        html = super().graphql_ide_html
        for remote, local in _IDE_ASSETS.items():
            html = html.replace(_UNPKG + remote, "/vendor/graphiql/" + local)
        if _UNPKG in html:  # a strawberry upgrade changed its asset list (tests/e2e/test_graphiql.py fails)
            log.warning("GraphiQL names files not vendored in static/vendor/graphiql: it needs internet")
        # A JSON string is a JavaScript string; "</" escaped so the text cannot end the <script> element.
        literal = orjson.dumps(self.example).decode().replace("</", "<\\/")
        html, found = _EXAMPLE.subn(lambda _: f"const EXAMPLE_QUERY = {literal};", html, count=1)
        if not found:  # tests/integration/test_api_queries.py fails too
            log.warning("GraphiQL's page has no EXAMPLE_QUERY any more: it opens without this API's example")
        return html

    # orjson: ~5x faster than json.dumps on a 1,000-candle result. A str, not bytes: WebSocket messages
    # must go out as text frames (graphql-ws clients reject binary ones).
    def encode_json(self, data: object) -> str:
        return orjson.dumps(data).decode()

    # Strawberry answered 500 to bodies that are not UTF-8 (json.loads raised UnicodeDecodeError; orjson
    # raises JSONDecodeError, a 400). decode_json also decodes every WebSocket message, whose shape the
    # handlers check (graphql_api.websocket), and GET's variables, which may be null.
    def decode_json(self, data: str | bytes) -> object:
        return orjson.loads(data)

    # The POST body (strawberry answered 500 to JSON that is not an object: found by the fuzz test).
    def parse_json(self, data: str | bytes) -> Any:
        body = super().parse_json(data)
        if isinstance(body, list):
            return body  # strawberry refuses batches itself (batching is off)
        if not isinstance(body, dict):
            raise HTTPException(
                400, 'The request body must be a JSON object: {"query": "...", "variables": {}}'
            )
        if not isinstance(body.get("operationName"), (str, type(None))):
            raise HTTPException(400, "The GraphQL operation's `operationName` must be a string or null.")
        return body

    # GET's variables and extensions: any JSON (null included); strawberry then says if it is no object.
    def parse_query_params(self, params: Any) -> dict[str, Any]:
        out = dict(params)
        for name in ("variables", "extensions"):
            if out.get(name):
                out[name] = super().parse_json(out[name])
        return out


async def _add_slash(request: Request) -> RedirectResponse:
    """The same route with its trailing slash, query kept (307: as FastAPI's own redirect)."""
    return RedirectResponse(request.url.replace(path=request.url.path + "/"), status_code=307)


def create_app(
    settings: Settings,
    store: ReadStore | None = None,
    *,
    executor: type[Any] = ArrowExecutor,
    shared_updates: bool = True,
) -> FastAPI:
    """Build the API for ``settings``; pass ``store`` to reuse an open read store (tests, benchmarks).
    ``shared_updates=False``: each subscriber's updates take strawberry's own path (a benchmark baseline)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = store is None
        read = store or await open_store(settings.database_dsn, settings.output_dir)
        board = StatusBoard()
        configured = configured_markets(settings.exchanges, settings.symbols, settings.state_dir)
        catalog = MarketCatalog(read, configured, settings.exchanges)
        fanout = Fanout(settings, read, board, catalog) if settings.kafka_bootstrap else None
        app.state.services = Services(
            settings=settings, store=read, catalog=catalog, board=board, fanout=fanout
        )
        stop = asyncio.Event()
        feed = asyncio.create_task(fanout.run(stop), name="live-feed") if fanout is not None else None
        probe = asyncio.create_task(app.state.services.probe.run(stop), name="store-probe")
        log.info(
            "API reading from %s (%s); live feed %s; dashboard at /, %s",
            read.name,
            settings.describe_database() if settings.database_dsn else settings.output_dir.resolve(),
            f"from {settings.kafka_candles_topic}" if fanout is not None else "off (no KAFKA_BOOTSTRAP)",
            "GraphQL at /graphql (API_PRODUCTION: no GraphiQL, no introspection)"
            if settings.api_production
            else "GraphiQL at /graphql",
        )
        check_strawberry()
        # Everything built so far (schema, Plotly's templates, modules) lives as long as the process: out of
        # the collector's sight, a full collection scans only what requests made (it took 160 ms a time under
        # bench_rest's load, every second or two, and /health waited behind it).
        gc.collect()
        gc.freeze()
        try:
            with quiet_connection_logs():
                yield
        finally:
            stop.set()
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe
            if feed is not None:
                try:
                    await asyncio.wait_for(feed, 10)
                except TimeoutError:
                    log.warning("live feed did not stop within 10 s; cancelled")
                    feed.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await feed
            if own:
                await read.close()

    app = FastAPI(
        title="cryptostream",
        version="0.1.0",
        description="Live and stored crypto candles: GraphQL at /graphql, the original REST routes at /api.",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc: graphql_api.docs, with files served here instead of a CDN's
        redoc_url=None,
    )
    add_docs(app)
    # inside CORS, which adds its headers per request origin
    app.add_middleware(ResponseCache, seconds=settings.api_cache_seconds)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST"],
        allow_headers=["*"],
    )
    routes: set[str] = set()  # filled below, once every route is registered
    app.add_middleware(RequestMetrics, routes=routes)
    app.add_middleware(BodyLimit, most=settings.api_max_body_bytes)  # outermost: before anything reads

    @app.exception_handler(InputError)
    async def input_error(_: Request, exc: InputError) -> JSONResponse:
        return JSONResponse({"detail": exc.message, **exc.extensions}, status_code=exc.status)

    @app.exception_handler(QueryError)
    async def query_error(_: Request, exc: QueryError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "code": "BAD_USER_INPUT"}, status_code=400)

    store_failures = StoreFailures(log)  # an outage fails every request alike: said once a minute

    async def store_failed(request: Request, exc: Exception) -> JSONResponse:
        store_failures.failed(f"{request.method} {request.url.path}", exc)
        detail = "the store is unavailable or not migrated; see the server log"
        return JSONResponse({"detail": detail, "code": "STORE_UNAVAILABLE"}, status_code=503)

    for failure in (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        app.add_exception_handler(failure, store_failed)

    async def context() -> Context:
        return Context(services=app.state.services)

    graphql = _Router(
        build_schema(settings, executor),
        context_getter=context,
        graphql_ide=None if settings.api_production else "graphiql",  # API_PRODUCTION: no GraphiQL page
        # strawberry's own cap (100 operations a socket, queries included, an error without a code) would
        # override API_MAX_SUBSCRIPTIONS_PER_CONNECTION: the context counts them (TOO_MANY_SUBSCRIPTIONS)
        max_subscriptions_per_connection=None,
    )
    graphql.example = graphiql_example(settings.symbols[0] if settings.symbols else "BTCUSDT")
    graphql.shared_updates = shared_updates
    app.include_router(graphql, prefix="/graphql", include_in_schema=False)
    for router in (rest.build_router(settings), viz.build_router(settings)):
        app.include_router(router)
        routes.update(route.path for route in router.routes if isinstance(route, APIRoute))

    if not settings.api_production:  # API_PRODUCTION: /metrics only on `serve`'s METRICS_PORT, not public

        @app.get("/metrics", include_in_schema=False)
        async def metrics() -> Response:
            return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    # The dashboard's Plotly bundle ships inside the plotly Python package (package_data): served from
    # there, so the page works offline with nothing copied into the repository or fetched from a CDN.
    plotly_js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"

    @app.api_route("/vendor/plotly.min.js", methods=["GET", "HEAD"], include_in_schema=False)
    async def plotly_bundle() -> FileResponse:
        return FileResponse(plotly_js, media_type="text/javascript")

    # FastAPI answers /api/ohlc with a redirect to the route /api/ohlc/ (the original project's clients
    # call either), but only when nothing else matches: the dashboard mounted at / matched first (404).
    for path in sorted(p for p in routes if p.endswith("/") and p != "/"):
        app.add_api_route(path[:-1], _add_slash, methods=["GET", "HEAD"], include_in_schema=False)
    routes.update({"/graphql", "/metrics", "/docs", "/redoc", "/openapi.json"})
    app.mount("/", StaticFiles(directory=STATIC, html=True), name="dashboard")
    return app
