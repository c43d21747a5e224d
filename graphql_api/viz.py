"""The seed's ``/api/viz/*`` routes: Plotly figures as JSON (``Plotly.newPlot(el, fig.data, fig.layout)``).

Same paths, parameters and look as the original (dark template, one figure per route, 404 when a symbol
has no data), plus ``exchange=`` (the venue rule of :mod:`graphql_api.rest` otherwise). Titles name the
market's venue, and say so when it is demo data.

Columns go to Plotly as plain lists, not NumPy arrays: Plotly >= 6 would encode arrays as base64 typed
arrays (``{"dtype": "f8", "bdata": ...}``), which the seed's users and older plotly.js versions do not read;
lists come out as the JSON arrays the original routes returned.
"""

from typing import Annotated, Any

import plotly.graph_objects as go
import pyarrow as pa
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from cryptostream.settings import Settings
from cryptostream.venues import is_demo
from graphql_api.catalog import MarketKey
from graphql_api.inputs import InputError
from graphql_api.rest import VENUE_RULE, load_ohlc, load_volatility, services_of

__all__ = [
    "build_router",
    "candlestick_figure",
    "market_label",
    "multi_symbol_figure",
    "price_line_figure",
    "volatility_figure",
    "volume_figure",
]

COLORS = ["#00d4ff", "#ff6b6b", "#4ecdc4", "#ffe66d", "#a8e6cf"]


def market_label(market: MarketKey) -> str:
    """``BTCUSDT · binance``; demo data says so (``BTCUSDT · synthetic (DEMO DATA)``)."""
    exchange, symbol = market
    return f"{symbol} · {exchange}" + (" (DEMO DATA)" if is_demo(exchange) else "")


def _x(table: pa.Table) -> list[Any]:
    return [t.isoformat() for t in table["bucket"].to_pylist()]


def _y(table: pa.Table, name: str) -> list[Any]:
    return table[name].to_pylist()  # type: ignore[no-any-return]


def candlestick_figure(label: str, ohlc: pa.Table) -> go.Figure:
    fig = go.Figure(
        data=[
            go.Candlestick(
                x=_x(ohlc),
                open=_y(ohlc, "open"),
                high=_y(ohlc, "high"),
                low=_y(ohlc, "low"),
                close=_y(ohlc, "close"),
                name=label,
            )
        ]
    )
    fig.update_layout(
        title=f"{label} Price Chart (Candlestick)",
        xaxis_title="Time",
        yaxis_title="Price (USD)",
        template="plotly_dark",
        height=600,
    )
    return fig


def price_line_figure(label: str, ohlc: pa.Table) -> go.Figure:
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=_x(ohlc),
            y=_y(ohlc, "close"),
            mode="lines",
            name="Close Price",
            line={"color": COLORS[0], "width": 2},
        )
    )
    fig.update_layout(
        title=f"{label} Closing Price Over Time",
        xaxis_title="Time",
        yaxis_title="Price (USD)",
        template="plotly_dark",
        height=500,
    )
    return fig


def volatility_figure(label: str, vol: pa.Table) -> go.Figure:
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=_x(vol),
            y=_y(vol, "volatility"),
            mode="lines",
            name="Volatility",
            fill="tozeroy",
            line={"color": COLORS[1], "width": 2},
            hovertemplate="<b>%{fullData.name}</b><br>Time: %{x}<br>Volatility: %{y:.6f}<br><extra></extra>",
        )
    )
    fig.update_layout(
        title=f"{label} Volatility Over Time",
        xaxis_title="Time",
        yaxis_title="Volatility (Std of Log Returns)",
        template="plotly_dark",
        height=500,
        hovermode="x unified",
    )
    return fig


def volume_figure(label: str, ohlc: pa.Table) -> go.Figure:
    fig = go.Figure()
    fig.add_trace(go.Bar(x=_x(ohlc), y=_y(ohlc, "volume"), name="Volume", marker_color=COLORS[2]))
    fig.update_layout(
        title=f"{label} Trading Volume",
        xaxis_title="Time",
        yaxis_title="Volume",
        template="plotly_dark",
        height=400,
    )
    return fig


def multi_symbol_figure(series: dict[str, pa.Table]) -> go.Figure:
    """One line per market, named by its label (:func:`market_label`)."""
    fig = go.Figure()
    for i, (label, ohlc) in enumerate(series.items()):
        if ohlc.num_rows:
            fig.add_trace(
                go.Scatter(
                    x=_x(ohlc),
                    y=_y(ohlc, "close"),
                    mode="lines",
                    name=label,
                    line={"color": COLORS[i % len(COLORS)], "width": 2},
                )
            )
    fig.update_layout(
        title="Multi-Symbol Price Comparison",
        xaxis_title="Time",
        yaxis_title="Price (USD)",
        template="plotly_dark",
        height=600,
    )
    return fig


def figure_response(fig: go.Figure) -> Response:
    return Response(fig.to_json(), media_type="application/json")


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
        return figure_response(candlestick_figure(*await ohlc_of(request, symbol, exchange, limit)))

    @router.get("/price-line", summary="Line chart of closing prices", description=VENUE_RULE)
    async def price_line(
        request: Request, symbol: Symbol, exchange: Exchange = None, limit: Limit = 500
    ) -> Response:
        return figure_response(price_line_figure(*await ohlc_of(request, symbol, exchange, limit)))

    @router.get("/volume", summary="Bar chart of volume", description=VENUE_RULE)
    async def volume(
        request: Request, symbol: Symbol, exchange: Exchange = None, limit: Limit = 500
    ) -> Response:
        return figure_response(volume_figure(*await ohlc_of(request, symbol, exchange, limit)))

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
        return figure_response(volatility_figure(market_label(market), table))

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
        return figure_response(multi_symbol_figure(series))

    return router
