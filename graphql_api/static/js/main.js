// The dashboard: loads history over HTTP, follows the live subscriptions, and keeps every panel current.
//
// It shows one venue at a time (the venue selector, from the `markets` query): the symbols that venue
// trades, their candles, and the selected symbol's volatility and prediction. Every query and subscription
// names the venue, so Binance's BTCUSDT and Coinbase's BTCUSDT never mix. The demo venue (`synthetic`) is
// marked DEMO DATA wherever it is shown.
//
// Loading a view never leaves a gap: the live subscription starts first and its updates are held back
// until the stored history has arrived, then applied on top of it. A few seconds later (and every 5 s)
// the newest stored rows are merged in again, which fills the seconds the processor had closed but not
// yet stored when the history was read. After the socket reconnects (API restarted, network back), the
// whole view is loaded again the same way.
//
// A market shows as soon as it trades, before anything of it is stored: the processors report what they
// trade every second, while closed candles reach the database only at each checkpoint
// (PARQUET_CHUNK_SECONDS). Until then the charts draw the live candles alone and the page says so.

import { GraphQLRequestError, LiveConnection, liveUrl, query } from "./api.js";
import { Chart, comparisonFigure, palette, priceFigure, volatilityFigure } from "./charts.js";
import * as fmt from "./format.js";
import { renderModelReport, renderPrediction, renderQuote, renderStatus, renderTickers } from "./panels.js";
import {
  INTERVALS,
  WINDOW,
  applyUpdate,
  fromColumns,
  mergeStored,
  normalizedReturns,
  rowState,
} from "./series.js";

const STALE_MS = 6_000; // connected, but no live update (any symbol) for this long: the data is stale
const STATUS_POLL_MS = 2_000;
const BACKFILL_MS = 5_000; // a few small queries (only rows newer than the last stored one seen)
const REPORT_POLL_MS = 60_000;
const MARKETS_POLL_MS = 10_000; // a market that starts trading shows up within this
const VOLATILITY_ROWS = 600;
const ALIASES_PER_QUERY = 10; // well under GRAPHQL_MAX_ALIASES
const SYMBOLS_PER_SUBSCRIPTION = 100; // what one live subscription may name: a venue with more takes several

const COLUMNS = "exchange symbol bucket open high low close volume tradeCount";
const MARKETS = `query Markets {
  markets { exchange symbol demo preferred lastCandle }
  pipelineStatus { symbols { exchange symbol } }
}`;
const CANDLES_SUB = `subscription Candles($symbols: [String!]!, $interval: String!, $exchange: String!) {
  candles(symbols: $symbols, interval: $interval, exchange: $exchange) { exchange symbol interval closed bucket open high low close volume tradeCount }
}`;
const VOLATILITY_SUB = `subscription Volatility($symbols: [String!]!, $exchange: String!) {
  volatility(symbols: $symbols, exchange: $exchange) { exchange symbol bucket volatility windowSeconds }
}`;
const PREDICTION_FIELDS = "exchange symbol bucket horizonSeconds probabilityUp label modelVersion";
const PREDICTIONS_SUB = `subscription Predictions($symbols: [String!]!, $exchange: String!) {
  predictions(symbols: $symbols, exchange: $exchange) { ${PREDICTION_FIELDS} }
}`;
const SYMBOL_DATA = `query SymbolData($symbol: String!, $exchange: String!, $limit: Int!) {
  volatility(symbol: $symbol, exchange: $exchange, limit: $limit) { bucket volatility windowSeconds }
  latestPrediction(symbol: $symbol, exchange: $exchange) { ${PREDICTION_FIELDS} }
}`;
const STATUS = `query Status { pipelineStatus {
  live updatedAt lag tradesPerSecond candlesPerSecond trades candles late rejected
  rejectedByReason { reason count }
  processors { processor alive trades late rejected tradesPerSecond lastCheckpointMs }
  partitions { partition processor lag }
  symbols { exchange symbol lastTradeTime behindSeconds }
  feeds { source state since lastTradeAt trades error alive delivering }
  fed marketsTotal
} }`;

const $ = (id) => document.getElementById(id);

