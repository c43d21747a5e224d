// Candle series in the browser: columns as the API's `candleColumns` sends them, merged with live updates.
//
// Pure functions on plain objects (no DOM, no network), so the browser test can drive them directly.
// A series keeps parallel arrays sorted by bucket (epoch ms) and a `closed` flag per row:
//  * live updates (`closed: false`) replace the row of their bucket, or append a new one;
//  * a final update (`closed: true`) replaces it; an in-progress version never overwrites a final one;
//  * stored rows (from a query) fill gaps and replace rows that hold fewer trades.
// A newer version of the same candle always holds at least as many trades, which is how a stored row and
// a live row of the same bucket are told apart without trusting arrival order. It also repairs a final
// the live feed sent too early (fewer trades than the processor stored) at the next merge.

export const INTERVALS = Object.freeze({
  "1s": 1_000,
  "1m": 60_000,
  "5m": 300_000,
  "15m": 900_000,
  "1h": 3_600_000,
  "1d": 86_400_000,
});

/** How long after its end a candle not said final still counts as filling up (the pipeline's usual lag). */
export const SETTLE_MS = 60_000;

/**
 * What row `i` of a series is: "closed" (final), "in progress" (its time has not passed, or only just), or
 * "last stored" (its time passed over a minute ago, no live update of it came in the last minute, and
 * nothing said it is final: the market stopped, or the pipeline is behind; it is shown as stored). A
 * stopped market's newest minute said "in progress" for ever. A replay's candles are days old by the clock
 * but in progress while its updates come: the time of the last live update counts, not only the clock.
 */
export function rowState(series, i, now = Date.now()) {
  if (series.closed[i]) return "closed";
  const live = series.lastLive;
  if (live && live.bucket === series.bucket[i] && now - live.at < SETTLE_MS) return "in progress";
  const end = series.bucket[i] + (INTERVALS[series.interval] ?? 0);
  return end + SETTLE_MS <= now ? "last stored" : "in progress";
}

/** Rows kept per interval: ten minutes of seconds, six hours of minutes, about a year of days. */
export const WINDOW = Object.freeze({ "1s": 600, "1m": 360, "5m": 288, "15m": 288, "1h": 336, "1d": 365 });

const FIELDS = ["open", "high", "low", "close", "volume", "tradeCount"];

export function emptySeries(symbol, interval, max = WINDOW[interval] ?? 600) {
  return {
    exchange: null, // the venue, when the columns name it
    symbol,
    interval,
    max,
    bucket: [],
    open: [],
    high: [],
    low: [],
    close: [],
    volume: [],
    tradeCount: [],
    closed: [],
    storedThrough: null, // newest bucket a stored row has come for: stored rows after it may be missing
    lastLive: null, // {bucket, at}: the newest live update not final, and when it came (rowState)
    version: 0, // bumped on every change
  };
}

/**
 * Stored rows from `candleColumns` as a series. At 1 s every stored row is final (the processor stores
 * closed windows only). Coarser rows are rolled up from stored seconds, so the newest one may still be
 * filling up: it counts as in progress until the live feed says otherwise.
 */
export function fromColumns(columns, interval, max) {
  const series = emptySeries(columns.symbol, interval, max);
  series.exchange = columns.exchange ?? null;
  mergeStored(series, columns);
  return series;
}

