// Number and time formatting shared by the panels and the charts. Times are shown in UTC, as stored.

const GROUPED = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const COMPACT = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 2 });

/** Decimals that show a price to about six significant digits (65,012.34; 3,201.456; 0.600123). */
export function priceDecimals(value) {
  const magnitude = Math.floor(Math.log10(Math.abs(value) || 1));
  return Math.min(8, Math.max(2, 5 - magnitude));
}

/** 65,012.34 (`decimals` defaults to the price's own: see priceDecimals). */
export function price(value, decimals = priceDecimals(value)) {
  if (value == null || !Number.isFinite(value)) return "–";
  return value.toLocaleString("en-US", { minimumFractionDigits: decimals, maximumFractionDigits: decimals });
}

export function integer(value) {
  return value == null || !Number.isFinite(value) ? "–" : GROUPED.format(value);
}

/** A count and its noun: "1 trade", "2 trades", "– trades" when unknown (archives that did not record it). */
export function count(value, noun) {
  return `${integer(value)} ${value === 1 ? noun : `${noun}s`}`;
}

export function compact(value) {
  return value == null || !Number.isFinite(value) ? "–" : COMPACT.format(value);
}

export function fixed(value, digits = 1) {
  return value == null || !Number.isFinite(value) ? "–" : value.toFixed(digits);
}

/** A signed percentage: +1.23 %. */
export function signedPercent(value, digits = 2) {
  if (value == null || !Number.isFinite(value)) return "–";
  return `${value > 0 ? "+" : value < 0 ? "−" : ""}${Math.abs(value).toFixed(digits)} %`;
}

export function percent(value, digits = 1) {
  return value == null || !Number.isFinite(value) ? "–" : `${(value * 100).toFixed(digits)} %`;
}

/** A metric from the model report, as measured (no rounding beyond 3 decimals, "–" when absent). */
export function metric(value) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(3) : "–";
}

function pad(n) {
  return String(n).padStart(2, "0");
}

/** 12:03:04 (UTC). */
export function clock(ms) {
  if (ms == null || !Number.isFinite(ms)) return "–";
  const d = new Date(ms);
  return `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}`;
}

/** 2024-05-01 12:03 (UTC); with seconds when asked. */
export function dateTime(ms, seconds = false) {
  if (ms == null || !Number.isFinite(ms)) return "–";
  const d = new Date(ms);
  const day = `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`;
  const time = `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}${seconds ? `:${pad(d.getUTCSeconds())}` : ""}`;
  return `${day} ${time}`;
}

/** "3 s ago", "2 min ago", "1 h ago". */
export function ago(ms, now = Date.now()) {
  if (ms == null || !Number.isFinite(ms)) return "never";
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 90) return `${s} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

/** Seconds as "0.4 s", "12 s", "3.2 min". */
export function seconds(value) {
  if (value == null || !Number.isFinite(value)) return "–";
  if (value < 10) return `${value.toFixed(1)} s`;
  if (value < 120) return `${Math.round(value)} s`;
  return `${(value / 60).toFixed(1)} min`;
}
