"""Walk-forward evaluation: every prediction comes from a model trained strictly on the past."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.model.dataset import build_dataset
from processor.model.errors import NotEnoughData
from processor.model.estimators import fit_logit
from processor.model.features import FEATURES
from processor.model.synthetic import synthetic_candles
from processor.model.walkforward import FORECASTERS, evaluate, splits


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 50_000), min_size=1, max_size=400),
    st.integers(1, 600),
    st.integers(1, 8),
)
def test_training_rows_are_settled_before_their_test_block_begins(seconds, horizon, folds):
    time = np.sort(1_700_000_000_000 + 1000 * np.asarray(seconds, dtype=np.int64))
    fold_list = splits(time, horizon, folds)
    assert len(fold_list) == folds
    previous_end = None
    for fold in fold_list:
        if fold.train.size:
            # the label of the last training row (close at t + horizon) is settled before the test starts
            assert time[fold.train].max() + horizon * 1000 < fold.test_start
            assert fold.train.max() < fold.test.min(initial=fold.train.max() + 1)
        assert ((time[fold.test] >= fold.test_start) & (time[fold.test] < fold.test_end)).all()
        if previous_end is not None:
            assert fold.test_start == previous_end  # test blocks tile the time after the first block
        previous_end = fold.test_end
    assert fold_list[-1].test_end == time[-1] + 1
    tested = np.concatenate([f.test for f in fold_list])
    assert np.unique(tested).size == tested.size  # no row tested twice


def _data(**changes):
    candles = {f"S{i}": synthetic_candles(3 * 3600, seed=40 + i, signal=0.2, gap_rate=0.1) for i in range(2)}
    for symbol, (start_ms, seed) in changes.items():
        other = synthetic_candles(3 * 3600, seed=seed, signal=-0.5, price=80.0, gap_rate=0.1)
        c = candles[symbol]
        later = c["bucket"] >= start_ms
        # the future is rewritten (same seconds, other prices and order flow); the past is untouched
        for name in c:
            if name != "bucket":
                c[name] = np.where(later, np.resize(other[name], c[name].shape), c[name])
    return candles


def test_predictions_of_a_fold_ignore_everything_after_its_test_block():
    horizon = 20
    ds = build_dataset(_data(), horizon)
    results = evaluate(ds, folds=4)
    cut = results[-1].fold.test_start  # rewrite the last test block of one symbol
    changed = build_dataset(_data(S1=(cut, 99)), horizon)
    assert not np.array_equal(changed.y, ds.y)  # the rewrite did change labels
    again = evaluate(changed, folds=4)
    for before, after in zip(results[:-1], again[:-1], strict=True):
        assert before.fold.test_start == after.fold.test_start
        for name in FORECASTERS:
            np.testing.assert_array_equal(before.predictions[name][0], after.predictions[name][0])
    assert not np.array_equal(results[-1].predictions["logit"][0], again[-1].predictions["logit"][0])


def test_a_fold_s_logit_is_the_fit_on_its_settled_training_rows_only():
    ds = build_dataset(_data(), 30)
    first = evaluate(ds, folds=3)[0]
    train = ds.time + 30_000 < first.fold.test_start
    model, _ = fit_logit(ds.x[train], ds.y[train], FEATURES)
    np.testing.assert_array_equal(first.predictions["logit"][0], model.predict_proba(ds.x[first.fold.test]))
    assert train.sum() == first.fold.train.size


def test_too_little_data_is_refused_with_how_much_there_is_and_is_needed():
    candles = {"S0": synthetic_candles(200, seed=1)}
    with pytest.raises(NotEnoughData, match=r"fold 1 would train on \d+ rows .* need about \d+ min"):
        evaluate(build_dataset(candles, 10), folds=5)
    with pytest.raises(NotEnoughData, match="give no labelled row"):
        evaluate(build_dataset({"S0": synthetic_candles(50, seed=1)}, 60))
