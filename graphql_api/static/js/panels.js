// The text panels: tickers, quote, latest prediction, the model's measured report, pipeline status.
// Built with DOM calls and textContent only: nothing the API sends is ever parsed as HTML.

import * as fmt from "./format.js";
import { rowState, windowChange } from "./series.js";

/** h("td", {class: "num"}, "1.0") -> <td class="num">1.0</td> */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child == null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

function direction(value) {
  return value > 0 ? "up" : value < 0 ? "down" : "flat";
}

/** One button per symbol with its last price and change over the window; the selected one is pressed. */
export function renderTickers(container, symbols, seriesBySymbol, selected, onSelect) {
  container.replaceChildren(
    ...symbols.map((symbol) => {
      const s = seriesBySymbol.get(symbol);
      const n = s ? s.close.length : 0;
      const change = s ? windowChange(s) : null;
      return h(
        "button",
        {
          type: "button",
          class: "ticker",
          "aria-pressed": symbol === selected ? "true" : "false",
          dataset: { symbol, dir: direction(change) },
          onclick: () => onSelect(symbol),
        },
        h("span", { class: "ticker-symbol" }, symbol),
        h("span", { class: "ticker-price" }, n ? fmt.price(s.close[n - 1]) : "–"),
        h("span", { class: "ticker-change" }, fmt.signedPercent(change)),
      );
    }),
  );
}

/** The selected symbol's last price, change over the window, and its newest candle. */
export function renderQuote(elements, series, now = Date.now()) {
  const n = series ? series.close.length : 0;
  if (!n) {
    elements.price.textContent = "–";
    elements.change.textContent = "";
    elements.candle.textContent = "Waiting for candles…";
    return;
  }
  const i = n - 1;
  const change = windowChange(series);
  elements.price.textContent = fmt.price(series.close[i]);
  elements.change.textContent = `${fmt.signedPercent(change)} over the window`;
  elements.change.dataset.dir = direction(change);
  const state = rowState(series, i, now);
  const why = {
    closed: "Final: every trade of this candle is in",
    "in progress": "Still filling up: it changes as trades come",
    "last stored": "Its time has passed and nothing has said it is final: shown as stored (the market " +
      "stopped, or the pipeline is behind)",
  }[state];
  elements.candle.replaceChildren(
    h("span", { class: `pill ${state === "in progress" ? "pill-live" : ""}`, title: why, dataset: { state } }, state),
    ` ${fmt.dateTime(series.bucket[i], series.interval === "1s")} UTC · O ${fmt.price(series.open[i])} · H ${fmt.price(
      series.high[i],
    )} · L ${fmt.price(series.low[i])} · C ${fmt.price(series.close[i])} · V ${fmt.compact(series.volume[i])} · ${fmt.count(
      series.tradeCount[i],
      "trade",
    )}`,
  );
}

/** The newest prediction of the selected symbol (or why there is none); ``report`` is the model report shown
 * beside it (undefined or null when there is none). */
export function renderPrediction(container, prediction, symbol, report) {
  if (!prediction) {
    container.replaceChildren(
      h("p", { class: "muted" }, `No prediction for ${symbol} yet. The processor makes one per closed second once a model is trained and enough history is in.`),
    );
    return;
  }
  const p = prediction.probabilityUp;
  const up = prediction.label === "up";
  container.replaceChildren(
    h(
      "div",
      { class: "prediction", dataset: { dir: up ? "up" : "down", bucket: String(Date.parse(prediction.bucket)) } },
      h("span", { class: "prediction-label" }, up ? "▲ Up" : "▼ Down"),
      h("span", { class: "prediction-prob" }, `P(up) ${fmt.percent(p)}`),
    ),
    h(
      "div",
      {
        class: "meter",
        role: "meter",
        "aria-label": "Probability that the close rises",
        "aria-valuemin": "0",
        "aria-valuemax": "100",
        "aria-valuenow": (p * 100).toFixed(1),
      },
      h("span", { class: "meter-fill", style: `width: ${(p * 100).toFixed(1)}%` }),
    ),
    h(
      "p",
      { class: "muted small" },
      `Will the close ${fmt.seconds(prediction.horizonSeconds)} after ${fmt.clock(Date.parse(prediction.bucket))} UTC be higher? · model ${prediction.modelVersion}`,
    ),
  );
  if (prediction.modelVersion?.startsWith("demo-")) {
    // made by the model `cryptostream up --source synthetic` trained on generated history. When the report
    // beside it is that model's, the report says what it is and a pill is enough; a live run after the demo
    // still shows the demo's stored predictions and serves no report of that model: then it is said here.
    const explained = report?.data?.generated === true && report.model_version === prediction.modelVersion;
    container.append(
      explained
        ? h("p", { class: "small", dataset: { testid: "prediction-demo-model" } }, h("span", { class: "pill pill-demo" }, "Demo model"))
        : h(
            "p",
            { class: "demo-model", dataset: { testid: "prediction-demo-model" } },
            h("strong", {}, "Demo model"),
            " · made by the demo's model, trained on generated history; it knows nothing about real markets.",
          ),
    );
  }
}

