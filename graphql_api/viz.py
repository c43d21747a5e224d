"""The seed's ``/api/viz/*`` routes: Plotly figures as JSON (``Plotly.newPlot(el, fig.data, fig.layout)``).

Same paths, parameters and look as the original (dark template, one figure per route, 404 when a symbol
has no data), plus ``exchange=`` (the venue rule of :mod:`graphql_api.rest` otherwise). Titles name the
market's venue, and say so when it is demo data.

Figures are built as the JSON ``plotly.graph_objects.Figure(...).to_json()`` gives, without building the
Figure: Plotly's validation of every point and its deep copy of the template on each
``update_layout(template=...)`` cost 70-400 ms a figure. The template is rendered once by Plotly itself
(:func:`dark_template`); columns are written as JSON arrays (not Plotly >= 6's base64 typed arrays, which the
seed's users and older plotly.js versions do not read), times in ISO 8601 as the original routes gave them.
"""

import functools
from collections.abc import Callable
from typing import Annotated, Any

import orjson
import plotly.graph_objects as go
import pyarrow as pa
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from cryptostream.settings import Settings
from cryptostream.venues import is_demo
from graphql_api.catalog import MarketKey
from graphql_api.inputs import InputError
from graphql_api.rest import VENUE_RULE, array_json, load_ohlc, load_volatility, off_loop, services_of

__all__ = [
    "Figure",
    "build_router",
    "candlestick_figure",
    "dark_template",
    "figure_response",
    "market_label",
    "multi_symbol_figure",
    "price_line_figure",
    "volatility_figure",
    "volume_figure",
]

COLORS = ["#00d4ff", "#ff6b6b", "#4ecdc4", "#ffe66d", "#a8e6cf"]
Figure = dict[str, Any]  # a Plotly figure as JSON: {"data": [trace, ...], "layout": {...}}


def market_label(market: MarketKey) -> str:
    """``BTCUSDT · binance``; demo data says so (``BTCUSDT · synthetic (DEMO DATA)``)."""
    exchange, symbol = market
    return f"{symbol} · {exchange}" + (" (DEMO DATA)" if is_demo(exchange) else "")


@functools.cache
def dark_template() -> orjson.Fragment:
    """The ``plotly_dark`` template as Plotly writes it into a figure's layout, rendered on first use."""
    layout = orjson.loads(go.Figure(layout={"template": "plotly_dark"}).to_json())["layout"]
    return orjson.Fragment(orjson.dumps(layout["template"]))


def _layout(title: str, y_title: str, height: int, **more: Any) -> dict[str, Any]:
    return {
        "template": dark_template(),
        "title": {"text": title},
        "xaxis": {"title": {"text": "Time"}},
        "yaxis": {"title": {"text": y_title}},
        "height": height,
        **more,
    }


def _x(table: pa.Table) -> orjson.Fragment:
    return orjson.Fragment(array_json(table["bucket"]))


def _y(table: pa.Table, name: str) -> orjson.Fragment:
    return orjson.Fragment(array_json(table[name]))


def candlestick_figure(label: str, ohlc: pa.Table) -> Figure:
    trace = {
        "close": _y(ohlc, "close"),
        "high": _y(ohlc, "high"),
        "low": _y(ohlc, "low"),
        "name": label,
        "open": _y(ohlc, "open"),
        "x": _x(ohlc),
        "type": "candlestick",
    }
    return {"data": [trace], "layout": _layout(f"{label} Price Chart (Candlestick)", "Price (USD)", 600)}


def _line(name: str, color: str, table: pa.Table, column: str, **more: Any) -> dict[str, Any]:
    """A Scatter trace in lines mode, keys in Plotly's order."""
    return {
        **more,
        "line": {"color": color, "width": 2},
        "mode": "lines",
        "name": name,
        "x": _x(table),
        "y": _y(table, column),
        "type": "scatter",
    }


def price_line_figure(label: str, ohlc: pa.Table) -> Figure:
    trace = _line("Close Price", COLORS[0], ohlc, "close")
    return {"data": [trace], "layout": _layout(f"{label} Closing Price Over Time", "Price (USD)", 500)}


def volatility_figure(label: str, vol: pa.Table) -> Figure:
    trace = _line(
        "Volatility",
        COLORS[1],
        vol,
        "volatility",
        fill="tozeroy",
        hovertemplate="<b>%{fullData.name}</b><br>Time: %{x}<br>Volatility: %{y:.6f}<br><extra></extra>",
    )
    layout = _layout(
        f"{label} Volatility Over Time", "Volatility (Std of Log Returns)", 500, hovermode="x unified"
    )
    return {"data": [trace], "layout": layout}


