"""``cryptostream train``: walk-forward evaluation, model selection, an honest verdict, a versioned model.

Steps: load 1 s candles (archive or database) -> features and labels per symbol -> walk-forward folds
(logit and SGD against the always-majority and last-direction baselines) -> pick the model with
the lowest out-of-sample log loss -> decide whether it *significantly* beats both baselines -> refit it
on every row -> write model file + report under ``MODEL_DIR`` and make it current.

Everything reported is out of sample except the coefficient table, which describes the final fit.
A model that does not beat the baselines is still saved and served (the dashboard shows the verdict
next to its predictions); the report says plainly that its predictions carry no usable signal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cryptostream.venues import DEMO
from processor.model import registry
from processor.model.dataset import Dataset, Source, build_dataset, load_candles
from processor.model.errors import NotEnoughData
from processor.model.estimators import LinearModel, fit_logit, fit_sgd
from processor.model.features import FEATURES, LOOKBACK_SECONDS
from processor.model.metrics import BLOCK_HORIZONS, MIN_BLOCKS, compare, scores
from processor.model.walkforward import BASELINES, FORECASTERS, MODELS, FoldResult, evaluate

__all__ = ["ALPHA", "TrainResult", "fit_and_report", "train"]

log = logging.getLogger(__name__)

ALPHA = 0.05  # significance level of the verdict's one-sided tests

CRITERIA = (
    "The selected model beats a baseline when, over all walk-forward test rows, both its log loss is lower "
    "and its accuracy is higher, each with a one-sided block t-test p-value below {alpha} (blocks of "
    "{blocks} horizons, all symbols together, so overlapping labels are not counted as independent "
    "evidence; at least {min_blocks} blocks). beats_baselines is true only when it beats every baseline."
)

SERVING_NOTE = (
    "The processor serves this file as trained, learning nothing live: each stored prediction is a function "
    "of the candles and this file, so a replay or a restart reproduces it exactly. Retrain to adapt."
)


@dataclass(frozen=True, slots=True)
class TrainResult:
    model: LinearModel
    model_file: dict[str, Any]
    report: dict[str, Any]


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    # one fixed format (milliseconds, Z), so the strings also sort in time order
    when = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)  # exact, no float rounding
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _pooled(results: list[FoldResult], name: str) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int8]]:
    return (
        np.concatenate([r.predictions[name][0] for r in results]),
        np.concatenate([r.predictions[name][1] for r in results]),
    )


def _verdict(
    ds: Dataset, results: list[FoldResult], selected: str, metrics: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    rows = np.concatenate([r.fold.test for r in results])
    y, t = ds.y[rows], ds.time[rows]
    block_ms = BLOCK_HORIZONS * max(ds.horizon_s, 1) * 1000
    model_p, model_hat = _pooled(results, selected)
    against: dict[str, Any] = {}
    for base in BASELINES:
        base_p, base_hat = _pooled(results, base)
        c = compare(y, t, block_ms, model_p, model_hat, base_p, base_hat)
        c["beats"] = bool(
            c["log_loss_gain"] > 0
            and c["accuracy_gain"] > 0
            and c["log_loss_p_value"] is not None
            and c["accuracy_p_value"] is not None
            and c["log_loss_p_value"] < ALPHA
            and c["accuracy_p_value"] < ALPHA
        )
        against[base] = c
    beats = all(a["beats"] for a in against.values())
    m = metrics[selected]
    versus = "; ".join(
        f"{base} {metrics[base]['accuracy']:.1%} / {metrics[base]['log_loss']:.4f}" for base in BASELINES
    )
    head = f"{selected}: accuracy {m['accuracy']:.1%}, log loss {m['log_loss']:.4f} (baselines: {versus})"
    blocks = next(iter(against.values()))["blocks"]
    if beats:
        summary = f"Beats the baselines out of sample. {head}."
    elif blocks < MIN_BLOCKS:
        summary = (
            f"Does NOT beat the baselines: too little test data to tell ({blocks} independent blocks, "
            f"need {MIN_BLOCKS}). {head}."
        )
    else:
        lost = ", ".join(b for b, a in against.items() if not a["beats"])
        summary = (
            f"Does NOT beat the baselines ({lost}): no significant edge out of sample, treat its "
            f"predictions as noise. {head}."
        )
    return {
        "beats_baselines": beats,
        "summary": summary,
        "alpha": ALPHA,
        "criteria": CRITERIA.format(alpha=ALPHA, blocks=BLOCK_HORIZONS, min_blocks=MIN_BLOCKS),
        "against": against,
    }


def fit_and_report(
    ds: Dataset,
    *,
    folds: int = 5,
    seed: int = 0,
    data: dict[str, Any] | None = None,
    progress: Progress | None = None,
    candidates: tuple[str, ...] = MODELS,
) -> TrainResult:
    """Evaluate walk-forward, select among ``candidates``, judge, refit on all rows.

    Both models are always evaluated and reported; ``candidates`` narrows what may be selected.
    """
    if not candidates or not set(candidates) <= set(MODELS):
        raise ValueError(f"candidates must be among {', '.join(MODELS)}, got {candidates!r}")
    started = time.perf_counter()
    progress = progress or Progress(disable=True)
    task = progress.add_task("walk-forward", total=folds * len(MODELS) + 2)

    def step(name: str) -> None:
        progress.update(task, advance=1, description=f"walk-forward ({name})")

    results = evaluate(ds, folds=folds, seed=seed, step=step)
    rows = np.concatenate([r.fold.test for r in results])
    metrics = {}
    for name in FORECASTERS:
        p, hat = _pooled(results, name)
        metrics[name] = scores(ds.y[rows], p, hat)
    selected = min(candidates, key=lambda name: metrics[name]["log_loss"])
    verdict = _verdict(ds, results, selected, metrics)

    progress.update(task, description="final fit (logit, robust p-values)")
    block_ms = BLOCK_HORIZONS * max(ds.horizon_s, 1) * 1000
    clusters = (ds.time - ds.time[0]) // block_ms
    logit, inference = fit_logit(ds.x, ds.y, FEATURES, clusters=clusters)
    progress.advance(task)
    progress.update(task, description=f"final fit ({selected})")
    model = logit if selected == "logit" else fit_sgd(ds.x, ds.y, seed).model
    progress.update(task, advance=1, description=f"trained ({folds} folds, {selected} selected)")

    created = datetime.now(UTC).replace(microsecond=0)
    params = model.to_dict()
    digest = hashlib.sha256(
        json.dumps([params, ds.horizon_s, list(FEATURES)], sort_keys=True).encode()
    ).hexdigest()[:8]
    version = f"{created:%Y%m%dT%H%M%SZ}-{selected}-{digest}"
    created_at = created.isoformat().replace("+00:00", "Z")
    model_file = {
        "format": registry.MODEL_FORMAT,
        "version": version,
        "created_at": created_at,
        "horizon_seconds": ds.horizon_s,
        "lookback_seconds": LOOKBACK_SECONDS,
        "features": list(FEATURES),
        "params": params,
        "beats_baselines": verdict["beats_baselines"],
    }
    report = {
        "format": registry.REPORT_FORMAT,
        "model_version": version,
        "created_at": created_at,
        "horizon_seconds": ds.horizon_s,
        "selected_model": selected,
        "selection": "lowest walk-forward log loss among " + ", ".join(candidates),
        "verdict": verdict,
        "metrics": metrics,
        "folds": [
            {
                **r.fold.describe(ds.time, iso),
                "purge_seconds": ds.horizon_s,
                "metrics": r.metrics,
            }
            for r in results
        ],
        "coefficients": {
            "model": "logit fitted on every row (standardized features)",
            "covariance": inference.covariance,
            "converged": inference.converged,
            "warnings": inference.warnings,
            "terms": [
                {"term": term, "coef": c, "std_err": se, "p_value": pv}
                for term, c, se, pv in zip(
                    inference.terms, inference.coef, inference.std_err, inference.p_value, strict=True
                )
            ],
        },
        "data": {
            **(data or {}),
            "symbols": ds.symbols,
            "candles": ds.candles,
            "rows": len(ds),
            "first_bucket": iso(int(ds.time[0])),
            "last_bucket": iso(int(ds.time[-1])),
            "up_rate": float(ds.y.mean()),
        },
        "features": list(FEATURES),
        "lookback_seconds": LOOKBACK_SECONDS,
        "notes": [SERVING_NOTE],
        "training_seconds": round(time.perf_counter() - started, 3),
        "model_file": f"{version}.model.json",
    }
    return TrainResult(model, model_file, report)


@contextmanager
def _progress(show: bool, console: Console | None) -> Iterator[Progress]:
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console or Console(stderr=True),  # stdout stays for the result
        disable=not show,
        transient=False,
    ) as progress:
        yield progress


def train(
    model_dir: Path,
    horizon_s: int,
    *,
    source: Source = "archive",
    output_dir: Path,
    database_dsn: str | None = None,
    symbols: list[str] | None = None,
    exchanges: list[str] | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    folds: int = 5,
    seed: int = 0,
    candidates: tuple[str, ...] = MODELS,
    show_progress: bool = True,
    console: Console | None = None,
) -> TrainResult:
    """Load candles, evaluate, save the model and its report under ``model_dir`` (made current)."""
    started = time.perf_counter()
    left_out: list[tuple[str, str]] = []
    with _progress(show_progress, console) as progress:
        task = progress.add_task(f"loading candles from the {source}", total=None)
        candles = load_candles(
            source,
            output_dir=output_dir,
            database_dsn=database_dsn,
            symbols=symbols,
            exchanges=exchanges,
            start=start,
            end=end,
            step=lambda market: progress.update(task, advance=1, description=f"loaded {market}"),
            left_out=left_out,
        )
        progress.update(task, total=len(candles), completed=len(candles), description="candles loaded")
        if left_out:
            log.info(
                "leaving out the demo venue's %d market(s): generated data is not mixed with real markets "
                "(--exchanges %s trains on them alone)",
                len(left_out),
                DEMO,
            )
        data = {
            "source": source,
            "start": start.isoformat() if start else None,
            "end": end.isoformat() if end else None,
        }
        try:
            ds = build_dataset(candles, horizon_s)
            result = fit_and_report(
                ds, folds=folds, seed=seed, data=data, progress=progress, candidates=candidates
            )
        except NotEnoughData as exc:
            if not left_out:
                raise
            raise NotEnoughData(
                f"{exc} The demo venue's {len(left_out)} market(s) were left out (generated data is never "
                f"mixed with real markets): --exchanges {DEMO} trains on them alone."
            ) from None
    result.report["training_seconds"] = round(time.perf_counter() - started, 3)
    path = registry.save(model_dir, result.model_file, result.report)
    log.info("model %s saved to %s", result.model_file["version"], path)
    return result
