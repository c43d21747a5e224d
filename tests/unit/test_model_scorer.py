"""Live scoring through the processor's hook equals scoring the same candles in batch."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pytest

from cryptostream.models import PREDICTION_SCHEMA
from cryptostream.settings import load_settings
from processor.model import registry
from processor.model.dataset import build_dataset
from processor.model.errors import ModelFileError
from processor.model.features import LOOKBACK_SECONDS, candle_features
from processor.model.scorer import ModelScorer, load_live_scorer
from processor.model.synthetic import synthetic_candles
from processor.model.train import fit_and_report
from processor.state import Histories, PartitionState, StreamState

HORIZON = 20


@pytest.fixture(scope="module")
def trained():
    """One trained result per kind (logit and sgd)."""
    candles = {f"S{i}": synthetic_candles(2 * 3600, seed=70 + i, signal=0.2, gap_rate=0.1) for i in range(2)}
    ds = build_dataset(candles, HORIZON)
    return {kind: fit_and_report(ds, folds=3, candidates=(kind,)) for kind in ("logit", "sgd")}


def _stream(
    scorer, symbol: str, candles: dict[str, np.ndarray], seed: int, history_s: int = 61, max_chunk: int = 5
) -> pa.Table:
    """Feed candles in random chunks through the processor's own history keeping, as the processor does."""
    part = PartitionState("t", 0, "e", 0, 0, buffer_ms=1000, history_ms=history_s * 1000)
    part.streams[0] = StreamState()
    rng = np.random.default_rng(seed)
    out, lo, n = [], 0, candles["bucket"].size
    while lo < n:
        hi = min(n, lo + int(rng.integers(1, max_chunk + 1)))
        merged = part.remember(0, {k: v[lo:hi] for k, v in candles.items()})
        tables = scorer(Histories.one("binance", symbol, merged, hi - lo))
        if "predictions" in tables:
            out.append(tables["predictions"])
        lo = hi
    return pa.concat_tables(out) if out else PREDICTION_SCHEMA.empty_table()


def test_live_predictions_equal_batch_predictions_for_every_candle_with_lookback(trained):
    result = trained["logit"]
    scorer = ModelScorer(result.model_file)
    candles = synthetic_candles(900, seed=5, signal=0.2, gap_rate=0.2, start_ms=1_800_000_000_000)
    live = _stream(scorer, "BTCUSDT", candles, seed=1)
    assert live.schema == PREDICTION_SCHEMA
    x = candle_features(candles)
    has_lookback = np.isfinite(x).all(axis=1)
    expected_buckets = candles["bucket"][has_lookback]
    assert live["bucket"].cast(pa.int64()).to_numpy().tolist() == expected_buckets.tolist()
    expected = result.model.predict_proba(x[has_lookback])
    np.testing.assert_allclose(live["probability_up"].to_numpy(), expected, rtol=1e-9, atol=1e-12)
    p = live["probability_up"].to_numpy()
    assert live["label"].to_pylist() == ["up" if v > 0.5 else "down" for v in p]
    assert set(live["model_version"].to_pylist()) == {result.model_file["version"]}
    assert set(live["horizon_seconds"].to_pylist()) == {HORIZON}
    assert set(live["symbol"].to_pylist()) == {"BTCUSDT"}


def test_predictions_depend_on_the_candles_alone_not_on_how_they_arrive(trained):
    """No state between calls, no online learning: any chunking of the same candles (a replay, a crash, a
    partition moving) gives the same probabilities, for either kind of model."""
    candles = synthetic_candles(600, seed=9, signal=0.2, gap_rate=0.2, start_ms=1_800_000_000_000)
    for kind in ("logit", "sgd"):
        model_file = trained[kind].model_file
        one = _stream(ModelScorer(model_file), "ETHUSDT", candles, seed=2, max_chunk=1)
        many = _stream(ModelScorer(model_file), "ETHUSDT", candles, seed=3, max_chunk=90)
        assert one.equals(many), kind
        assert set(one["model_version"].to_pylist()) == {model_file["version"]}


def _together(streams: list[tuple[str, str, dict[str, np.ndarray], int]]) -> Histories:
    return Histories(
        [e for e, _, _, _ in streams],
        [s for _, s, _, _ in streams],
        {k: np.concatenate([c[k] for _, _, c, _ in streams]) for k in streams[0][2]},
        np.cumsum([0] + [c["bucket"].size for _, _, c, _ in streams]),
        np.array([n for _, _, _, n in streams]),
    )