const state = {
  markets: [], // markets with stored candles: {exchange, symbol, demo, preferred}
  venues: [], // their exchanges, in the API's order
  venue: null, // the selected exchange
  symbols: [], // the selected venue's symbols
  symbol: null,
  interval: "1s",
  style: "candles",
  series: new Map(),
  vol: { symbol: null, bucket: [], value: [], window: null },
  prediction: null,
  report: undefined,
  status: null,
  conn: { state: "connecting" },
  lastUpdate: null,
  updates: 0,
  candleGen: 0,
  symbolGen: 0,
};

const subs = { candles: null, volatility: null, predictions: null };
let live;
let charts;

// ------------------------------------------------------------------------------------------ settings
function readHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  const interval = params.get("interval");
  if (interval && interval in INTERVALS) state.interval = interval;
  const style = params.get("style");
  if (style === "line" || style === "candles") state.style = style;
  const symbol = params.get("symbol");
  if (symbol) state.symbol = symbol.toUpperCase();
  const venue = params.get("exchange");
  if (venue) state.venue = venue.toLowerCase();
  if (symbol || venue) asked = { venue: state.venue, symbol: state.symbol };
}

// What the address named, until the markets are known: a market without candles is said, not swapped.
let asked = null;

/** Say so when the address named a market that has no candles, and put the one shown in the address. */
function unlessShown(wanted) {
  if (!wanted) return;
  const venue = wanted.venue || state.venue;
  const symbol = wanted.symbol || state.symbol;
  if (venue === state.venue && symbol === state.symbol) return;
  const what = wanted.symbol ? `${wanted.symbol} on ${venue}` : venue;
  notice(`No candles for ${what}: showing ${state.symbol ?? "nothing"} on ${state.venue ?? "no venue"}`);
  writeHash();
}

function writeHash() {
  const params = new URLSearchParams({
    exchange: state.venue ?? "",
    symbol: state.symbol ?? "",
    interval: state.interval,
    style: state.style,
  });
  history.replaceState(null, "", `#${params}`);
}

// ------------------------------------------------------------------------------------------ theme
const THEMES = ["auto", "light", "dark"];

function effectiveTheme(choice) {
  if (choice !== "auto") return choice;
  return matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
}

function applyTheme(choice) {
  const root = document.documentElement;
  if (choice === "auto") delete root.dataset.theme;
  else root.dataset.theme = choice;
  const button = $("theme-toggle");
  const shown = effectiveTheme(choice);
  button.dataset.choice = choice;
  button.querySelector(".theme-label").textContent = choice === "auto" ? `Auto (${shown})` : shown === "dark" ? "Dark" : "Light";
  button.setAttribute("aria-label", `Colour theme: ${choice === "auto" ? `automatic, now ${shown}` : shown}. Change theme`);
  renderCharts();
}

function initTheme() {
  let choice = "auto";
  try {
    choice = localStorage.getItem("cryptostream-theme") || "auto";
  } catch {
    // storage can be disabled; the theme then follows the system each visit
  }
  if (!THEMES.includes(choice)) choice = "auto";
  $("theme-toggle").addEventListener("click", () => {
    const next = THEMES[(THEMES.indexOf($("theme-toggle").dataset.choice) + 1) % THEMES.length];
    try {
      localStorage.setItem("cryptostream-theme", next);
    } catch {
      // see above
    }
    applyTheme(next);
  });
  matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => applyTheme($("theme-toggle").dataset.choice));
  applyTheme(choice);
}

// ------------------------------------------------------------------------------------------ notices
let noticeTimer;

function notice(text) {
  const el = $("notice");
  el.textContent = text;
  el.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => {
    el.hidden = true;
  }, 8_000);
}

/** Run a query; a failure becomes a notice (or is left to the connection badge when offline). */
async function attempt(what, fn) {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof GraphQLRequestError) notice(`${what}: ${err.message}`);
    else if (state.conn.state === "live") notice(`${what}: ${err.message}`);
    return undefined;
  }
}

// ------------------------------------------------------------------------------------------ loading
/**
 * The venue a view without one shows: the venue the API itself picks for the symbol (`preferred`), else
 * the venue it picks for most symbols, else the first one.
 */
function defaultVenue(markets, symbol) {
  const mine = markets.find((m) => m.symbol === symbol && m.preferred);
  if (mine) return mine.exchange;
  const votes = new Map();
  for (const m of markets) if (m.preferred) votes.set(m.exchange, (votes.get(m.exchange) ?? 0) + 1);
  const best = [...votes].sort((a, b) => b[1] - a[1])[0];
  return best ? best[0] : (markets[0]?.exchange ?? null);
}