def volume_figure(label: str, ohlc: pa.Table) -> Figure:
    trace = {
        "marker": {"color": COLORS[2]},
        "name": "Volume",
        "x": _x(ohlc),
        "y": _y(ohlc, "volume"),
        "type": "bar",
    }
    return {"data": [trace], "layout": _layout(f"{label} Trading Volume", "Volume", 400)}


def multi_symbol_figure(series: dict[str, pa.Table]) -> Figure:
    """One line per market, named by its label (:func:`market_label`)."""
    traces = [
        _line(label, COLORS[i % len(COLORS)], ohlc, "close")
        for i, (label, ohlc) in enumerate(series.items())
        if ohlc.num_rows
    ]
    return {"data": traces, "layout": _layout("Multi-Symbol Price Comparison", "Price (USD)", 600)}


def _figure_json(build: Callable[..., Figure], *args: Any) -> bytes:
    return orjson.dumps(build(*args))


async def figure_response(build: Callable[..., Figure], *args: Any, rows: int) -> Response:
    """The figure ``build(*args)`` makes, as JSON; built off the event loop when it has many ``rows``."""
    return Response(await off_loop(rows, _figure_json, build, *args), media_type="application/json")


def build_router(settings: Settings) -> APIRouter:
    router = APIRouter(prefix="/api/viz", tags=["Visualizations"])
    most = settings.api_max_limit
    Symbol = Annotated[str, Query(description="Symbol, e.g. BTCUSDT.")]
    Exchange = Annotated[
        str | None,
        Query(description="Venue, e.g. binance, coinbase, synthetic (demo data); the venue rule without it."),
    ]
    Limit = Annotated[int, Query(ge=1, le=most, description=f"Number of data points (1..{most}).")]

    async def ohlc_of(
        request: Request, symbol: str, exchange: str | None, limit: int
    ) -> tuple[str, pa.Table]:
        services = services_of(request)
        market = await services.market(symbol, exchange or None)
        table = await load_ohlc(services, market, None, None, limit)
        if not table.num_rows:
            raise InputError(f"No data found for {market_label(market)}", code="NO_DATA", status=404)
        return market_label(market), table

    @router.get("/candlestick", summary="Candlestick chart of OHLC data", description=VENUE_RULE)
    async def candlestick(
        request: Request, symbol: Symbol, exchange: Exchange = None, limit: Limit = 500
    ) -> Response:
        label, table = await ohlc_of(request, symbol, exchange, limit)
        return await figure_response(candlestick_figure, label, table, rows=table.num_rows)

    @router.get("/price-line", summary="Line chart of closing prices", description=VENUE_RULE)
    async def price_line(
        request: Request, symbol: Symbol, exchange: Exchange = None, limit: Limit = 500
    ) -> Response:
        label, table = await ohlc_of(request, symbol, exchange, limit)
        return await figure_response(price_line_figure, label, table, rows=table.num_rows)

    @router.get("/volume", summary="Bar chart of volume", description=VENUE_RULE)
    async def volume(
        request: Request, symbol: Symbol, exchange: Exchange = None, limit: Limit = 500
    ) -> Response:
        label, table = await ohlc_of(request, symbol, exchange, limit)
        return await figure_response(volume_figure, label, table, rows=table.num_rows)

    @router.get(
        "/volatility", summary="Volatility chart (stored, or computed from OHLC)", description=VENUE_RULE
    )
    async def volatility(
        request: Request, symbol: Symbol, exchange: Exchange = None, limit: Limit = 500
    ) -> Response:
        services = services_of(request)
        market = await services.market(symbol, exchange or None)
        table, _ = await load_volatility(services, market, None, None, limit)
        if not table.num_rows:
            label = market_label(market)
            raise InputError(f"No volatility data found for {label}", code="NO_DATA", status=404)
        return await figure_response(volatility_figure, market_label(market), table, rows=table.num_rows)

    @router.get(
        "/multi-symbol",
        summary="Closing prices of several symbols on one chart",
        description=VENUE_RULE + " Each symbol gets its own venue by that rule unless `exchange` names one.",
    )
    async def multi_symbol(
        request: Request,
        symbols: Annotated[str, Query(description="Comma-separated symbols, e.g. BTCUSDT,ETHUSDT.")],
        exchange: Exchange = None,
        limit: Limit = 500,
    ) -> Response:
        services = services_of(request)
        wanted = [s for s in (p.strip() for p in symbols.split(",")) if s]
        if not wanted:
            raise InputError(f"symbols must name at least one symbol, e.g. BTCUSDT,ETHUSDT; got {symbols!r}")
        markets = await services.markets(wanted, exchange or None)
        series = {market_label(m): await load_ohlc(services, m, None, None, limit) for m in markets}
        rows = sum(t.num_rows for t in series.values())
        return await figure_response(multi_symbol_figure, series, rows=rows)

    return router