const MODELS = ["logit", "sgd", "majority", "persistence"];

/** The trained model's measured metrics and verdict, exactly as its report states them. */
export function renderModelReport(container, report) {
  if (report === undefined) {
    container.replaceChildren(h("p", { class: "muted" }, "Loading the model report…"));
    return;
  }
  if (!report) {
    container.replaceChildren(
      h("p", { class: "muted", dataset: { testid: "no-model" } }, "No model trained yet. Run ", h("code", {}, "cryptostream train"), " to train one; its measured accuracy shows here."),
    );
    return;
  }
  const verdict = report.verdict || {};
  const metrics = report.metrics || {};
  const names = [...MODELS.filter((m) => m in metrics), ...Object.keys(metrics).filter((m) => !MODELS.includes(m))];
  const beats = verdict.beats_baselines;
  const headline = beats === true ? "Beats the baselines" : beats === false ? "Does not beat the baselines" : "No verdict";
  const summary = verdict.summary || "";
  // The summary usually opens with the verdict itself ("Does NOT beat the baselines: ..."): then its own
  // words are the headline, so the verdict is said once and the summary stays word for word.
  const opens = summary.toLowerCase().startsWith(headline.toLowerCase());
  container.replaceChildren(
    h(
      "p",
      { class: "verdict", dataset: { beats: beats === true ? "yes" : beats === false ? "no" : "unknown" } },
      h("strong", {}, opens ? summary.slice(0, headline.length) : headline),
      summary ? h("span", { class: "verdict-summary" }, opens ? summary.slice(headline.length) : ` ${summary}`) : null,
    ),
    h(
      "table",
      { class: "metrics" },
      h("caption", { class: "muted small" }, `Walk-forward test of ${report.model_version ?? "the model"}, horizon ${fmt.seconds(report.horizon_seconds)}${report.created_at ? `, trained ${report.created_at}` : ""}`),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Model"), h("th", { scope: "col" }, "Acc."), h("th", { scope: "col" }, "Bal. acc."), h("th", { scope: "col" }, "Log loss"), h("th", { scope: "col" }, "AUC"))),
      h(
        "tbody",
        {},
        names.map((name) => {
          const m = metrics[name] || {};
          return h(
            "tr",
            { class: name === report.selected_model ? "selected" : null },
            h("th", { scope: "row" }, name, name === report.selected_model ? h("span", { class: "pill" }, "served") : null),
            h("td", {}, fmt.metric(m.accuracy)),
            h("td", {}, fmt.metric(m.balanced_accuracy)),
            h("td", {}, fmt.metric(m.log_loss)),
            h("td", {}, fmt.metric(m.auc)),
          );
        }),
      ),
    ),
  );
  if (report.data?.generated) {
    // `cryptostream up --source synthetic` trained it on generated history at first start: say so first
    container.prepend(
      h(
        "p",
        { class: "demo-model", dataset: { testid: "demo-model" } },
        h("strong", {}, "Demo model"),
        " · trained at first start on generated history, to show this panel working; it knows nothing about real markets. Train your own with ",
        h("code", {}, "cryptostream train"),
        ".",
      ),
    );
  }
}

function tile(label, value, attrs = {}) {
  return h("div", { class: "tile", ...attrs }, h("span", { class: "tile-label" }, label), h("span", { class: "tile-value" }, value));
}

/** One line per trade source: connected (last trade), finished (a replay at its end), or reconnecting /
 * silent since when, and why. */
function feedLine(f, now) {
  const last = f.lastTradeAt ? `last trade ${fmt.ago(Date.parse(f.lastTradeAt), now)}` : "no trade yet";
  const since = f.since ? ` since ${fmt.clock(Date.parse(f.since))} UTC` : "";
  const finished = f.state === "finished"; // nothing more is to come from it: not a problem, however old
  const trades = `${fmt.integer(f.trades)} trade${f.trades === 1 ? "" : "s"}`;
  const what = finished
    ? `finished${f.since ? ` at ${fmt.clock(Date.parse(f.since))} UTC` : ""} · ${trades}`
    : !f.alive
      ? `silent${since}`
      : f.state === "connected"
        ? `connected · ${last}`
        : `${f.state}${since} · ${last}`;
  const good = f.delivering || finished;
  return h(
    "li",
    { class: good ? "ok" : "bad", dataset: { source: f.source, state: finished || f.alive ? f.state : "silent" } },
    `${f.delivering ? "●" : finished ? "✓" : "○"} ${f.source}: ${what}`,
    f.error && !f.delivering ? h("span", { class: "muted" }, ` (${f.error})`) : null,
  );
}

