"""The two candidate models, both linear in standardized features, and their portable form.

* ``logit``: logistic regression by maximum likelihood (statsmodels), refit from scratch each fold; its
  final fit reports coefficients with cluster-robust p-values (clusters = time blocks, because labels of
  overlapping horizons are strongly autocorrelated and naive p-values would be far too small).
* ``sgd``: scikit-learn's ``SGDClassifier(loss="log_loss")`` trained with ``partial_fit``, the learner of
  the original notebook. It is served as trained: learning live from labels as they settle would make
  stored predictions depend on where a processor last restarted (see :mod:`processor.model.scorer`).

Both reduce to ``P(up) = sigmoid(((x - mean) / scale) . coef + intercept)``, so a model file is plain
JSON (no pickle: loading a model never runs code) and live scoring is one matrix product. The scaler is
fitted on training rows only. A feature that does not vary in the training rows is switched off
(coefficient 0) instead of making the fit singular.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.special import expit

from processor.model.errors import ModelFileError

__all__ = ["LinearModel", "LogitFit", "SGDFit", "Scaler", "fit_logit", "fit_sgd"]

F64 = npt.NDArray[np.float64]

# A step size that shrinks slowly (eta0 / t^0.25): scikit-learn's default "optimal" schedule takes steps
# so large at first, on standardized features, that the walk-forward log loss came out near 1.0.
SGD_PARAMS: dict[str, Any] = {
    "loss": "log_loss",
    "penalty": "l2",
    "alpha": 1e-4,
    "learning_rate": "invscaling",
    "eta0": 0.01,
    "power_t": 0.25,
}
SGD_EPOCHS = 3
SGD_CHUNK = 4096


@dataclass(frozen=True, slots=True)
class Scaler:
    """Standardization learned from training rows; inactive (constant) features map to 0."""

    mean: F64
    scale: F64
    active: npt.NDArray[np.bool_]

    @classmethod
    def fit(cls, x: F64) -> Scaler:
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        active = std > 1e-12 * np.maximum(1.0, np.abs(mean))
        return cls(mean, np.where(active, std, 1.0), active)

    def transform(self, x: F64) -> F64:
        z: F64 = (x - self.mean) / self.scale
        z[:, ~self.active] = 0.0
        return z


@dataclass(slots=True)
class LinearModel:
    """A fitted model: what a model file holds and what live scoring evaluates."""

    kind: str  # "logit" or "sgd"
    scaler: Scaler
    coef: F64  # one per feature, on standardized features (0 for inactive ones)
    intercept: float
    sgd_t: float | None = None  # SGD's update counter at the end of training (reported, not resumed)

    def decision(self, x: F64) -> F64:
        """``z @ coef + intercept``, added feature by feature: a BLAS product may sum a row in a different
        order depending on how many rows come with it, and a prediction must not depend on that."""
        z = self.scaler.transform(x)
        out = np.full(z.shape[0], float(self.intercept))
        for j, weight in enumerate(self.coef.tolist()):
            out += z[:, j] * weight
        return out

    def predict_proba(self, x: F64) -> F64:
        """P(up) for each row of raw features."""
        return expit(self.decision(x))  # type: ignore[no-any-return]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "mean": self.scaler.mean.tolist(),
            "scale": self.scaler.scale.tolist(),
            "active": self.scaler.active.tolist(),
            "coef": self.coef.tolist(),
            "intercept": float(self.intercept),
            "sgd_t": self.sgd_t,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], n_features: int) -> LinearModel:
        try:
            kind = str(data["kind"])
            mean = np.asarray(data["mean"], dtype=np.float64)
            scale = np.asarray(data["scale"], dtype=np.float64)
            active = np.asarray(data["active"], dtype=np.bool_)
            coef = np.asarray(data["coef"], dtype=np.float64)
            intercept = float(data["intercept"])
            sgd_t = None if data.get("sgd_t") is None else float(data["sgd_t"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"model parameters are incomplete or malformed: {exc!r}") from None
        if kind not in ("logit", "sgd"):
            raise ModelFileError(f"model kind must be logit or sgd, got {kind!r}")
        shapes = {a.shape for a in (mean, scale, active, coef)}
        if shapes != {(n_features,)}:
            raise ModelFileError(f"model parameters must have {n_features} values each, got shapes {shapes}")
        if not (np.isfinite(mean).all() and np.isfinite(coef).all() and (scale > 0).all()):
            raise ModelFileError("model parameters must be finite (and scales positive)")
        return cls(kind, Scaler(mean, scale, active), coef, intercept, sgd_t)


@dataclass(frozen=True, slots=True)
class LogitFit:
    """Inference of a logistic regression: one entry per term, ``const`` first."""

    terms: list[str]
    coef: list[float]
    std_err: list[float | None]
    p_value: list[float | None]
    converged: bool
    warnings: list[str]
    covariance: str


def _finite(values: npt.NDArray[Any]) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in values]


def fit_logit(
    x: F64, y: npt.NDArray[np.int8], names: tuple[str, ...], clusters: npt.NDArray[np.int64] | None = None
) -> tuple[LinearModel, LogitFit]:
    """Maximum-likelihood logistic regression; with ``clusters`` the standard errors are cluster-robust."""
    import statsmodels.api as sm
    from statsmodels.tools.sm_exceptions import PerfectSeparationError

    scaler = Scaler.fit(x)
    z = scaler.transform(x)[:, scaler.active]
    design = np.column_stack([np.ones(z.shape[0]), z])
    cov: dict[str, Any] = {"cov_type": "nonrobust"}
    covariance = "nonrobust"
    # One cluster leaves nothing to estimate a robust covariance from (statsmodels divides by
    # clusters - 1): the coefficients still stand, their errors are reported as unknown.
    blocks = 0 if clusters is None else int(np.unique(clusters).size)
    if blocks >= 2:
        cov = {"cov_type": "cluster", "cov_kwds": {"groups": clusters}}
        covariance = "cluster-robust by time block"
    elif clusters is not None:
        covariance = "none: the rows span a single time block, too few for cluster-robust errors"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Rank checks cost an SVD per fit; constant features are already switched off above.
        model = sm.Logit(y.astype(np.float64), design, check_rank=False)
        try:
            result = model.fit(disp=0, maxiter=100, **cov)
        except (np.linalg.LinAlgError, PerfectSeparationError):
            # A (near) singular Hessian: a gradient method still finds the optimum.
            result = model.fit(disp=0, method="lbfgs", maxiter=500, **cov)
    params = np.asarray(result.params, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bse = np.asarray(result.bse, dtype=np.float64)
        pvalues = np.asarray(result.pvalues, dtype=np.float64)
    if clusters is not None and blocks < 2:
        bse = np.full_like(params, np.nan)  # naive errors would claim far too much (see module docstring)
        pvalues = np.full_like(params, np.nan)
    coef = np.zeros(len(names), dtype=np.float64)
    coef[scaler.active] = params[1:]
    active_names = [n for n, a in zip(names, scaler.active, strict=True) if a]
    fit = LogitFit(
        terms=["const", *active_names],
        coef=params.tolist(),
        std_err=_finite(bse),
        p_value=_finite(pvalues),
        converged=bool(result.mle_retvals.get("converged", True)),
        warnings=sorted({f"{w.category.__name__}: {w.message}" for w in caught}),
        covariance=covariance,
    )
    return LinearModel("logit", scaler, coef, float(params[0])), fit


def _new_sgd(seed: int) -> Any:
    from sklearn.linear_model import SGDClassifier

    return SGDClassifier(**SGD_PARAMS, random_state=seed)


def fit_sgd(x: F64, y: npt.NDArray[np.int8], seed: int = 0) -> SGDFit:
    """SGD logistic regression by ``partial_fit`` over a few shuffled passes of the training rows
    (all their labels are known before any test row, so the order within them leaks nothing)."""
    scaler = Scaler.fit(x)
    z = scaler.transform(x)
    clf = _new_sgd(seed)
    rng = np.random.default_rng(seed)
    for _ in range(SGD_EPOCHS):
        order = rng.permutation(z.shape[0])
        for lo in range(0, order.shape[0], SGD_CHUNK):
            rows = order[lo : lo + SGD_CHUNK]
            clf.partial_fit(z[rows], y[rows], classes=np.array([0, 1]))
    return SGDFit(scaler, clf)


class SGDFit:
    """A fitted SGD classifier and the scaler of its training rows."""

    def __init__(self, scaler: Scaler, clf: Any) -> None:
        self.scaler = scaler
        self.clf = clf

    @property
    def model(self) -> LinearModel:
        coef = np.asarray(self.clf.coef_[0], dtype=np.float64).copy()
        coef[~self.scaler.active] = 0.0
        return LinearModel("sgd", self.scaler, coef, float(self.clf.intercept_[0]), float(self.clf.t_))

    def predict_proba(self, x: F64) -> F64:
        return self.model.predict_proba(x)
