"""The demo's model: trained on generated history, labelled as such, and servable."""

from __future__ import annotations

from pathlib import Path

from ingest.synthetic import SyntheticMarket
from processor.model import registry
from processor.model.demo import DEMO_NOTE, train_demo_model
from processor.model.scorer import ModelScorer


def test_the_demo_model_is_trained_on_generated_history_and_says_so(tmp_path: Path) -> None:
    symbols = ["BTCUSDT", "ETHUSDT"]
    trades = SyntheticMarket(symbols, rate=40, seed=3).generate(40 * 1800, 1_700_000_000_000)
    result = train_demo_model(trades, tmp_path, 60, seed=3)

    report = registry.load_report(tmp_path)
    model_file = registry.load_model_file(tmp_path)
    assert report is not None and model_file is not None
    assert report["model_version"] == model_file["version"] == result.model_file["version"]
    assert report["data"]["generated"] is True and report["data"]["source"] == "generated"
    assert report["data"]["symbols"] == ["synthetic:BTCUSDT", "synthetic:ETHUSDT"]
    span = (max(t.timestamp for t in trades) - min(t.timestamp for t in trades)) // 1000
    assert report["data"]["generated_seconds"] == span > 600
    assert report["notes"][0] == DEMO_NOTE and len(report["folds"]) == 3
    # what the processor will serve: 60 s ahead, as PREDICTION_HORIZON_SECONDS asked
    scorer = ModelScorer(model_file)
    assert scorer.horizon_s == 60 and scorer.version == model_file["version"]
