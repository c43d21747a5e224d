"""The original README's REST routes, same paths and parameters, so its users keep working.

``/api/ohlc/``, ``/api/ohlc/latest``, ``/api/volatility/``, ``/api/symbols`` and ``/health`` answer in the
seed's shapes (``{"data": [...], "count": n, "symbol": s}``), with a few added fields (``trade_count``,
``vwap``, buy/sell volume; ``source`` of volatility). Dates are ``YYYY-MM-DD`` (whole UTC days, the end day
included) or ISO 8601 times. Bad parameters are a 4xx with a message: 422 for a malformed or out-of-range
parameter, 400 for a bad date or range, 404 for an unknown symbol.

``/api/volatility/`` keeps the seed's fallback: when no stored volatility exists for the range (or all of
it is zero), it is computed from the candles' closes, as the seed did: rolling standard deviation of 1 s
log returns over min(10, n) candles, at least two returns, zero where undefined.
"""

from datetime import UTC, datetime
from typing import Annotated, Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from cryptostream.errors import QueryError
from cryptostream.models import VOLATILITY_SCHEMA
from cryptostream.settings import Settings
from graphql_api.context import Services
from graphql_api.inputs import InputError, check_range, parse_date

__all__ = ["FALLBACK_WINDOW", "build_router", "fallback_volatility", "load_ohlc", "load_volatility"]

FALLBACK_WINDOW = 10


def json_response(content: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, media_type="application/json")


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def _symbols(services: Services, symbol: str | None) -> list[str]:
    if symbol is None or symbol == "":
        return list(await services.catalog.stored())
    return [await services.symbol(symbol)]


def _range(start_date: str | None, end_date: str | None) -> tuple[datetime | None, datetime | None]:
    return check_range(parse_date(start_date, "start_date"), parse_date(end_date, "end_date", end=True))


async def load_ohlc(
    services: Services, symbol: str, start: datetime | None, end: datetime | None, limit: int
) -> pa.Table:
    try:
        return await services.store.candles(symbol, start=start, end=end, limit=limit)
    except QueryError as exc:
        raise InputError(str(exc)) from None


async def load_volatility(
    services: Services, symbol: str, start: datetime | None, end: datetime | None, limit: int
) -> tuple[pa.Table, str]:
    """Stored volatility, or (seed behaviour) volatility computed from candles when none is stored."""
    try:
        table = await services.store.volatility(symbol, start=start, end=end, limit=limit)
    except QueryError as exc:
        raise InputError(str(exc)) from None
    values = table["volatility"]
    usable = table.num_rows and pc.any(pc.and_(pc.is_finite(values), pc.not_equal(values, 0.0))).as_py()
    if usable:
        finite = pc.is_finite(values)
        return table.filter(pc.fill_null(finite, False)), "stored"
    ohlc = await load_ohlc(services, symbol, start, end, limit)
    return fallback_volatility(ohlc), "ohlc"


