// Plotly figures of the dashboard, and a Chart that redraws one of them at most a few times a second.
//
// Times go to Plotly as epoch milliseconds on a date axis (Plotly shows them in UTC, as stored). Colours
// come from the page's CSS custom properties, so the charts follow the light/dark theme.
//
// Margins are set here, never by Plotly's `automargin`: it sizes margins from the tick labels it has just
// drawn and redraws, and tick labels depend on the plot's size, so live updates, a legend that wraps or a
// resize could feed back into redraw after redraw ("Too many auto-margin redraws"). Instead each figure
// reserves room measured from its data (the widest tick label it can have), and a Chart draws at the
// size of its element, resizes included, one draw at a time.

import * as fmt from "./format.js";
import { INTERVALS, rowState, withGaps } from "./series.js";

const MIN_REDRAW_MS = 200; // live updates can come many times a second; a chart redraws at most 5 times
const FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
const FONT_SIZE = 12;
const LABEL_PAD = 4; // where Plotly starts value-axis tick labels, past the plot area (and any standoff)
const EDGE = 6; // after the labels, to the edge of the chart
const TAG_GAP = 6; // on each side of the last-price tag: plot | tag | tick labels
const TAG_FONT_SIZE = 11;
const TAG_PAD = 2; // the tag's borderpad
const DATE_LABELS = 48; // two lines of time-axis labels ("15:04" over "Dec 1, 2026") under a plot
const LEGEND_ROW = 20; // a row of the comparison's legend (19 px here), and LEGEND_PAD around the rows
const LEGEND_PAD = 20;
const VOLATILITY_STEP = INTERVALS["1s"]; // volatility is a 1 s series at every interval

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

let measurer = null;

/** Width in pixels of `text` in the charts' font (as Plotly will draw it). */
function textWidth(text, size = FONT_SIZE) {
  measurer ??= document.createElement("canvas").getContext("2d");
  measurer.font = `${size}px ${FONT}`;
  return Math.ceil(measurer.measureText(text).width);
}

/**
 * Width of the widest tick label a linear axis over [lo, hi] can get: ticks are round steps of at least
 * a tenth of the span (so they need at most that step's decimals), no wider than the largest value. One
 * digit more for the autorange's padding past the data.
 */
function linearLabelWidth(lo, hi, suffix = "") {
  const span = hi - lo || Math.abs(hi) || 1;
  const decimals = Math.max(0, -Math.floor(Math.log10(span / 10)));
  const whole = String(Math.floor(Math.max(Math.abs(lo), Math.abs(hi)))).length;
  const widest = `${lo < 0 ? "−" : ""}${"0".repeat(whole + 1)}${decimals ? `.${"0".repeat(decimals)}` : ""}${suffix}`;
  return textWidth(widest);
}

/** The right margin of a chart whose value axis (on the right) has labels up to `labels` pixels wide. */
function rightMargin(labels) {
  return LABEL_PAD + labels + EDGE;
}

/** [min, max] of the finite values ([0, 1] when there is none). */
function extent(values) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of values) {
    if (v == null || !Number.isFinite(v)) continue;
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  return lo <= hi ? [lo, hi] : [0, 1];
}

function baseLayout(p) {
  return {
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "rgba(0,0,0,0)",
    font: { family: FONT, size: FONT_SIZE, color: p.fg },
    margin: { l: 8, r: 8, t: 8, b: 28 },
    showlegend: false,
    hovermode: "x unified",
    hoverlabel: { bgcolor: p.surface, bordercolor: p.grid, font: { color: p.fg } },
    dragmode: "pan",
  };
}

// Pixels of plot width a time label needs ("00:01:45" and room after it). Plotly picks the tick step from
// `nticks` and the range alone (rounded to a nice step, up to half as many ticks again), so a plot narrower
// than 8 of these (a half-width panel, a phone) asks for fewer, or labels of seconds run into each other.
const TIME_LABEL_ROOM = 90;