def test_markets_scored_together_get_the_predictions_each_gets_alone(trained, caplog):
    """A closing pass scores every market in one call: no market's figures may depend on the others, and a
    market whose history cannot be scored is skipped (named in a warning) without losing the others."""
    rng = np.random.default_rng(11)
    streams = []
    for i in range(12):  # overlapping times: each market's history starts before the previous one's ends
        candles = synthetic_candles(
            int(rng.integers(1, 120)), seed=20 + i, gap_rate=0.3, start_ms=1_800_000_000_000 + i * 7_000
        )
        streams.append(("binance" if i % 2 else "coinbase", f"S{i}USDT", candles, int(rng.integers(1, 40))))
    scorer = ModelScorer(trained["sgd"].model_file)

    def alone(of: list[tuple[str, str, dict[str, np.ndarray], int]]) -> list[pa.Table | None]:
        return [scorer(Histories.one(e, s, c, n)).get("predictions") for e, s, c, n in of]

    expected = pa.concat_tables([t for t in alone(streams) if t is not None])
    assert expected.num_rows > 100
    assert scorer(_together(streams))["predictions"].equals(expected)
    assert "cannot score" not in caplog.text
    bad = {k: v.copy() for k, v in streams[3][2].items()}
    bad["bucket"][-1] = bad["bucket"][0]  # not increasing: unusable
    streams[3] = (*streams[3][:2], bad, streams[3][3])
    each = alone(streams)
    assert each[3] is None
    assert scorer(_together(streams))["predictions"].equals(
        pa.concat_tables([t for t in each if t is not None])
    )
    assert "cannot score binance S3USDT" in caplog.text


def test_the_history_the_processor_keeps_covers_the_lookback_of_every_new_candle(trained):
    """With the processor's history (>= the lookback) every candle with a lookback is scored."""
    result = trained["logit"]
    candles = synthetic_candles(300, seed=4, gap_rate=0.2, start_ms=1_800_000_000_000)
    x = candle_features(candles)
    has_lookback = np.isfinite(x).all(axis=1)
    p = result.model.predict_proba(x[has_lookback])
    batch = dict(zip(candles["bucket"][has_lookback].tolist(), p, strict=True))
    live = _stream(
        ModelScorer(result.model_file),
        "BTCUSDT",
        candles,
        seed=4,
        history_s=LOOKBACK_SECONDS + 1,
        max_chunk=90,
    )
    assert live["bucket"].cast(pa.int64()).to_pylist() == sorted(batch)
    for bucket, q in zip(
        live["bucket"].cast(pa.int64()).to_pylist(), live["probability_up"].to_pylist(), strict=True
    ):
        assert q == pytest.approx(batch[bucket], rel=1e-9)
    assert set(live["exchange"].to_pylist()) == {"binance"}


def test_no_model_means_no_scorer_and_a_foreign_model_is_refused(trained, tmp_path, caplog):
    settings = load_settings(model_dir=tmp_path)
    assert load_live_scorer(settings) is None
    foreign = dict(trained["logit"].model_file, features=["ret_1"])
    with pytest.raises(ModelFileError, match="other features"):
        ModelScorer(foreign)
    registry.save(tmp_path, foreign, trained["logit"].report)
    with caplog.at_level(logging.ERROR):
        assert load_live_scorer(settings) is None
    assert "other features" in caplog.text
    registry.save(tmp_path, trained["logit"].model_file, trained["logit"].report)
    scorer = load_live_scorer(settings)
    assert scorer is not None and scorer.version == trained["logit"].model_file["version"]


def test_a_demo_model_scores_the_demo_venue_only(trained):
    """The demo's model knows nothing about real markets: a Binance dump replayed into the demo's pipeline
    gets no predictions from it, while the demo's own markets, scored in the same pass, get exactly what
    they get alone. A model of real markets scores every venue."""
    rng = np.random.default_rng(5)
    streams = []
    for i, venue in enumerate(["synthetic", "binance", "synthetic", "coinbase", "synthetic"]):
        candles = synthetic_candles(120, seed=40 + i, gap_rate=0.2, start_ms=1_800_000_000_000 + i * 3_000)
        streams.append((venue, f"S{i}USDT", candles, int(rng.integers(20, 60))))
    demo_file = {**trained["logit"].model_file, "version": "demo-20261204T040349Z-logit-test"}
    demo = ModelScorer(demo_file)
    scored = demo(_together(streams))["predictions"]
    assert set(scored["exchange"].to_pylist()) == {"synthetic"}
    alone = [demo(Histories.one(e, s, c, n)).get("predictions") for e, s, c, n in streams if e == "synthetic"]
    assert scored.equals(pa.concat_tables([t for t in alone if t is not None]))
    assert demo(_together([s for s in streams if s[0] != "synthetic"])) == {}
    real = ModelScorer(trained["logit"].model_file)
    assert set(real(_together(streams))["predictions"]["exchange"].to_pylist()) == {
        "synthetic",
        "binance",
        "coinbase",
    }