/**
 * Markets with stored candles or trading now (a processor reports them); picks the venue and symbol to
 * show. True when the choice changed.
 */
async function loadMarkets() {
  const data = await attempt("Markets", () => query(MARKETS));
  if (!data) return false;
  const trading = new Set(data.pipelineStatus.symbols.map((s) => `${s.exchange}|${s.symbol}`));
  const markets = data.markets.filter((m) => m.lastCandle != null || trading.has(`${m.exchange}|${m.symbol}`));
  const before = `${state.venue}|${state.symbols.join()}|${state.venues.join()}`;
  state.markets = markets;
  state.venues = [...new Set(markets.map((m) => m.exchange))];
  if (!state.venues.includes(state.venue)) state.venue = defaultVenue(markets, state.symbol);
  state.symbols = markets.filter((m) => m.exchange === state.venue).map((m) => m.symbol);
  if (!state.symbols.includes(state.symbol)) state.symbol = state.symbols[0] ?? null;
  if (markets.length && asked) {
    unlessShown(asked);
    asked = null;
  }
  const changed = `${state.venue}|${state.symbols.join()}|${state.venues.join()}` !== before;
  if (changed) renderPickers();
  renderEmpty();
  return changed;
}

const isDemo = (venue) => state.markets.some((m) => m.exchange === venue && m.demo);

function columnsQuery(symbols, withFrom) {
  const vars = symbols.map((_, i) => `$s${i}: String!`).join(", ");
  const from = withFrom ? ", $from: DateTime" : "";
  const fields = symbols
    .map(
      (_, i) =>
        `c${i}: candleColumns(symbol: $s${i}, exchange: $exchange, interval: $interval, limit: $limit${withFrom ? ", from: $from" : ""}) { ${COLUMNS} }`,
    )
    .join("\n");
  return `query Columns($exchange: String!, $interval: String!, $limit: Int!${from}, ${vars}) {\n${fields}\n}`;
}

/** Candle columns of `symbols` on `venue` at `interval` (several symbols per request, aliased). */
async function fetchColumns(venue, symbols, interval, limit, from = null) {
  const out = [];
  for (let at = 0; at < symbols.length; at += ALIASES_PER_QUERY) {
    const chunk = symbols.slice(at, at + ALIASES_PER_QUERY);
    const variables = { exchange: venue, interval, limit };
    if (from != null) variables.from = new Date(from).toISOString();
    chunk.forEach((s, i) => {
      variables[`s${i}`] = s;
    });
    const data = await query(columnsQuery(chunk, from != null), variables);
    chunk.forEach((_, i) => out.push(data[`c${i}`]));
  }
  return out;
}

/** History of every symbol of the venue at the current interval, with the live subscription held back
 * meanwhile. */
async function loadCandles() {
  const gen = ++state.candleGen;
  const { interval, venue } = state;
  const symbols = state.symbols.slice();
  subs.candles?.();
  subs.candles = null;
  if (!symbols.length) return;
  const held = [];
  let loading = true;
  const stops = [];
  for (let at = 0; at < symbols.length; at += SYMBOLS_PER_SUBSCRIPTION) {
    stops.push(
      live.subscribe(
        CANDLES_SUB,
        { symbols: symbols.slice(at, at + SYMBOLS_PER_SUBSCRIPTION), interval, exchange: venue },
        {
          next: (data) => {
            if (gen !== state.candleGen) return;
            if (loading) held.push(data.candles);
            else onCandle(data.candles);
          },
          error: (messages) => notice(`Live candles: ${messages.join("; ")}`),
          resubscribed: () => setTimeout(backfill, 2_000),
        },
      ),
    );
  }
  subs.candles = () => stops.forEach((stop) => stop());
  const columns = await attempt("Candles", () => fetchColumns(venue, symbols, interval, WINDOW[interval]));
  if (gen !== state.candleGen) return;
  if (!columns) {
    // Offline: the reconnect reloads everything. Otherwise (a refused or failed query) try again soon.
    if (state.conn.state !== "offline") setTimeout(() => gen === state.candleGen && loadCandles(), 3_000);
    return;
  }
  const series = new Map();
  for (const c of columns) series.set(c.symbol, fromColumns(c, interval, WINDOW[interval]));
  state.series = series;
  loading = false;
  for (const update of held) onCandle(update, false);
  markFresh();
  renderAll();
  setTimeout(() => gen === state.candleGen && backfill(), 3_000);
}

