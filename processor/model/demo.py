"""The demo's model: trained on generated history when ``cryptostream up --source synthetic`` first starts, so
the prediction panel works within seconds of a first run instead of after an hour of collecting candles.

The history comes from the same synthetic market the demo streams (another seed), so the features look
like the ones the model will score. It is labelled wherever it is shown (``report["data"]["generated"]``; its
version, on every prediction it made, begins ``demo-``),
and it lives in its own folder (``STATE_DIR/demo-model``): a live run never serves it. Its walk-forward
report is as honest as any other: on a random walk it does not beat the baselines, and says so.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow.compute as pc

from cryptostream.models import Trade, TradeColumns
from processor.model import registry
from processor.model.dataset import build_dataset, market_key, table_to_candles
from processor.model.registry import DEMO_VERSION_PREFIX
from processor.model.train import TrainResult, fit_and_report
from processor.windows import aggregate

__all__ = ["DEMO_FOLDS", "DEMO_NOTE", "DEMO_VERSION_PREFIX", "train_demo_model"]

log = logging.getLogger(__name__)

DEMO_FOLDS = 3
# Begins the demo model's version, so every prediction it made says so where it is shown (the dashboard's
# prediction panel), also after the demo, when a live run shows the demo's stored predictions.
DEMO_NOTE = (
    "Demo model: trained at first start on generated synthetic-market history, to show the prediction "
    "panel working. It knows nothing about real markets; train one on your own candles with "
    "`cryptostream train`."
)


def train_demo_model(trades: list[Trade], model_dir: Path, horizon_s: int, *, seed: int) -> TrainResult:
    """Aggregate ``trades`` (generated) into 1 s candles, train walk-forward, save under ``model_dir``."""
    table = aggregate(TradeColumns.from_trades(trades)).to_table()
    candles = {}
    for exchange, symbol in sorted({(t.exchange, t.symbol) for t in trades}):
        rows = table.filter(pc.and_(pc.equal(table["exchange"], exchange), pc.equal(table["symbol"], symbol)))
        candles[market_key(exchange, symbol)] = table_to_candles(rows.sort_by("bucket"))
    ds = build_dataset(candles, horizon_s)
    seconds = (max(t.timestamp for t in trades) - min(t.timestamp for t in trades)) // 1000
    data = {"source": "generated", "generated": True, "generated_seconds": int(seconds), "seed": seed}
    result = fit_and_report(ds, folds=DEMO_FOLDS, seed=seed, data=data)
    result.report["notes"] = [DEMO_NOTE, *result.report.get("notes", [])]
    version = DEMO_VERSION_PREFIX + str(result.model_file["version"])
    result.model_file["version"] = result.report["model_version"] = version
    path = registry.save(model_dir, result.model_file, result.report)
    log.info("demo model %s saved to %s", result.model_file["version"], path)
    return result