/** The time axis of a plot area `plotWidth` pixels wide (the chart's width less its margins). */
function timeAxis(p, plotWidth, extra = {}) {
  return {
    type: "date",
    automargin: false,
    nticks: Math.max(2, Math.min(8, Math.floor(plotWidth / TIME_LABEL_ROOM))),
    tickangle: 0,
    // Each label starts at its tick: none sticks out past the left edge (where it would be hidden), and
    // the last one has the value axis's margin on the right.
    ticklabelposition: "outside right",
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
    automargin: false,
    fixedrange: false,
    ...extra,
  };
}

/**
 * Candles (or a close-price line) with volume underneath and a line at the last price, ending in a tag
 * with that price: in the right margin, between the plot and the tick labels (which stand off to make
 * room), so it never covers a candle or a tick label wherever the price goes.
 * `customdata[i]` is [closed, tradeCount]: the browser test reads it to compare only final candles.
 * Arrays are copied: live updates change the series in place, and Plotly.react keeps what it is given
 * (a shared array would change under a drawn chart, and an unchanged reference can skip a redraw).
 */
export function priceFigure(series, { style, p, width, now = Date.now() }) {
  const n = series.bucket.length;
  const x = series.bucket.slice();
  const customdata = series.closed.map((closed, i) => [closed, series.tradeCount[i]]);
  const text = series.closed.map((closed, i) => {
    const state = rowState(series, i, now);
    return `${fmt.count(series.tradeCount[i], "trade")}${state === "closed" ? "" : ` · ${state}`}`;
  });
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
  const decimals = fmt.priceDecimals(series.close[n - 1] ?? 1);
  const last = series.close[n - 1];
  const tag = n > 0 ? textWidth(fmt.price(last, decimals), TAG_FONT_SIZE) + 2 * TAG_PAD + 2 : 0;
  const standoff = n > 0 ? tag + 2 * TAG_GAP : 0; // the tag's column, between the plot and the labels
  // Price labels as wide as the widest price on the axis (the data's and the autorange's padding past it),
  // volume labels up to "999m" (.2~s).
  const [lo, hi] = n > 0 ? [extent(series.low)[0], extent(series.high)[1]] : [1, 1];
  const pad = (hi - lo) * 0.1;
  const labels = Math.max(
    textWidth(fmt.price(lo - pad, decimals)),
    textWidth(fmt.price(hi + pad, decimals)),
    textWidth("999m"),
  );
  const margin = { l: 8, r: standoff + rightMargin(labels), t: 12, b: 28 };
  const layout = {
    ...baseLayout(p),
    uirevision: `${series.exchange}|${series.symbol}|${series.interval}|${style}`,
    margin,
    xaxis: timeAxis(p, width - margin.l - margin.r, { rangeslider: { visible: false } }),
    yaxis: valueAxis(p, { domain: [0.24, 1], tickformat: `,.${decimals}f`, ticklabelstandoff: standoff }),
    yaxis2: valueAxis(p, { domain: [0, 0.18], showgrid: false, tickformat: ".2~s", nticks: 3, ticklabelstandoff: standoff }),
    shapes: [],
    annotations: [],
  };
  if (n > 0) {
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
      xshift: TAG_GAP,
      yref: "y",
      y: last,
      text: fmt.price(last, decimals),
      showarrow: false,
      font: { color: p.surface, size: TAG_FONT_SIZE },
      bgcolor: colour,
      borderpad: TAG_PAD,
    });
  }
  return { data: [priceTrace, volume], layout };
}

/**
 * Volatility (standard deviation of 1 s log returns over the trailing window), in percent; the line breaks
 * where the data stopped for a while (see withGaps).
 */
