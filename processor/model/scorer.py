"""Live scoring: the processor's scorer hook, turning each newly closed candle into a prediction.

After a closing pass the processor calls ``scorer(histories)`` once with every market that closed candles:
each market's recent history ending with its new candles (:class:`processor.state.Histories`). The scorer
computes the features of the new candles from that history with the very function training used (all markets
in one pass, each reading only its own grid), and returns one ``PREDICTION_SCHEMA`` row per new candle whose
lookback is covered: P(close rises over the horizon), the label (``up`` when P > 0.5), the model version.

A prediction is a function of the model file and the candles only: the scorer keeps no state between calls
and does not learn online (an ``sgd`` model is served as trained). That is what makes stored predictions,
like candles, a function of the log: a replay, a crash or a partition moving to another processor gives
the same probabilities. ``cryptostream train`` makes a new model; the processor picks it up at start.

A demo model (``cryptostream up --source synthetic`` trains one on generated history; its version begins
``demo-``) scores the demo venue's markets only: trades of a real venue that reach the demo's processor (a
Binance dump replayed into it) get no predictions from a model that knows nothing about real markets.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from cryptostream.models import CANDLE_SCHEMA, PREDICTION_SCHEMA
from cryptostream.settings import Settings
from cryptostream.venues import is_demo
from processor.model import registry
from processor.model.errors import ModelError, ModelFileError
from processor.model.estimators import LinearModel
from processor.model.features import FEATURES, LOOKBACK_SECONDS, grid_features, to_grid
from processor.state import Histories

__all__ = ["ModelScorer", "load_live_scorer"]

log = logging.getLogger(__name__)

FIELDS = CANDLE_SCHEMA.names[2:]  # bucket .. sell_volume, the keys of the processor's ``recent``


class ModelScorer:
    """A :data:`processor.service.Scorer` serving one trained model (see the module docstring)."""

    def __init__(self, model_file: dict[str, Any]) -> None:
        if list(model_file.get("features", [])) != list(FEATURES):
            raise ModelFileError(
                "the model was trained on other features than this version computes; retrain it "
                "with `cryptostream train`"
            )
        if model_file.get("lookback_seconds") != LOOKBACK_SECONDS:
            raise ModelFileError(
                f"the model expects a {model_file.get('lookback_seconds')} s lookback, this version "
                f"computes {LOOKBACK_SECONDS} s; retrain it with `cryptostream train`"
            )
        try:
            self.version = str(model_file["version"])
            self.horizon_s = int(model_file["horizon_seconds"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"model file lacks version or horizon_seconds: {exc!r}") from None
        self.model = LinearModel.from_dict(model_file.get("params") or {}, len(FEATURES))
        self.demo_only = self.version.startswith(registry.DEMO_VERSION_PREFIX)  # see the module docstring
        self.predicted = 0
        self._warned: set[tuple[str, str]] = set()

    def __call__(self, histories: Histories) -> dict[str, pa.Table]:
        """Predictions of every stream's new candles (its last ``counts[i]`` rows), all streams at once."""
        n = len(histories)
        if n == 0:
            return {}
        if self.demo_only and not all(map(is_demo, histories.exchanges)):
            demo = [i for i, e in enumerate(histories.exchanges) if is_demo(e)]
            return self(histories.select(demo)) if demo else {}
        history = {k: np.asarray(histories.columns[k]) for k in FIELDS}
        history["bucket"] = history["bucket"].astype(np.int64, copy=False)
        sizes = np.diff(histories.starts)
        m = np.minimum(np.maximum(histories.counts, 0), sizes)
        try:
            grid = to_grid(history, histories.starts)
        except ValueError as exc:
            if n > 1:  # one stream's history is unusable: score the others one by one
                parts = [self(Histories.one(*stream)) for stream in histories]
                tables = [t["predictions"] for t in parts if t]
                return {"predictions": pa.concat_tables(tables)} if tables else {}
            if (histories.exchanges[0], histories.symbols[0]) not in self._warned:
                self._warned.add((histories.exchanges[0], histories.symbols[0]))
                log.warning("cannot score %s %s: %s", histories.exchanges[0], histories.symbols[0], exc)
            return {}
        total = int(m.sum())
        rows = np.repeat(histories.starts[1:] - m - (np.cumsum(m) - m), m) + np.arange(total)
        x = grid_features(grid, grid.index[rows])
        ok = np.isfinite(x).all(axis=1)
        if not ok.any():
            return {}
        p = self.model.predict_proba(x[ok])
        self.predicted += int(p.size)
        stream = np.repeat(np.arange(n), m)[ok]
        return {"predictions": self._table(histories, stream, history["bucket"][rows[ok]], p)}

    def _table(
        self,
        histories: Histories,
        stream: npt.NDArray[np.int64],
        buckets: npt.NDArray[np.int64],
        p: npt.NDArray[np.float64],
    ) -> pa.Table:
        rows = buckets.shape[0]
        return pa.table(
            {
                "exchange": pa.array(np.asarray(histories.exchanges, dtype=object)[stream], pa.string()),
                "symbol": pa.array(np.asarray(histories.symbols, dtype=object)[stream], pa.string()),
                "bucket": pa.array(buckets, pa.timestamp("ms", tz="UTC")),
                "horizon_seconds": pa.array(np.full(rows, self.horizon_s, np.int32)),
                "probability_up": pa.array(p, pa.float64()),
                "label": pa.array(np.where(p > 0.5, "up", "down"), pa.string()),
                "model_version": pa.array(np.full(rows, self.version, dtype=object), pa.string()),
            },
            schema=PREDICTION_SCHEMA,
        )


def load_live_scorer(settings: Settings) -> ModelScorer | None:
    """The scorer of the current model under ``MODEL_DIR``, or None (logged) when there is none usable."""
    model_dir = settings.model_dir
    try:
        model_file = registry.load_model_file(model_dir)
        if model_file is None:
            return None
        scorer = ModelScorer(model_file)
    except ModelError as exc:
        log.error("no live predictions: %s", exc)
        return None
    if scorer.horizon_s != settings.prediction_horizon_seconds:
        log.warning(
            "model %s predicts %d s ahead but PREDICTION_HORIZON_SECONDS is %d; predictions keep the "
            "model's horizon (retrain to change it)",
            scorer.version,
            scorer.horizon_s,
            settings.prediction_horizon_seconds,
        )
    if not model_file.get("beats_baselines", False):
        log.warning(
            "model %s did not beat the baselines in walk-forward evaluation; its predictions are noise "
            "(see %s)",
            scorer.version,
            model_dir / f"{scorer.version}.report.json",
        )
    return scorer
