"""Walk-forward evaluation: every test row is predicted by a model trained only on rows before it.

The time span is cut into ``folds + 1`` equal blocks. Fold ``k`` tests on block ``k`` (1-based) and
trains on every row whose *label* was settled before that block began: ``t + horizon < test_start``.
Without that purge the last training labels would read closes inside the test block. Scalers, class
rates and baseline hit rates are learned from the training rows of the fold too.

Both models are scored as the processor serves them: fitted on the training rows, then frozen for the
whole test block (nothing learns live, so a replay scores exactly what the live run scored).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from processor.model.dataset import Dataset, min_history_seconds
from processor.model.errors import NotEnoughData
from processor.model.estimators import fit_logit, fit_sgd
from processor.model.features import FEATURES
from processor.model.metrics import scores

__all__ = ["FORECASTERS", "MODELS", "Fold", "FoldResult", "evaluate", "needed_seconds", "splits"]

MODELS = ("logit", "sgd")
BASELINES = ("majority", "persistence")
FORECASTERS = (*MODELS, *BASELINES)
MIN_TRAIN_ROWS = 200

Prediction = tuple[npt.NDArray[np.float64], npt.NDArray[np.int8]]  # P(up), predicted label


@dataclass(frozen=True, slots=True)
class Fold:
    number: int  # 1-based
    train: npt.NDArray[np.int64]  # row positions (the dataset is in time order)
    test: npt.NDArray[np.int64]
    test_start: int  # ms, inclusive
    test_end: int  # ms, exclusive

    def describe(self, time: npt.NDArray[np.int64], when: Callable[[int], Any] = int) -> dict[str, Any]:
        """Rows and time range of the fold; ``when`` formats times (ms)."""
        return {
            "fold": self.number,
            "train_rows": int(self.train.size),
            "train_first": when(int(time[self.train[0]])) if self.train.size else None,
            "train_last": when(int(time[self.train[-1]])) if self.train.size else None,
            "test_rows": int(self.test.size),
            "test_start": when(self.test_start),
            "test_end": when(self.test_end),
        }


@dataclass(slots=True)
class FoldResult:
    fold: Fold
    predictions: dict[str, Prediction] = field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)


def splits(time: npt.NDArray[np.int64], horizon_s: int, folds: int) -> list[Fold]:
    """Expanding-window folds over rows sorted by ``time`` (ms); training rows' labels end before the test."""
    if folds < 1:
        raise ValueError(f"folds must be >= 1, got {folds}")
    if time.size == 0:
        return []
    first, end = int(time[0]), int(time[-1]) + 1
    edges = [first + (end - first) * i // (folds + 1) for i in range(folds + 2)]
    horizon_ms = horizon_s * 1000
    out = []
    for k in range(1, folds + 1):
        start, stop = edges[k], edges[k + 1]
        n_train = int(np.searchsorted(time, start - horizon_ms, side="left"))
        lo, hi = np.searchsorted(time, [start, stop], side="left")
        out.append(
            Fold(k, np.arange(n_train, dtype=np.int64), np.arange(lo, hi, dtype=np.int64), start, stop)
        )
    return out


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.3g} min" if seconds < 7200 else f"{seconds / 3600:.3g} h"


def needed_seconds(horizon_s: int, folds: int, rows_per_second: float) -> int:
    """Seconds of candles walk-forward needs (with 5 % to spare, in whole minutes): fold 1 trains on the
    rows of the first of ``folds + 1`` equal blocks whose label settles before its test block begins, and
    needs ``MIN_TRAIN_ROWS`` of them."""
    block = horizon_s + MIN_TRAIN_ROWS / max(rows_per_second, 1e-9)
    exact = (folds + 1) * block + min_history_seconds(horizon_s)
    return 60 * math.ceil(exact * 1.05 / 60)


def _not_enough(ds: Dataset, folds: int, problem: str) -> NotEnoughData:
    span = (int(ds.time[-1]) - int(ds.time[0])) / 1000 + 1 if len(ds) else 0.0
    density = len(ds) / span if len(ds) > 1 else float(max(len(ds.symbols), 1))
    have = span + min_history_seconds(ds.horizon_s) if len(ds) else 0.0
    need = needed_seconds(ds.horizon_s, folds, density)
    fewer = ""
    if folds > 1:
        fewer = f", or --folds 1 (about {_minutes(needed_seconds(ds.horizon_s, 1, density))})"
    return NotEnoughData(
        f"not enough candles for {folds} walk-forward fold(s) at a {ds.horizon_s} s horizon: {problem}; "
        f"have {len(ds)} labelled rows from about {_minutes(have)} of {len(ds.symbols)} symbol(s), need "
        f"about {_minutes(need)} of candles. Let the pipeline run longer{fewer}, or a shorter --horizon."
    )


def _check(ds: Dataset, fold_list: list[Fold], folds: int) -> None:
    for fold in fold_list:
        y = ds.y[fold.train]
        if fold.train.size < MIN_TRAIN_ROWS or y.min(initial=1) == y.max(initial=0):
            raise _not_enough(
                ds,
                folds,
                f"fold {fold.number} would train on {fold.train.size} rows ({int(y.sum())} up), it needs "
                f"{MIN_TRAIN_ROWS}+ with both outcomes",
            )
        if fold.test.size == 0:
            raise _not_enough(ds, folds, f"fold {fold.number} has no test rows")


def _fold(ds: Dataset, fold: Fold, seed: int, step: Callable[[str], None]) -> FoldResult:
    result = FoldResult(fold)
    x_tr, y_tr = ds.x[fold.train], ds.y[fold.train]
    x_te, y_te = ds.x[fold.test], ds.y[fold.test]

    logit, _ = fit_logit(x_tr, y_tr, FEATURES)
    p = logit.predict_proba(x_te)
    result.predictions["logit"] = (p, (p > 0.5).astype(np.int8))
    step("logit")

    p = fit_sgd(x_tr, y_tr, seed).predict_proba(x_te)
    result.predictions["sgd"] = (p, (p > 0.5).astype(np.int8))
    step("sgd")

    rate = float(np.clip(y_tr.mean(), 0.01, 0.99))
    result.predictions["majority"] = (
        np.full(y_te.shape, rate),
        np.full(y_te.shape, int(rate > 0.5), np.int8),
    )
    guess = ds.persistence[fold.test]
    hit = float(np.clip((ds.persistence[fold.train] == y_tr).mean(), 0.01, 0.99))
    result.predictions["persistence"] = (np.where(guess == 1, hit, 1.0 - hit), guess)

    for name, (prob, hat) in result.predictions.items():
        result.metrics[name] = scores(y_te, prob, hat)
    return result


def evaluate(
    ds: Dataset, folds: int = 5, seed: int = 0, step: Callable[[str], None] = lambda _name: None
) -> list[FoldResult]:
    """Walk-forward results of both models and both baselines; ``step`` ticks after each model fit."""
    if len(ds) == 0:
        raise _not_enough(
            ds,
            folds,
            f"{ds.candles} candle(s) give no labelled row (a row needs {min_history_seconds(ds.horizon_s)} s "
            "of candles: the lookback or horizon behind it, the horizon ahead"
            + (
                f"; {ds.no_order_flow} row(s) were left out for candles without buy/sell volume, as the "
                "original project's imported ones are: no order-flow features)"
                if ds.no_order_flow
                else ")"
            ),
        )
    fold_list = splits(ds.time, ds.horizon_s, folds)
    _check(ds, fold_list, folds)
    return [_fold(ds, fold, seed, step) for fold in fold_list]