/** Merge the newest stored rows into every series (fills seconds stored after the history was read). */
async function backfill() {
  const gen = state.candleGen;
  const { interval, venue } = state;
  const symbols = [...state.series.keys()];
  if (!symbols.length || state.conn.state !== "live") return;
  const step = INTERVALS[interval];
  // From a little before the newest stored row seen: everything the store added since then comes back.
  // A series with no stored row yet (live candles only) gets the whole window, as a first load would.
  const anchors = symbols.map((s) => state.series.get(s).storedThrough);
  const from = anchors.includes(null) ? null : Math.min(...anchors) - 3 * step;
  const columns = await attempt("Candles", () => fetchColumns(venue, symbols, interval, WINDOW[interval], from));
  if (!columns || gen !== state.candleGen) return;
  let changed = 0;
  for (const c of columns) {
    const s = state.series.get(c.symbol);
    if (s) changed += mergeStored(s, c);
  }
  if (changed) renderAll();
}

/** Volatility and the newest prediction of the selected market, with their subscriptions. */
async function loadSymbolData() {
  const gen = ++state.symbolGen;
  const { symbol, venue } = state;
  subs.volatility?.();
  subs.predictions?.();
  subs.volatility = subs.predictions = null;
  if (!symbol) return;
  const held = [];
  let loading = true;
  subs.volatility = live.subscribe(
    VOLATILITY_SUB,
    { symbols: [symbol], exchange: venue },
    {
      next: (data) => {
        if (gen !== state.symbolGen) return;
        if (loading) held.push(data.volatility);
        else onVolatility(data.volatility);
      },
      error: (messages) => notice(`Live volatility: ${messages.join("; ")}`),
    },
  );
  subs.predictions = live.subscribe(
    PREDICTIONS_SUB,
    { symbols: [symbol], exchange: venue },
    {
      next: (data) => gen === state.symbolGen && onPrediction(data.predictions),
      error: (messages) => notice(`Live predictions: ${messages.join("; ")}`),
    },
  );
  const data = await attempt("Volatility", () => query(SYMBOL_DATA, { symbol, exchange: venue, limit: VOLATILITY_ROWS }));
  if (gen !== state.symbolGen) return;
  if (!data) {
    if (state.conn.state !== "offline") setTimeout(() => gen === state.symbolGen && loadSymbolData(), 3_000);
    return;
  }
  state.vol = {
    symbol,
    bucket: data.volatility.map((v) => Date.parse(v.bucket)),
    value: data.volatility.map((v) => v.volatility),
    window: data.volatility.at(-1)?.windowSeconds ?? null,
  };
  loading = false;
  for (const v of held) onVolatility(v);
  const stored = data.latestPrediction;
  const newer = stored && (!state.prediction || Date.parse(stored.bucket) > Date.parse(state.prediction.bucket));
  if (newer) state.prediction = stored; // else keep the one the subscription already brought
  renderSymbolPanels();
}

async function loadReport() {
  // Asked on its own: an API without the field (or without a model) must not break anything else.
  try {
    const data = await query("query Report { modelReport }");
    const report = data.modelReport ?? null;
    state.report = typeof report === "string" ? JSON.parse(report) : report;
  } catch (err) {
    if (err instanceof GraphQLRequestError) state.report = null;
    else return; // unreachable: keep what is shown
  }
  renderModelReport($("model-report"), state.report);
  // a demo model is explained by its report: the prediction beside it then says "Demo model" in a pill
  if (state.prediction) renderPrediction($("prediction"), state.prediction, state.symbol, state.report);
}

async function pollStatus() {
  if (state.conn.state !== "live") return;
  try {
    state.status = (await query(STATUS)).pipelineStatus;
  } catch {
    return; // the connection badge tells the story; the next poll tries again
  }
  renderStatus($("status"), state.status);
}

async function reloadEverything() {
  await loadMarkets();
  await Promise.all([loadCandles(), loadSymbolData(), loadReport(), pollStatus()]);
}

// ------------------------------------------------------------------------------------------ live updates
function markFresh() {
  state.lastUpdate = Date.now();
}

function onCandle(update, render = true) {
  if (update.interval !== state.interval || update.exchange !== state.venue) return;
  const series = state.series.get(update.symbol);
  if (!series) return;
  if (applyUpdate(series, update) === "ignore") return;
  state.updates += 1;
  markFresh();
  if (render) renderLive(update.symbol);
}