def fallback_volatility(ohlc: pa.Table, window: int = FALLBACK_WINDOW) -> pa.Table:
    """Rolling std (ddof 1) of log returns of closes over min(window, n) rows, >= 2 returns, else 0."""
    n = ohlc.num_rows
    if n == 0:
        return VOLATILITY_SCHEMA.empty_table()
    closes = ohlc["close"].to_numpy()
    returns = np.full(n, np.nan)
    if n > 1:
        returns[1:] = np.diff(np.log(closes))
    width = max(1, min(window, n))
    padded = np.concatenate([np.full(width - 1, np.nan), returns])
    windows = np.lib.stride_tricks.sliding_window_view(padded, width)
    counts = np.sum(~np.isnan(windows), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.nansum(windows, axis=1) / np.maximum(counts, 1)
        squares = np.nansum((windows - means[:, None]) ** 2, axis=1)
        std = np.sqrt(squares / np.maximum(counts - 1, 1))
    vol = np.abs(np.where(counts >= 2, std, 0.0))
    vol = np.nan_to_num(vol, nan=0.0, posinf=0.0, neginf=0.0)
    return pa.table(
        {
            "symbol": ohlc["symbol"],
            "bucket": ohlc["bucket"],
            "volatility": pa.array(vol, pa.float64()),
            "window_seconds": pa.array(np.full(n, width, np.int32)),
        },
        schema=VOLATILITY_SCHEMA,
    )


def _iso(column: pa.ChunkedArray) -> list[str]:
    return [t.isoformat() for t in column.to_pylist()]


def _rows(table: pa.Table, names: list[str]) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts, built column-wise (``timestamp`` = ``bucket`` in ISO 8601)."""
    columns: list[list[Any]] = []
    keys: list[str] = []
    for name in names:
        if name == "timestamp":
            columns.append(_iso(table["bucket"]))
        else:
            columns.append(table[name].to_pylist())
        keys.append(name)
    return [dict(zip(keys, row, strict=True)) for row in zip(*columns, strict=True)]


OHLC_FIELDS = [
    "timestamp",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "symbol",
    "trade_count",
    "vwap",
    "buy_volume",
    "sell_volume",
]


def _newest(tables: list[pa.Table], limit: int, empty: pa.Table) -> pa.Table:
    if not tables:
        return empty
    table = pa.concat_tables(tables).sort_by([("bucket", "ascending"), ("symbol", "ascending")])
    return table.slice(max(0, table.num_rows - limit))


def build_router(settings: Settings) -> APIRouter:
    router = APIRouter()
    most = settings.api_max_limit

    Symbol = Annotated[
        str | None, Query(description="Symbol, e.g. BTCUSDT (BTC-USD works too); all if omitted.")
    ]
    StartDate = Annotated[str | None, Query(description="Start date (YYYY-MM-DD) or ISO 8601 time, UTC.")]
    EndDate = Annotated[
        str | None, Query(description="End date (YYYY-MM-DD, included) or ISO 8601 time, UTC.")
    ]
    Limit = Annotated[int, Query(ge=1, le=most, description=f"Newest rows to return (1..{most}).")]

    @router.get("/api/ohlc/", tags=["OHLC"], summary="OHLC candles (1 s)")
    async def ohlc(
        request: Request,
        symbol: Symbol = None,
        start_date: StartDate = None,
        end_date: EndDate = None,
        limit: Limit = 1000,
    ) -> Response:
        services = services_of(request)
        start, end = _range(start_date, end_date)
        names = await _symbols(services, symbol)
        tables = [await load_ohlc(services, name, start, end, limit) for name in names]
        table = _newest(tables, limit, pa.table({"bucket": pa.array([], pa.timestamp("ms", tz="UTC"))}))
        data = _rows(table, OHLC_FIELDS) if table.num_rows else []
        return json_response({"data": data, "count": len(data), "symbol": names[0] if symbol else None})

    @router.get("/api/ohlc/latest", tags=["OHLC"], summary="Newest candle of each symbol")
    async def ohlc_latest(request: Request, symbol: Symbol = None) -> Response:
        services = services_of(request)
        data: list[dict[str, Any]] = []
        for name in await _symbols(services, symbol):
            table = await services.store.latest_candle(name)
            if table.num_rows:
                data.extend(_rows(table.slice(table.num_rows - 1), OHLC_FIELDS))
        return json_response({"data": data})

    @router.get("/api/volatility/", tags=["Volatility"], summary="Volatility (stored, or computed from OHLC)")
    async def volatility(
        request: Request,
        symbol: Symbol = None,
        start_date: StartDate = None,
        end_date: EndDate = None,
        limit: Limit = 1000,
    ) -> Response:
        services = services_of(request)
        start, end = _range(start_date, end_date)
        tables: list[pa.Table] = []
        sources: set[str] = set()
        names = await _symbols(services, symbol)
        for name in names:
            table, source = await load_volatility(services, name, start, end, limit)
            if table.num_rows:
                tables.append(table)
                sources.add(source)
        table = _newest(tables, limit, VOLATILITY_SCHEMA.empty_table())
        data = _rows(table, ["timestamp", "volatility", "symbol", "window_seconds"]) if table.num_rows else []
        return json_response(
            {
                "data": data,
                "count": len(data),
                "symbol": names[0] if symbol else None,
                "source": "+".join(sorted(sources)) or None,
            }
        )

    @router.get("/api/symbols", tags=["Utility"], summary="Symbols with stored candles")
    async def symbols(request: Request) -> Response:
        names = list(await services_of(request).catalog.stored(fresh_within=1.0))
        return json_response({"symbols": names, "count": len(names)})

    @router.get("/health", tags=["Utility"], summary="Liveness of the API, its store and its live feed")
    async def health(request: Request) -> Response:
        services = services_of(request)
        ok = await services.store.ping()
        feed = None if services.fanout is None else services.fanout.ready.is_set()
        healthy = ok and feed is not False
        return json_response(
            {
                "status": "healthy" if healthy else "degraded",
                "store": services.store.name,
                "database": ok,
                "live_feed": feed,
                "subscribers": 0 if services.fanout is None else services.fanout.subscribers,
                "timestamp": datetime.now(UTC).isoformat(),
            }
        )

    return router
