// Plotly figures of the dashboard, and a Chart that redraws one of them at most a few times a second.
//
// Times go to Plotly as epoch milliseconds on a date axis (Plotly shows them in UTC, as stored). Colours
// come from the page's CSS custom properties, so the charts follow the light/dark theme.

import * as fmt from "./format.js";

const MIN_REDRAW_MS = 200; // live updates can come many times a second; a chart redraws at most 5 times

/** The theme's colours, read from CSS custom properties of the document. */
export function palette() {
  const css = getComputedStyle(document.documentElement);
  const get = (name) => css.getPropertyValue(name).trim();
  return {
    fg: get("--fg"),
    muted: get("--muted"),
    grid: get("--grid"),
    surface: get("--surface"),
    up: get("--up"),
    down: get("--down"),
    upSoft: get("--up-soft"),
    downSoft: get("--down-soft"),
    accent: get("--accent"),
    accentSoft: get("--accent-soft"),
    series: [get("--c1"), get("--c2"), get("--c3"), get("--c4"), get("--c5"), get("--c6")],
  };
}

function baseLayout(p) {
  return {
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "rgba(0,0,0,0)",
    font: { family: "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif", size: 12, color: p.fg },
    margin: { l: 8, r: 8, t: 8, b: 28 },
    showlegend: false,
    hovermode: "x unified",
    hoverlabel: { bgcolor: p.surface, bordercolor: p.grid, font: { color: p.fg } },
    dragmode: "pan",
  };
}

const NARROW = matchMedia("(max-width: 700px)");

function timeAxis(p, extra = {}) {
  return {
    type: "date",
    automargin: true,
    nticks: NARROW.matches ? 4 : 8,
    tickangle: 0,
    gridcolor: p.grid,
    linecolor: p.grid,
    tickcolor: p.grid,
    tickfont: { color: p.muted },
    zeroline: false,
    showspikes: true,
    spikecolor: p.muted,
    spikethickness: 1,
    spikedash: "dot",
    spikemode: "across",
    hoverformat: "%Y-%m-%d %H:%M:%S UTC",
    ...extra,
  };
}

function valueAxis(p, extra = {}) {
  return {
    gridcolor: p.grid,
    linecolor: p.grid,
    tickfont: { color: p.muted },
    zeroline: false,
    side: "right",
    automargin: true,
    fixedrange: false,
    ...extra,
  };
}

/**
 * Candles (or a close-price line) with volume underneath and a line at the last price.
 * `customdata[i]` is [closed, tradeCount]: the browser test reads it to compare only final candles.
 * Arrays are copied: live updates change the series in place, and Plotly.react keeps what it is given
 * (a shared array would change under a drawn chart, and an unchanged reference can skip a redraw).
 */
export function priceFigure(series, { style, p }) {
  const n = series.bucket.length;
  const x = series.bucket.slice();
  const customdata = series.closed.map((closed, i) => [closed, series.tradeCount[i]]);
  const text = series.closed.map(
    (closed, i) => `${fmt.integer(series.tradeCount[i])} trades${closed ? "" : " · in progress"}`,
  );
  const priceTrace =
    style === "line"
      ? {
          type: "scatter",
          mode: "lines",
          name: series.symbol,
          x,
          y: series.close.slice(),
          customdata,
          text,
          line: { color: p.accent, width: 1.6 },
          hovertemplate: "close %{y}<br>%{text}<extra></extra>",
        }
      : {
          type: "candlestick",
          name: series.symbol,
          x,
          open: series.open.slice(),
          high: series.high.slice(),
          low: series.low.slice(),
          close: series.close.slice(),
          customdata,
          text,
          hoverinfo: "x+y+text",
          increasing: { line: { color: p.up, width: 1 }, fillcolor: p.up },
          decreasing: { line: { color: p.down, width: 1 }, fillcolor: p.down },
          whiskerwidth: 0.3,
        };
  const volume = {
    type: "bar",
    name: "Volume",
    x,
    y: series.volume.slice(),
    yaxis: "y2",
    marker: { color: series.close.map((c, i) => (c >= series.open[i] ? p.upSoft : p.downSoft)) },
    hovertemplate: "volume %{y:.4~s}<extra></extra>",
  };
  const layout = {
    ...baseLayout(p),
    uirevision: `${series.exchange}|${series.symbol}|${series.interval}|${style}`,
    margin: { l: 8, r: 18, t: 8, b: 28 }, // room for the last-price label on the axis
    xaxis: timeAxis(p, { rangeslider: { visible: false } }),
    yaxis: valueAxis(p, { domain: [0.24, 1], tickformat: `,.${fmt.priceDecimals(series.close[n - 1] ?? 1)}f` }),
    yaxis2: valueAxis(p, { domain: [0, 0.18], showgrid: false, tickformat: ".2~s", nticks: 3 }),
    shapes: [],
    annotations: [],
  };
  if (n > 0) {
    const last = series.close[n - 1];
    const colour = last >= series.open[n - 1] ? p.up : p.down;
    layout.shapes.push({
      type: "line",
      xref: "paper",
      x0: 0,
      x1: 1,
      yref: "y",
      y0: last,
      y1: last,
      line: { color: colour, width: 1, dash: "dot" },
    });
    layout.annotations.push({
      xref: "paper",
      x: 1,
      xanchor: "left",
      yref: "y",
      y: last,
      text: fmt.price(last),
      showarrow: false,
      font: { color: p.surface, size: 11 },
      bgcolor: colour,
      borderpad: 2,
    });
  }
  return { data: [priceTrace, volume], layout };
}