function onVolatility(v) {
  if (v.symbol !== state.symbol || v.exchange !== state.venue) return;
  const bucket = Date.parse(v.bucket);
  const vol = state.vol;
  const n = vol.bucket.length;
  if (n && bucket <= vol.bucket[n - 1]) {
    const at = vol.bucket.lastIndexOf(bucket);
    if (at >= 0) vol.value[at] = v.volatility;
  } else {
    vol.bucket.push(bucket);
    vol.value.push(v.volatility);
    if (vol.bucket.length > VOLATILITY_ROWS) {
      vol.bucket.shift();
      vol.value.shift();
    }
  }
  vol.window = v.windowSeconds;
  markFresh();
  charts.volatility.draw(volatilityFigureNow);
  $("vol-window").textContent = vol.window ? `σ of 1 s log returns over ${vol.window} s` : "";
}

function onPrediction(p) {
  if (p.symbol !== state.symbol || p.exchange !== state.venue) return;
  if (state.prediction && Date.parse(p.bucket) < Date.parse(state.prediction.bucket)) return;
  state.prediction = p;
  markFresh();
  renderPrediction($("prediction"), p, state.symbol, state.report);
}

function onConnection(change) {
  const wasLive = state.conn.state === "live";
  state.conn = change;
  renderConnection();
  if (change.state === "live" && !wasLive) {
    if (change.reconnected) {
      markFresh();
      reloadEverything();
    } else {
      pollStatus();
    }
  }
}

// ------------------------------------------------------------------------------------------ rendering
const selected = () => state.series.get(state.symbol);

// Figures are built when a chart redraws (not when the redraw is queued), from the state at that moment;
// null when that state has nothing to draw (e.g. the interval just changed and its history is loading).
function priceFigureNow({ width }) {
  const series = selected();
  if (!series) return null;
  const now = Date.now();
  drawnStates = newestStates(series, now);
  return priceFigure(series, { style: state.style, p: palette(), width, now });
}

// The newest candles' states (series.rowState) as the price chart's hover text last showed them: the clock
// moves them ("in progress" -> "last stored" when a market stops) with no update to redraw the chart.
let drawnStates = "";

function newestStates(series, now) {
  const n = series.bucket.length;
  const states = [];
  for (let i = Math.max(0, n - 3); i < n; i++) states.push(rowState(series, i, now));
  return `${series.symbol} ${series.interval} ${n} ${states.join(",")}`;
}

function volatilityFigureNow({ width }) {
  return state.vol.symbol ? volatilityFigure(state.vol, { p: palette(), width }) : null;
}

function comparisonFigureNow({ width }) {
  const list = state.symbols.map((s) => state.series.get(s)).filter(Boolean);
  if (!list.length) return null;
  return comparisonFigure(normalizedReturns(list), state.symbols, {
    p: palette(),
    selected: state.symbol,
    interval: state.interval,
    width,
  });
}

function renderCharts() {
  if (!charts) return;
  if (selected()) charts.price.draw(priceFigureNow);
  if (state.vol.symbol) charts.volatility.draw(volatilityFigureNow);
  if (state.series.size) charts.comparison.draw(comparisonFigureNow);
}

let textTimer = null;

function renderText() {
  if (textTimer) return;
  textTimer = setTimeout(() => {
    textTimer = null;
    const s = selected();
    renderQuote({ price: $("last-price"), change: $("change"), candle: $("live-candle") }, s);
    renderTickers($("tickers"), state.symbols, state.series, state.symbol, selectSymbol);
    renderEmpty();
    describeCharts();
    renderFooter();
  }, 250);
}

function renderLive(symbol) {
  if (symbol === state.symbol) charts.price.draw(priceFigureNow);
  charts.comparison.draw(comparisonFigureNow);
  renderText();
}

function renderAll() {
  $("price-title").textContent = `${state.symbol ?? "–"} · ${state.interval}`;
  renderVenue();
  renderCharts();
  renderText();
}

/** The selected venue next to the price title, and the DEMO DATA badge whenever it is the demo venue. */
function renderVenue() {
  const demo = isDemo(state.venue);
  const tag = $("price-venue");
  tag.textContent = state.venue ? (demo ? `${state.venue} · demo data` : state.venue) : "";
  tag.dataset.demo = String(demo);
  $("demo-badge").hidden = !demo;
  document.body.dataset.demo = String(demo);
}

