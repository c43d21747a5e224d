"""The ``/api/viz/*`` figures, now written as JSON directly with the template rendered once, say exactly
what the Plotly ``Figure`` objects they replaced said: the reference below is the previous code (a
``go.Figure`` per request, ``update_layout(template="plotly_dark")``, ``fig.to_json()``)."""

from __future__ import annotations

import math
from typing import Any

import orjson
import plotly.graph_objects as go
import pyarrow as pa
import pytest

from cryptostream.models import CANDLE_SCHEMA, VOLATILITY_SCHEMA
from graphql_api import viz

T0 = 1_700_000_000_000
LABEL = "BTCUSDT · synthetic (DEMO DATA)"


def _x(table: pa.Table) -> list[Any]:
    return [t.isoformat() for t in table["bucket"].to_pylist()]


def _y(table: pa.Table, name: str) -> list[Any]:
    return table[name].to_pylist()  # type: ignore[no-any-return]


def _dark(fig: go.Figure, title: str, y_title: str, height: int, **more: Any) -> go.Figure:
    fig.update_layout(
        title=title, xaxis_title="Time", yaxis_title=y_title, template="plotly_dark", height=height, **more
    )
    return fig


def reference(kind: str, label: str, table: pa.Table) -> go.Figure:
    """The figures as the routes built them before."""
    c = viz.COLORS
    if kind == "candlestick":
        trace = go.Candlestick(
            x=_x(table),
            open=_y(table, "open"),
            high=_y(table, "high"),
            low=_y(table, "low"),
            close=_y(table, "close"),
            name=label,
        )
        return _dark(go.Figure(data=[trace]), f"{label} Price Chart (Candlestick)", "Price (USD)", 600)
    fig = go.Figure()
    if kind == "price-line":
        line = {"color": c[0], "width": 2}
        fig.add_trace(
            go.Scatter(x=_x(table), y=_y(table, "close"), mode="lines", name="Close Price", line=line)
        )
        return _dark(fig, f"{label} Closing Price Over Time", "Price (USD)", 500)
    if kind == "volume":
        fig.add_trace(go.Bar(x=_x(table), y=_y(table, "volume"), name="Volume", marker_color=c[2]))
        return _dark(fig, f"{label} Trading Volume", "Volume", 400)
    fig.add_trace(
        go.Scatter(
            x=_x(table),
            y=_y(table, "volatility"),
            mode="lines",
            name="Volatility",
            fill="tozeroy",
            line={"color": c[1], "width": 2},
            hovertemplate="<b>%{fullData.name}</b><br>Time: %{x}<br>Volatility: %{y:.6f}<br><extra></extra>",
        )
    )
    title = f"{label} Volatility Over Time"
    return _dark(fig, title, "Volatility (Std of Log Returns)", 500, hovermode="x unified")


def reference_multi(series: dict[str, pa.Table]) -> go.Figure:
    fig = go.Figure()
    for i, (label, table) in enumerate(series.items()):
        if table.num_rows:
            line = {"color": viz.COLORS[i % len(viz.COLORS)], "width": 2}
            fig.add_trace(go.Scatter(x=_x(table), y=_y(table, "close"), mode="lines", name=label, line=line))
    return _dark(fig, "Multi-Symbol Price Comparison", "Price (USD)", 600)


def ohlc(buckets: list[int], **columns: list[Any]) -> pa.Table:
    n = len(buckets)
    data: dict[str, Any] = {
        "exchange": ["synthetic"] * n,
        "symbol": ["BTCUSDT"] * n,
        "bucket": buckets,
        **{k: [65_000.0 + i / 3 for i in range(n)] for k in ("open", "high", "low", "close", "vwap")},
        "volume": [0.1 * i for i in range(n)],
        "trade_count": list(range(n)),
        "buy_volume": [None] * n,
        "sell_volume": [None] * n,
    }
    data.update(columns)
    return pa.Table.from_pydict(data, schema=CANDLE_SCHEMA)


TABLES = {
    "seconds": ohlc([T0 + i * 1000 for i in range(300)]),
    "milliseconds and missing values": ohlc(
        [T0 + 1, T0 + 250, T0 + 1000], open=[None, 1.0, 2.0], volume=[0.0, None, 1e-7]
    ),
    "one point": ohlc([T0]),
}
BUILDERS = {
    "candlestick": viz.candlestick_figure,
    "price-line": viz.price_line_figure,
    "volume": viz.volume_figure,
}


def same_json(ours: viz.Figure, theirs: go.Figure) -> None:
    """Equal as JSON values, keys in the same order."""
    assert orjson.loads(orjson.dumps(ours)) == orjson.loads(theirs.to_json())
    assert orjson.dumps(orjson.loads(orjson.dumps(ours))) == orjson.dumps(orjson.loads(theirs.to_json()))


@pytest.mark.parametrize("kind", BUILDERS)
@pytest.mark.parametrize("table", TABLES.values(), ids=TABLES.keys())
def test_ohlc_figures_match_the_plotly_figures(kind: str, table: pa.Table) -> None:
    same_json(BUILDERS[kind](LABEL, table), reference(kind, LABEL, table))


def test_volatility_figure_matches_the_plotly_figure() -> None:
    vol = pa.Table.from_pydict(
        {
            "exchange": ["binance"] * 3,
            "symbol": ["BTCUSDT"] * 3,
            "bucket": [T0, T0 + 1000, T0 + 2500],
            "volatility": [0.0, 0.00123456789, math.nan],
            "window_seconds": [60, 60, None],
        },
        schema=VOLATILITY_SCHEMA,
    )
    same_json(
        viz.volatility_figure("ETHUSDT · binance", vol), reference("volatility", "ETHUSDT · binance", vol)
    )


def test_multi_symbol_figure_matches_the_plotly_figure() -> None:
    series = {f"S{i} · binance": TABLES["seconds"].slice(i * 10, 20) for i in range(6)}
    series["EMPTY · binance"] = TABLES["seconds"].slice(0, 0)
    same_json(viz.multi_symbol_figure(series), reference_multi(series))
    same_json(viz.multi_symbol_figure({}), reference_multi({}))


def test_the_template_is_rendered_once_and_shared() -> None:
    first = viz.candlestick_figure(LABEL, TABLES["one point"])["layout"]["template"]
    assert viz.volume_figure(LABEL, TABLES["one point"])["layout"]["template"] is first
