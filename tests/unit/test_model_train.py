"""Training end to end on synthetic candles: it finds a planted signal and admits when there is none."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from processor.model import load_report, registry
from processor.model.dataset import build_dataset
from processor.model.errors import ModelFileError, NotEnoughData
from processor.model.estimators import LinearModel
from processor.model.features import FEATURES
from processor.model.synthetic import synthetic_candles
from processor.model.train import fit_and_report

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]


def _train(signal: float, seed: int, horizon: int = 30, hours: float = 3.0, **kwargs):
    candles = {
        s: synthetic_candles(int(hours * 3600), seed=seed * 10 + i, signal=signal, gap_rate=0.1)
        for i, s in enumerate(SYMBOLS)
    }
    return fit_and_report(build_dataset(candles, horizon), folds=4, **kwargs)


@pytest.fixture(scope="module")
def planted():
    return _train(signal=0.15, seed=1)


def test_a_planted_signal_is_found_and_beats_both_baselines(planted):
    report = planted.report
    verdict = report["verdict"]
    assert verdict["beats_baselines"] is True
    assert verdict["summary"].startswith("Beats the baselines")
    m = report["metrics"]
    chosen = m[report["selected_model"]]
    for base in ("majority", "persistence"):
        assert chosen["accuracy"] > m[base]["accuracy"] + 0.03
        assert chosen["log_loss"] < m[base]["log_loss"]
        assert verdict["against"][base]["log_loss_p_value"] < 0.01
    assert chosen["auc"] > 0.55 and chosen["balanced_accuracy"] > 0.53
    # a constant forecast ranks nothing: AUC 0.5 within each fold
    assert {f["metrics"]["majority"]["auc"] for f in report["folds"]} == {0.5}
    # the coefficient table points at the planted cause: order-flow imbalance, with a robust p-value
    terms = {t["term"]: t for t in report["coefficients"]["terms"]}
    strongest = max((t for t in terms.values() if t["term"] != "const"), key=lambda t: abs(t["coef"]))
    assert strongest["term"].startswith("imbalance_") and strongest["coef"] > 0
    assert strongest["p_value"] < 1e-6
    assert report["coefficients"]["covariance"].startswith("cluster-robust")


@pytest.mark.parametrize("seed", [2, 3])
def test_a_random_walk_scores_about_fifty_percent_and_is_declared_no_better(seed):
    report = _train(signal=0.0, seed=seed).report
    verdict = report["verdict"]
    assert verdict["beats_baselines"] is False
    assert "Does NOT beat the baselines" in verdict["summary"]
    for name in ("logit", "sgd", "majority", "persistence"):
        assert abs(report["metrics"][name]["accuracy"] - 0.5) < 0.03
    assert abs(report["metrics"][report["selected_model"]]["auc"] - 0.5) < 0.03


def test_the_report_records_walk_forward_folds_in_time_order(planted):
    folds = planted.report["folds"]
    assert [f["fold"] for f in folds] == [1, 2, 3, 4]
    for f in folds:
        # ISO strings of one format compare in time order
        assert f["train_last"] < f["test_start"] < f["test_end"]
        assert set(f["metrics"]) == {"logit", "sgd", "majority", "persistence"}
    assert sum(f["test_rows"] for f in folds) == planted.report["metrics"]["logit"]["rows"]


def test_model_and_report_are_saved_versioned_and_loadable_as_json(planted, tmp_path):
    assert load_report(tmp_path) is None  # nothing trained yet
    registry.save(tmp_path, planted.model_file, planted.report)
    report = load_report(tmp_path)
    assert report == json.loads(json.dumps(planted.report))
    version = report["model_version"]
    assert (tmp_path / f"{version}.model.json").is_file() and (tmp_path / f"{version}.report.json").is_file()
    model_file = registry.load_model_file(tmp_path)
    restored = LinearModel.from_dict(model_file["params"], len(FEATURES))
    x = np.random.default_rng(0).normal(size=(50, len(FEATURES))) * 1e-3
    np.testing.assert_array_equal(restored.predict_proba(x), planted.model.predict_proba(x))
    # a second training run becomes current; the first stays on disk
    other = dict(planted.model_file, version=version + "-b")
    registry.save(tmp_path, other, dict(planted.report, model_version=version + "-b"))
    assert load_report(tmp_path)["model_version"] == version + "-b"
    assert (tmp_path / f"{version}.model.json").is_file()


def test_a_damaged_report_is_a_clear_error(planted, tmp_path):
    registry.save(tmp_path, planted.model_file, planted.report)
    path = tmp_path / f"{planted.report['model_version']}.report.json"
    path.write_text("{ not json")
    with pytest.raises(ModelFileError, match="not readable JSON"):
        load_report(tmp_path)
    (tmp_path / "current.json").write_text('{"version": "x", "model": "../../etc/passwd", "report": "r"}')
    with pytest.raises(ModelFileError, match="must be a file name"):
        load_report(tmp_path)


def test_selection_can_be_narrowed_to_the_sgd_model():
    result = _train(signal=0.15, seed=5, hours=1.5, candidates=("sgd",))
    assert result.report["selected_model"] == "sgd" and result.model.kind == "sgd"
    assert result.model.sgd_t is not None and result.model.sgd_t > 1
    assert result.report["notes"] and "learning nothing live" in result.report["notes"][0]
    assert result.model_file["version"].split("-")[1] == "sgd"


def _minutes_of_demo(seconds: int) -> dict:
    """What `make demo` stores: a candle a second for each of the three default symbols."""
    return {s: synthetic_candles(seconds, seed=40 + i) for i, s in enumerate(SYMBOLS)}


def test_one_fold_on_minutes_of_data_fits_instead_of_crashing():
    # 400 s: the labelled rows span less than one 5-horizon time block, so there is one cluster for the
    # robust errors (statsmodels divided by clusters - 1 = 0 here)
    result = fit_and_report(build_dataset(_minutes_of_demo(400), 60), folds=1)
    coefficients = result.report["coefficients"]
    assert coefficients["covariance"].startswith("none: the rows span a single time block")
    assert all(t["p_value"] is None and t["std_err"] is None for t in coefficients["terms"])
    assert "too little test data to tell" in result.report["verdict"]["summary"]
    assert result.model.kind in ("logit", "sgd")


@pytest.mark.parametrize("folds", [1, 5])
def test_too_little_data_says_how_much_is_needed_and_that_much_is_enough(folds):
    with pytest.raises(NotEnoughData) as refused:
        fit_and_report(build_dataset(_minutes_of_demo(300), 60), folds=folds)  # 5 minutes of the demo
    message = str(refused.value)
    assert "\n" not in message and "have 540 labelled rows from about 5 min of 3 symbol(s)" in message
    need = int(re.search(r"need about (\d+) min of candles", message).group(1))
    result = fit_and_report(build_dataset(_minutes_of_demo(need * 60), 60), folds=folds)
    assert len(result.report["folds"]) == folds