/**
 * The line above the charts while there is nothing stored to show: no market trades yet, or the selected
 * one has live candles only (the processor stores closed candles at each checkpoint).
 */
function renderEmpty() {
  const s = selected();
  let why = null;
  if (!state.symbols.length) why = "waiting";
  else if (s && s.bucket.length && s.storedThrough == null) why = "live";
  const el = $("empty");
  el.hidden = why == null;
  if (why == null || el.dataset.state === why) return;
  el.dataset.state = why;
  el.textContent =
    why === "waiting"
      ? "No candles yet. They appear here as soon as the processor reports its first trades."
      : "Live candles from the stream. Stored history appears after the processor's first checkpoint (every PARQUET_CHUNK_SECONDS, 10 s by default).";
}

function renderSymbolPanels() {
  $("vol-title-symbol").textContent = state.symbol ?? "";
  $("vol-window").textContent = state.vol.window ? `σ of 1 s log returns over ${state.vol.window} s` : "";
  charts.volatility.draw(volatilityFigureNow);
  renderPrediction($("prediction"), state.prediction, state.symbol, state.report);
}

function describeCharts() {
  const s = selected();
  const n = s ? s.bucket.length : 0;
  const kind = state.style === "line" ? "Line chart of the close price" : "Candlestick chart";
  const venue = `${state.venue}${isDemo(state.venue) ? " (demo data)" : ""}`;
  $("price-chart").setAttribute(
    "aria-label",
    n
      ? `${kind} of ${s.symbol} on ${venue}, ${state.interval} candles from ${fmt.dateTime(s.bucket[0])} to ${fmt.dateTime(s.bucket[n - 1])} UTC, with volume; last price ${fmt.price(s.close[n - 1])}`
      : `${kind}: no candles yet`,
  );
  const vol = state.vol;
  $("vol-chart").setAttribute(
    "aria-label",
    vol.value.length ? `Volatility of ${vol.symbol}, latest ${(vol.value.at(-1) * 100).toFixed(4)} % per second` : "Volatility: no values yet",
  );
  $("cmp-chart").setAttribute("aria-label", `Returns of ${state.symbols.join(", ")} at ${state.interval}, in percent from a common start`);
}

function renderPickers() {
  const venues = $("exchange");
  venues.replaceChildren(
    ...state.venues.map((v) => new Option(isDemo(v) ? `${v} (demo data)` : v, v, false, v === state.venue)),
  );
  venues.disabled = state.venues.length === 0;
  const select = $("symbol");
  select.replaceChildren(...state.symbols.map((s) => new Option(s, s, false, s === state.symbol)));
  select.disabled = state.symbols.length === 0;
  renderVenue();
}

function renderConnection() {
  const badge = $("conn");
  const text = $("conn-text");
  const { conn } = state;
  const now = Date.now();
  let shown = conn.state;
  let label;
  if (conn.state === "live") {
    const quiet = state.lastUpdate == null ? 0 : now - state.lastUpdate;
    if (quiet > STALE_MS) {
      shown = "stale";
      label = `Stale: no updates for ${fmt.seconds(quiet / 1000)}`;
    } else {
      label = "Live";
    }
  } else if (conn.state === "offline") {
    const wait = conn.retryAt ? Math.ceil((conn.retryAt - now) / 1000) : 0;
    label = wait > 0 ? `Offline: retrying in ${wait} s${conn.attempt > 1 ? ` (attempt ${conn.attempt})` : ""}` : "Offline: reconnecting…";
  } else {
    label = "Connecting…";
  }
  if (badge.dataset.state !== shown) {
    badge.dataset.state = shown;
    document.body.dataset.conn = shown;
  }
  if (text.textContent !== label) text.textContent = label;
  const banner = $("offline-banner");
  banner.hidden = shown !== "offline";
  if (!banner.hidden) {
    $("offline-since").textContent = state.lastUpdate ? `${fmt.clock(state.lastUpdate)} UTC` : "the start";
  }
}

function renderFooter() {
  $("updates").textContent = `${fmt.integer(state.updates)} live updates · last ${state.lastUpdate ? `${fmt.clock(state.lastUpdate)} UTC` : "–"}`;
}