/** Trade sources, lag, throughput, late and invalid counts, and the per-processor / partition / symbol detail. */
export function renderStatus(container, status, now = Date.now()) {
  if (!status) {
    container.replaceChildren(h("p", { class: "muted" }, "Waiting for the pipeline status…"));
    return;
  }
  const alive = status.processors.filter((p) => p.alive).length;
  const feeds = status.feeds ?? [];
  const state = !status.live ? "no-feed" : status.fed === false ? "no-source" : alive === 0 ? "stalled" : "running";
  const headline = {
    "no-feed": "This API does not read the processors' live feed (no KAFKA_BOOTSTRAP).",
    "no-source": feeds.length
      ? "No trade source delivers: the charts show stored data only."
      : "No trade source reports (is ingest running?): the charts show stored data only.",
    stalled: "No processor has reported in the last 10 s.",
    running: `${alive} processor${alive === 1 ? "" : "s"} running · updated ${fmt.ago(Date.parse(status.updatedAt), now)}`,
  }[state];
  const reasons = status.rejectedByReason.map((r) => `${r.reason}: ${fmt.integer(r.count)}`).join(", ");
  // replaceChildren writes a null as the text "null": leave the absent parts out
  const parts = [
    h("p", { class: "status-line", dataset: { state } }, headline),
    feeds.length ? h("ul", { class: "feeds", "aria-label": "Trade sources" }, feeds.map((f) => feedLine(f, now))) : null,
    h(
      "div",
      { class: "tiles" },
      tile("Lag", `${fmt.integer(status.lag)}`, { title: "Trades in Kafka not processed yet" }),
      tile("Trades/s", fmt.fixed(status.tradesPerSecond, 1)),
      tile("Late", fmt.integer(status.late), { title: "Trades after their window closed (dead-lettered)" }),
      tile("Invalid", fmt.integer(status.rejected), { title: reasons || "Invalid trades (dead-lettered)" }),
    ),
    h(
      "p",
      { class: "muted small" },
      `${fmt.integer(status.trades)} trades and ${fmt.integer(status.candles)} candles processed · ${fmt.fixed(status.candlesPerSecond, 1)} candles/s`,
      reasons ? ` · invalid: ${reasons}` : "",
    ),
    status.processors.length
      ? h(
          "details",
          { class: "detail" },
          h("summary", {}, `Processors (${status.processors.length})`),
          table(
            ["Processor", "Trades/s", "Late", "Invalid", "Checkpoint"],
            status.processors.map((p) => [
              h("span", { class: p.alive ? "ok" : "bad" }, `${p.alive ? "●" : "○"} ${p.processor}`),
              fmt.fixed(p.tradesPerSecond, 1),
              fmt.integer(p.late),
              fmt.integer(p.rejected),
              p.lastCheckpointMs == null ? "–" : `${fmt.fixed(p.lastCheckpointMs, 0)} ms`,
            ]),
          ),
        )
      : null,
    status.partitions.length
      ? h(
          "details",
          { class: "detail" },
          h("summary", {}, `Partitions (${status.partitions.length})`),
          table(
            ["Partition", "Processor", "Lag"],
            status.partitions.map((p) => [String(p.partition), p.processor, fmt.integer(p.lag)]),
          ),
        )
      : null,
    status.symbols.length
      ? h(
          "details",
          { class: "detail" },
          h(
            "summary",
            {},
            status.marketsTotal > status.symbols.length
              ? `Markets (the ${status.symbols.length} most behind of ${fmt.integer(status.marketsTotal)})`
              : `Markets (${status.symbols.length})`,
          ),
          table(
            ["Venue", "Symbol", "Last trade", "Behind"],
            status.symbols.map((s) => [s.exchange, s.symbol, `${fmt.clock(Date.parse(s.lastTradeTime))} UTC`, fmt.seconds(s.behindSeconds)]),
          ),
        )
      : null,
  ];
  container.replaceChildren(...parts.filter((part) => part != null));
}

function table(headers, rows) {
  return h(
    "table",
    { class: "compact" },
    h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((c) => h("td", {}, c))))),
  );
}