/** Volatility (standard deviation of 1 s log returns over the trailing window), in percent. */
export function volatilityFigure(vol, { p }) {
  return {
    data: [
      {
        type: "scatter",
        mode: "lines",
        name: "Volatility",
        x: vol.bucket.slice(),
        y: vol.value.map((v) => v * 100),
        line: { color: p.accent, width: 1.4 },
        fill: "tozeroy",
        fillcolor: p.accentSoft,
        hovertemplate: "%{y:.4f} %<extra></extra>",
      },
    ],
    layout: {
      ...baseLayout(p),
      uirevision: vol.symbol,
      xaxis: timeAxis(p),
      yaxis: valueAxis(p, { ticksuffix: " %", rangemode: "tozero" }),
    },
  };
}

/** Returns of several symbols from a common start, in percent. */
export function comparisonFigure(returns, symbols, { p, selected, interval }) {
  const data = symbols
    .filter((s) => returns[s])
    .map((s, i) => ({
      type: "scatter",
      mode: "lines",
      name: s,
      x: returns[s].bucket,
      y: returns[s].value,
      line: { color: p.series[i % p.series.length], width: s === selected ? 2.4 : 1.3 },
      hovertemplate: `${s} %{y:+.3f} %<extra></extra>`,
    }));
  return {
    data,
    layout: {
      ...baseLayout(p),
      uirevision: interval,
      showlegend: true,
      legend: { orientation: "h", x: 0, y: 1.02, yanchor: "bottom", font: { color: p.fg } },
      margin: { l: 8, r: 8, t: 28, b: 28 },
      xaxis: timeAxis(p),
      yaxis: valueAxis(p, { ticksuffix: " %", zeroline: true, zerolinecolor: p.muted }),
    },
  };
}

/**
 * One chart element. `draw(makeFigure)` queues a redraw; bursts of updates collapse into one, and the
 * figure is made when the redraw happens (`makeFigure` may return null: nothing to draw now).
 */
export class Chart {
  constructor(element) {
    this.element = element;
    this.pending = null;
    this.timer = null;
    this.drawing = false;
    this.lastDraw = 0;
    this.config = {
      responsive: true,
      displaylogo: false,
      displayModeBar: "hover",
      scrollZoom: false,
      modeBarButtonsToRemove: ["select2d", "lasso2d", "autoScale2d", "toggleSpikelines"],
    };
    if (typeof ResizeObserver === "function") {
      new ResizeObserver(() => {
        if (this.element.data) globalThis.Plotly.Plots.resize(this.element);
      }).observe(element);
    }
  }

  draw(makeFigure) {
    this.pending = makeFigure;
    if (this.timer || this.drawing) return;
    const wait = Math.max(0, this.lastDraw + MIN_REDRAW_MS - performance.now());
    this.timer = setTimeout(() => this.flush(), wait);
  }

  async flush() {
    this.timer = null;
    const make = this.pending;
    this.pending = null;
    if (!make) return;
    this.drawing = true;
    try {
      const figure = make();
      if (figure) await globalThis.Plotly.react(this.element, figure.data, figure.layout, this.config);
    } finally {
      this.drawing = false;
      this.lastDraw = performance.now();
      if (this.pending) this.draw(this.pending);
    }
  }
}