// ------------------------------------------------------------------------------------------ controls
function selectVenue(venue) {
  if (venue === state.venue || !state.venues.includes(venue)) return;
  state.venue = venue;
  state.symbols = state.markets.filter((m) => m.exchange === venue).map((m) => m.symbol);
  if (!state.symbols.includes(state.symbol)) state.symbol = state.symbols[0] ?? null;
  state.series = new Map();
  state.prediction = null;
  state.vol = { symbol: null, bucket: [], value: [], window: null };
  renderPickers();
  writeHash();
  renderAll();
  loadCandles();
  loadSymbolData();
}

function selectSymbol(symbol) {
  if (symbol === state.symbol || !state.symbols.includes(symbol)) return;
  state.symbol = symbol;
  state.prediction = null;
  state.vol = { symbol: null, bucket: [], value: [], window: null };
  $("symbol").value = symbol;
  writeHash();
  renderAll();
  loadSymbolData();
}

function selectInterval(interval) {
  if (interval === state.interval || !(interval in INTERVALS)) return;
  state.interval = interval;
  state.series = new Map();
  writeHash();
  renderAll();
  loadCandles();
}

function selectStyle(style) {
  state.style = style;
  writeHash();
  renderAll();
}

function syncControls() {
  $("exchange").value = state.venue ?? "";
  $("symbol").value = state.symbol ?? "";
  for (const input of document.querySelectorAll('input[name="interval"]')) input.checked = input.value === state.interval;
  for (const input of document.querySelectorAll('input[name="style"]')) input.checked = input.value === state.style;
}

function wireControls() {
  $("exchange").addEventListener("change", (e) => selectVenue(e.target.value));
  $("symbol").addEventListener("change", (e) => selectSymbol(e.target.value));
  for (const input of document.querySelectorAll('input[name="interval"]')) {
    input.addEventListener("change", (e) => e.target.checked && selectInterval(e.target.value));
  }
  for (const input of document.querySelectorAll('input[name="style"]')) {
    input.addEventListener("change", (e) => e.target.checked && selectStyle(e.target.value));
  }
  $("retry-now").addEventListener("click", () => live.retryNow());
  // A link or the back button changed the view in the address bar.
  addEventListener("hashchange", () => {
    const params = new URLSearchParams(location.hash.slice(1));
    const style = params.get("style");
    if ((style === "line" || style === "candles") && style !== state.style) selectStyle(style);
    selectInterval(params.get("interval"));
    const wanted = {
      venue: (params.get("exchange") || "").toLowerCase(),
      symbol: (params.get("symbol") || "").toUpperCase(),
    };
    selectVenue(wanted.venue);
    selectSymbol(wanted.symbol);
    if (state.markets.length) unlessShown(wanted);
    syncControls();
  });
}

// ------------------------------------------------------------------------------------------ start
async function start() {
  readHash();
  charts = {
    price: new Chart($("price-chart")),
    volatility: new Chart($("vol-chart")),
    comparison: new Chart($("cmp-chart")),
  };
  initTheme();
  wireControls();
  syncControls();
  live = new LiveConnection(liveUrl(), onConnection);
  renderConnection();
  setInterval(() => {
    renderConnection();
    renderFooter();
    // a candle's state moves with the clock too (series.rowState): the quote alone, not the focusable tickers
    const series = selected();
    renderQuote({ price: $("last-price"), change: $("change"), candle: $("live-candle") }, series);
    if (series && newestStates(series, Date.now()) !== drawnStates) charts.price.draw(priceFigureNow);
  }, 1_000);
  setInterval(pollStatus, STATUS_POLL_MS);
  setInterval(backfill, BACKFILL_MS);
  setInterval(loadReport, REPORT_POLL_MS);
  setInterval(async () => {
    if (state.conn.state === "live" && (await loadMarkets())) {
      loadCandles();
      loadSymbolData();
    }
  }, MARKETS_POLL_MS);
  renderModelReport($("model-report"), undefined);
  renderStatus($("status"), null);
  loadReport();
  // No markets yet (a pipeline that just started): ask again until the first candles are stored.
  while (!state.symbols.length) {
    await loadMarkets();
    if (state.symbols.length) break;
    await new Promise((resolve) => setTimeout(resolve, 2_000));
  }
  syncControls();
  writeHash();
  renderAll();
  await Promise.all([loadCandles(), loadSymbolData(), pollStatus()]);
  document.body.dataset.ready = "true";
}

start();