export function volatilityFigure(vol, { p, width }) {
  const line = withGaps(vol.bucket, vol.value.map((v) => v * 100), VOLATILITY_STEP);
  const [, hi] = extent(line.y);
  const right = rightMargin(linearLabelWidth(0, hi, " %"));
  return {
    data: [
      {
        type: "scatter",
        mode: "lines",
        name: "Volatility",
        x: line.x,
        y: line.y,
        connectgaps: false,
        line: { color: p.accent, width: 1.4 },
        fill: "tozeroy",
        fillcolor: p.accentSoft,
        hovertemplate: "%{y:.4f} %<extra></extra>",
      },
    ],
    layout: {
      ...baseLayout(p),
      uirevision: vol.symbol,
      margin: { l: 8, r: right, t: 12, b: DATE_LABELS },
      xaxis: timeAxis(p, width - 8 - right),
      yaxis: valueAxis(p, { ticksuffix: " %", rangemode: "tozero" }),
    },
  };
}

/**
 * The rows a horizontal legend of `names` takes in `width` pixels (each entry: its line sample, its name
 * and gaps, counted generously so the legend always fits the room reserved for it).
 */
function legendRows(names, width) {
  let rows = 1;
  let x = 0;
  for (const name of names) {
    const entry = textWidth(name) + 56;
    if (x > 0 && x + entry > width) {
      rows += 1;
      x = 0;
    }
    x += entry;
  }
  return rows;
}

/**
 * Returns of several symbols from a common start, in percent; each line breaks where its data stopped
 * for a while (see withGaps). `width` is the chart's, for the legend's rows.
 */
export function comparisonFigure(returns, symbols, { p, selected, interval, width }) {
  const shown = symbols.filter((s) => returns[s]);
  const lines = shown.map((s) => withGaps(returns[s].bucket, returns[s].value, INTERVALS[interval]));
  const [lo, hi] = extent(lines.flatMap((line) => line.y));
  const right = rightMargin(linearLabelWidth(Math.min(lo, 0), Math.max(hi, 0), " %"));
  const data = shown
    .map((s, i) => ({
      type: "scatter",
      mode: "lines",
      name: s,
      x: lines[i].x,
      y: lines[i].y,
      connectgaps: false,
      line: { color: p.series[i % p.series.length], width: s === selected ? 2.4 : 1.3 },
      hovertemplate: `${s} %{y:+.3f} %<extra></extra>`,
    }));
  return {
    data,
    layout: {
      ...baseLayout(p),
      uirevision: interval,
      showlegend: true,
      legend: { orientation: "h", x: 0, y: 1, yanchor: "bottom", font: { color: p.fg } },
      margin: { l: 8, r: right, t: LEGEND_PAD + LEGEND_ROW * legendRows(shown, width - 8 - right), b: DATE_LABELS },
      xaxis: timeAxis(p, width - 8 - right),
      yaxis: valueAxis(p, { ticksuffix: " %", zeroline: true, zerolinecolor: p.muted }),
    },
  };
}

/**
 * One chart element. `draw(makeFigure)` queues a redraw; bursts of updates collapse into one, and the
 * figure is made when the redraw happens, for the element's size then (`makeFigure({width, height})` may
 * return null: nothing to draw now). When the element changes size, the last figure is drawn again at the
 * new size through the same queue: Plotly is never asked to resize a chart while it is drawing it.
 */
export class Chart {
  constructor(element) {
    this.element = element;
    this.pending = null;
    this.shown = null; // the makeFigure last drawn
    this.timer = null;
    this.drawing = false;
    this.lastDraw = 0;
    this.config = {
      responsive: false, // resizes go through draw(), see above
      displaylogo: false,
      displayModeBar: "hover",
      scrollZoom: false,
      modeBarButtonsToRemove: ["select2d", "lasso2d", "autoScale2d", "toggleSpikelines"],
    };
    if (typeof ResizeObserver === "function") {
      new ResizeObserver(() => {
        if (this.shown && !this.pending) this.draw(this.shown);
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
      this.shown = make;
      const size = { width: this.element.clientWidth, height: this.element.clientHeight };
      const figure = size.width > 0 && size.height > 0 ? make(size) : null; // hidden: drawn on its resize
      if (figure) await globalThis.Plotly.react(this.element, figure.data, { ...figure.layout, ...size }, this.config);
    } finally {
      this.drawing = false;
      this.lastDraw = performance.now();
      if (this.pending) this.draw(this.pending);
    }
  }
}
