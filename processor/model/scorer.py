"""Live scoring: the processor's scorer hook, turning each newly closed candle into a prediction.

For every symbol, after its newly closed 1 s candles join its recent history, the processor calls
``scorer(symbol, recent, n_new)``. The scorer computes the features of the new candles from that history
with the very function training used, and returns one ``PREDICTION_SCHEMA`` row per new candle whose
lookback is covered: P(close rises over the horizon), the label (``up`` when P > 0.5), the model version.

An ``sgd`` model keeps learning: each prediction waits until the grid reaches ``t + horizon``, then its
label is known and the row is learned (in batches, after the predictions of that call, so a prediction
never benefits from a label settled after its own second). That online state lives in memory only:
it is not checkpointed, so a restart (or a replay after a crash) starts again from the model file and
may write slightly different probabilities for replayed seconds (the sinks upsert them). Predictions of
a model that has learned online carry the version suffix ``+online``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from cryptostream.models import CANDLE_SCHEMA, PREDICTION_SCHEMA
from cryptostream.settings import Settings
from processor.model import registry
from processor.model.errors import ModelError, ModelFileError
from processor.model.estimators import LinearModel, OnlineSGD
from processor.model.features import FEATURES, LOOKBACK_SECONDS, grid_features, to_grid

__all__ = ["ModelScorer", "load_live_scorer"]

log = logging.getLogger(__name__)

FIELDS = CANDLE_SCHEMA.names[1:]  # bucket .. sell_volume, the keys of the processor's ``recent``
TAIL_MS = (LOOKBACK_SECONDS + 1) * 1000  # candles kept per symbol between calls
UPDATE_BATCH = 64  # labelled rows gathered (across symbols) before one partial_fit
MAX_PENDING = 100_000  # per symbol: rows waiting for their label (bounds memory if a symbol stalls)


@dataclass(slots=True)
class _Pending:
    """Predicted rows of one symbol whose labels are not known yet."""

    time: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    close: npt.NDArray[np.float64] = field(default_factory=lambda: np.empty(0, np.float64))
    x: npt.NDArray[np.float64] = field(default_factory=lambda: np.empty((0, len(FEATURES)), np.float64))


class ModelScorer:
    """A :data:`processor.service.Scorer` serving one trained model (see the module docstring)."""

    def __init__(
        self, model_file: dict[str, Any], *, online: bool = True, update_batch: int = UPDATE_BATCH
    ) -> None:
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
            self.base_version = str(model_file["version"])
            self.horizon_s = int(model_file["horizon_seconds"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"model file lacks version or horizon_seconds: {exc!r}") from None
        self.static = LinearModel.from_dict(model_file.get("params") or {}, len(FEATURES))
        self.online = OnlineSGD.resume(self.static) if online and self.static.kind == "sgd" else None
        self.update_batch = update_batch
        self.pending: dict[str, _Pending] = {}
        self.tails: dict[str, dict[str, npt.NDArray[Any]]] = {}  # last candles seen, per symbol
        self.unscored = 0  # new candles that could not be scored (see ``_history``)
        self._learn_x: list[npt.NDArray[np.float64]] = []
        self._learn_y: list[npt.NDArray[np.int8]] = []
        self._warned: set[str] = set()
        self.predicted = 0

    @property
    def version(self) -> str:
        if self.online is not None and self.online.updates:
            return self.base_version + "+online"
        return self.base_version

    @property
    def model(self) -> LinearModel:
        return self.online.model if self.online is not None else self.static

    def __call__(self, symbol: str, recent: dict[str, npt.NDArray[Any]], n_new: int) -> dict[str, pa.Table]:
        n = int(recent["bucket"].shape[0]) if "bucket" in recent else 0
        if n == 0 or n_new <= 0:
            return {}
        history = self._history(symbol, recent, n_new)
        m = min(n_new, n)
        try:
            grid = to_grid(history)
        except ValueError as exc:
            if symbol not in self._warned:
                self._warned.add(symbol)
                log.warning("cannot score %s: %s", symbol, exc)
            return {}
        self.tails[symbol] = _trim(history, TAIL_MS)
        new = grid.index[-m:]
        x = grid_features(grid, new)
        ok = np.isfinite(x).all(axis=1)
        buckets = history["bucket"][-m:][ok]
        x = x[ok]
        out: dict[str, pa.Table] = {}
        if buckets.size:
            p = self.model.predict_proba(x)
            self.predicted += int(buckets.size)
            out["predictions"] = self._table(symbol, buckets, p)
        if self.online is not None:
            self._settle(symbol, history, buckets, grid.close[new[ok]], x)
        return out

    def _history(
        self, symbol: str, recent: dict[str, npt.NDArray[Any]], n_new: int
    ) -> dict[str, npt.NDArray[Any]]:
        """The processor's recent candles, extended back with the candles this scorer kept from earlier
        calls, so a batch closing up to the processor's whole history length of candles at once still
        has a full lookback for its first candle."""
        history = {k: np.asarray(recent[k]) for k in FIELDS}
        history["bucket"] = history["bucket"].astype(np.int64, copy=False)
        tail = self.tails.get(symbol)
        if n_new > history["bucket"].shape[0]:
            # The processor trimmed some new candles away: earlier candles would leave a hole, so only
            # the newest, whose lookback lies inside ``recent``, can be scored.
            self.unscored += n_new - int(history["bucket"].shape[0])
            if symbol not in self._warned:
                self._warned.add(symbol)
                log.warning(
                    "%s: %d candles closed at once, more than the processor's history holds; only the newest "
                    "are scored (further such gaps are counted, not logged)",
                    symbol,
                    n_new,
                )
            return history
        if tail is None:
            return history
        older = tail["bucket"] < history["bucket"][0]
        if not older.any():
            return history
        return {k: np.concatenate([tail[k][older], history[k]]) for k in FIELDS}

    def _table(self, symbol: str, buckets: npt.NDArray[np.int64], p: npt.NDArray[np.float64]) -> pa.Table:
        rows = buckets.shape[0]
        return pa.table(
            {
                "symbol": pa.array([symbol] * rows, pa.string()),
                "bucket": pa.array(buckets, pa.timestamp("ms", tz="UTC")),
                "horizon_seconds": pa.array(np.full(rows, self.horizon_s, np.int32)),
                "probability_up": pa.array(p, pa.float64()),
                "label": pa.array(np.where(p > 0.5, "up", "down").tolist(), pa.string()),
                "model_version": pa.array([self.version] * rows, pa.string()),
            },
            schema=PREDICTION_SCHEMA,
        )

    def _settle(
        self,
        symbol: str,
        history: dict[str, npt.NDArray[Any]],
        buckets: npt.NDArray[np.int64],
        closes: npt.NDArray[np.float64],
        x: npt.NDArray[np.float64],
    ) -> None:
        """Learn the pending rows whose horizon the history now reaches; queue this call's rows."""
        assert self.online is not None
        pend = self.pending.setdefault(symbol, _Pending())
        hist_b = history["bucket"]
        target = pend.time + self.horizon_s * 1000
        ready = target <= hist_b[-1]
        known = ready & (target >= hist_b[0])  # older targets fell out of the history: unknowable here
        if known.any():
            at = np.searchsorted(hist_b, target[known], side="right") - 1
            later = np.asarray(history["close"], dtype=np.float64)[at]
            self._learn_x.append(pend.x[known])
            self._learn_y.append((later > pend.close[known]).astype(np.int8))
        keep = ~ready
        pend.time = np.concatenate([pend.time[keep], buckets])[-MAX_PENDING:]
        pend.close = np.concatenate([pend.close[keep], closes])[-MAX_PENDING:]
        pend.x = np.concatenate([pend.x[keep], x])[-MAX_PENDING:]
        if sum(a.shape[0] for a in self._learn_y) >= self.update_batch:
            self.online.update(np.concatenate(self._learn_x), np.concatenate(self._learn_y))
            self._learn_x.clear()
            self._learn_y.clear()


def _trim(candles: dict[str, npt.NDArray[Any]], keep_ms: int) -> dict[str, npt.NDArray[Any]]:
    """The candles of the last ``keep_ms`` plus the one before them (its close fills the gap after it)."""
    buckets = candles["bucket"]
    start = max(0, int(np.searchsorted(buckets, buckets[-1] - keep_ms, side="right")) - 1)
    return {k: v[start:].copy() for k, v in candles.items()}


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
            scorer.base_version,
            scorer.horizon_s,
            settings.prediction_horizon_seconds,
        )
    if not model_file.get("beats_baselines", False):
        log.warning(
            "model %s did not beat the baselines in walk-forward evaluation; its predictions are noise "
            "(see %s)",
            scorer.base_version,
            model_dir / f"{scorer.base_version}.report.json",
        )
    return scorer
