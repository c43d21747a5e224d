"""Scores of probabilistic up/down forecasts, and whether one forecaster really beats another.

Accuracy, balanced accuracy, log loss and ROC AUC are computed on out-of-sample rows only. Comparing two
forecasters row by row would overstate certainty: with a 60 s horizon, neighbouring labels share 59 of
their 60 seconds. So differences are averaged per time block (several horizons long, all symbols
together) and the block means get a one-sided t-test; the blocks are close to independent.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import stats

__all__ = ["BLOCK_HORIZONS", "MIN_BLOCKS", "compare", "log_losses", "scores"]

F64 = npt.NDArray[np.float64]
EPS = 1e-12
BLOCK_HORIZONS = 5  # a block spans this many horizons
MIN_BLOCKS = 10  # fewer blocks than this cannot support a claim either way


def log_losses(y: npt.NDArray[np.int8], p: F64) -> F64:
    """Per-row log loss (natural log)."""
    q = np.clip(p, EPS, 1.0 - EPS)
    up = y.astype(np.float64)
    out: F64 = -(up * np.log(q) + (1.0 - up) * np.log1p(-q))
    return out


def scores(y: npt.NDArray[np.int8], p: F64, guess: npt.NDArray[np.int8] | None = None) -> dict[str, Any]:
    """accuracy, balanced_accuracy, log_loss, auc (None with one class only), rows, up_rate.

    ``guess`` is the predicted label; by default ``p > 0.5``.
    """
    from sklearn.metrics import roc_auc_score

    n = int(y.shape[0])
    if n == 0:
        return {"rows": 0, "accuracy": None, "balanced_accuracy": None, "log_loss": None, "auc": None}
    hat = (p > 0.5).astype(np.int8) if guess is None else guess
    hit = hat == y
    up = y == 1
    recalls = [float(hit[mask].mean()) for mask in (up, ~up) if mask.any()]
    both = bool(up.any() and (~up).any())
    return {
        "rows": n,
        "up_rate": float(up.mean()),
        "accuracy": float(hit.mean()),
        "balanced_accuracy": float(np.mean(recalls)),
        "log_loss": float(log_losses(y, p).mean()),
        "auc": float(roc_auc_score(y, p)) if both else None,
    }


def compare(
    y: npt.NDArray[np.int8],
    time: npt.NDArray[np.int64],
    block_ms: int,
    model_p: F64,
    model_hat: npt.NDArray[np.int8],
    base_p: F64,
    base_hat: npt.NDArray[np.int8],
) -> dict[str, Any]:
    """How much the model improves on a baseline, with one-sided block t-test p-values.

    ``log_loss_gain`` > 0 and ``accuracy_gain`` > 0 mean the model is better.
    """
    block = (time - time.min()) // block_ms if time.size else time
    _, inverse = np.unique(block, return_inverse=True)
    loss_gain = log_losses(y, base_p) - log_losses(y, model_p)
    acc_gain = (model_hat == y).astype(np.float64) - (base_hat == y).astype(np.float64)
    out: dict[str, Any] = {
        "blocks": int(inverse.max() + 1) if inverse.size else 0,
        "block_seconds": block_ms // 1000,
    }
    for name, values in (("log_loss", loss_gain), ("accuracy", acc_gain)):
        sums = np.bincount(inverse, weights=values)
        counts = np.bincount(inverse)
        means = sums / counts
        out[f"{name}_gain"] = float(values.mean()) if values.size else 0.0
        out[f"{name}_p_value"] = _one_sided_p(means)
    return out


def _one_sided_p(means: F64) -> float | None:
    """P(mean <= 0) by a one-sided t-test on block means; None when too few blocks."""
    if means.size < MIN_BLOCKS:
        return None
    sd = float(means.std(ddof=1))
    if sd == 0.0:
        return 0.0 if means.mean() > 0 else 1.0
    t = float(means.mean()) / (sd / np.sqrt(means.size))
    return float(stats.t.sf(t, df=means.size - 1))