function search(buckets, bucket) {
  let lo = 0;
  let hi = buckets.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (buckets[mid] < bucket) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function insertRow(series, at, bucket, row, closed) {
  series.bucket.splice(at, 0, bucket);
  for (const f of FIELDS) series[f].splice(at, 0, row[f]);
  series.closed.splice(at, 0, closed);
}

function setRow(series, at, row, closed) {
  for (const f of FIELDS) series[f][at] = row[f];
  series.closed[at] = closed;
}

function trim(series) {
  const extra = series.bucket.length - series.max;
  if (extra > 0) {
    for (const key of ["bucket", ...FIELDS, "closed"]) series[key].splice(0, extra);
  }
}

/**
 * Apply one live update ({bucket: ISO string or ms, closed, open, high, low, close, volume, tradeCount}).
 * Returns what happened: "append", "insert", "replace" or "ignore" (an in-progress update of a candle
 * already final, or one older than the window kept).
 */
export function applyUpdate(series, update, now = Date.now()) {
  const bucket = typeof update.bucket === "number" ? update.bucket : Date.parse(update.bucket);
  const n = series.bucket.length;
  if (!update.closed) series.lastLive = { bucket, at: now }; // the candle still moves (rowState)
  let outcome;
  if (n === 0 || bucket > series.bucket[n - 1]) {
    insertRow(series, n, bucket, update, update.closed);
    outcome = "append";
  } else {
    const at = search(series.bucket, bucket);
    if (series.bucket[at] === bucket) {
      if (series.closed[at] && !update.closed) return "ignore";
      setRow(series, at, update, update.closed);
      outcome = "replace";
    } else if (at === 0 && n >= series.max) {
      return "ignore";
    } else {
      insertRow(series, at, bucket, update, update.closed);
      outcome = "insert";
    }
  }
  trim(series);
  series.version += 1;
  return outcome;
}

/**
 * Merge stored rows (`candleColumns` shape: parallel arrays, bucket in ms) into a series: fill the buckets
 * it lacks, and replace rows it only has in progress when the stored one holds more trades. Returns the
 * number of rows changed.
 */
export function mergeStored(series, columns) {
  const n = columns.bucket.length;
  const coarse = series.interval !== "1s";
  let changed = 0;
  for (let i = 0; i < n; i += 1) {
    const bucket = columns.bucket[i];
    const row = {};
    for (const f of FIELDS) row[f] = columns[f][i];
    const final = !(coarse && i === n - 1);
    const at = search(series.bucket, bucket);
    if (series.bucket[at] === bucket) {
      // More trades stored than drawn: the drawn row is an older version, even one the live feed called
      // final (a final that came too early is corrected here).
      const more = row.tradeCount > series.tradeCount[at];
      const same = row.tradeCount === series.tradeCount[at];
      if (more || (final && same && !series.closed[at])) {
        setRow(series, at, row, final);
        changed += 1;
      }
    } else {
      insertRow(series, at, bucket, row, final);
      changed += 1;
    }
  }
  if (n) series.storedThrough = Math.max(series.storedThrough ?? -Infinity, columns.bucket[n - 1]);
  if (changed) {
    trim(series);
    series.version += 1;
  }
  return changed;
}

/** Close-to-close change over the window, in percent (null with fewer than two candles). */
export function windowChange(series) {
  const n = series.close.length;
  if (n < 2 || !series.open[0]) return null;
  return (series.close[n - 1] / series.open[0] - 1) * 100;
}

/**
 * Normalized returns of several series from a common start: the newest first bucket among them, so every
 * line starts at the same time, at exactly 0 %: each value is the close's change from the close of the
 * series' first bucket there (its open would put the first point at that bucket's own move, not 0).
 * Returns {symbol: {bucket: [...], value: [...]}}.
 */
export function normalizedReturns(seriesList) {
  const usable = seriesList.filter((s) => s.bucket.length > 0);
  if (usable.length === 0) return {};
  const start = Math.max(...usable.map((s) => s.bucket[0]));
  const out = {};
  for (const s of usable) {
    const from = search(s.bucket, start);
    if (from >= s.bucket.length) continue;
    const base = s.close[from];
    const bucket = s.bucket.slice(from);
    const value = s.close.slice(from).map((c) => (c / base - 1) * 100);
    out[s.symbol] = { bucket, value };
  }
  return out;
}

/** Buckets further apart than this many intervals, and at least GAP_MIN_MS, are two runs of data. */
const GAP_INTERVALS = 5;
// At 1 s a thin market goes quiet for some seconds all the time; a line breaks only when data stopped for a
// minute or more (a feed that was down, a pipeline that was stopped), or it would fall apart into dots.
const GAP_MIN_MS = 60_000;

/**
 * A line's points (`bucket` ascending, `value`; one bucket is `step` ms) with a null point wherever the
 * data stopped for a while, so Plotly breaks the line there (connectgaps is off) instead of drawing a
 * straight line across minutes or hours without data. Returns {x, y}.
 */
export function withGaps(bucket, value, step) {
  const gap = Math.max(GAP_INTERVALS * step, GAP_MIN_MS);
  const x = [];
  const y = [];
  for (let i = 0; i < bucket.length; i += 1) {
    if (i > 0 && bucket[i] - bucket[i - 1] > gap) {
      x.push(bucket[i - 1] + step);
      y.push(null);
    }
    x.push(bucket[i]);
    y.push(value[i]);
  }
  return { x, y };
}
