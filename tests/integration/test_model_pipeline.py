"""The trend model for real: `cryptostream train` over the archive and the database, then live scoring
inside the processor on the real broker, with predictions stored in both sinks."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from cryptostream import archive
from cryptostream.models import CANDLE_SCHEMA
from ingest.synthetic import SyntheticMarket
from processor.model import load_report, registry
from processor.model.features import candle_features
from processor.model.scorer import load_live_scorer
from processor.model.synthetic import synthetic_candles
from processor.model.train import train
from processor.service import Processor
from tests.conftest import T0
from tests.integration.helpers import db_count, parquet_rows, read_topic, run_processor_until, sinks_for
from tests.reference import batch_candles

pytestmark = pytest.mark.integration

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
HORIZON = 20
VENUE = "binance"
MARKETS = sorted(f"{VENUE}:{s}" for s in SYMBOLS)  # how training names a market


def _table(symbol: str, candles: dict[str, np.ndarray]) -> pa.Table:
    cols = {k: candles[k] for k in CANDLE_SCHEMA.names[2:] if k != "bucket"}
    cols["bucket"] = pa.array(candles["bucket"], pa.timestamp("ms", tz="UTC"))
    cols["symbol"] = pa.array([symbol] * candles["bucket"].size, pa.string())
    cols["exchange"] = pa.array([VENUE] * candles["bucket"].size, pa.string())
    return pa.table(cols).select(CANDLE_SCHEMA.names).cast(CANDLE_SCHEMA)


def _planted(hours: float = 2.0) -> dict[str, pa.Table]:
    return {
        s: _table(s, synthetic_candles(int(hours * 3600), seed=300 + i, signal=0.2, gap_rate=0.1))
        for i, s in enumerate(SYMBOLS)
    }


def _write_archive(root: Path, tables: dict[str, pa.Table], venue: str = VENUE) -> None:
    """Lay candles out as the processor's Parquet sink does: one file per symbol and UTC day."""
    for symbol, table in tables.items():
        days = np.asarray(table["bucket"].cast(pa.int64()).to_numpy() // 86_400_000)
        for seq, day in enumerate(np.unique(days)):
            rows = table.filter(pa.array(days == day)).drop_columns(["exchange", "symbol"])
            folder = archive.partition_dir(
                root, "ohlc", venue, symbol, archive.utc_day(int(day) * 86_400_000)
            )
            archive.write_file(folder / archive.file_name(0, "feedbeef", seq), rows)


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP")}
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "cryptostream", *args], env=full, capture_output=True, text=True, timeout=120
    )


def test_train_command_reads_the_archive_and_makes_a_versioned_model_current(tmp_path):
    _write_archive(tmp_path / "outputs", _planted())
    env = {"OUTPUT_DIR": str(tmp_path / "outputs"), "MODEL_DIR": str(tmp_path / "models")}
    done = _cli("train", "--horizon", str(HORIZON), "--folds", "3", env=env)
    assert done.returncode == 0, done.stderr
    assert "Beats the baselines" in done.stdout
    assert "trained (3 folds, logit selected)" in done.stderr  # the progress bar's last state
    report = load_report(tmp_path / "models")
    assert report is not None and report["verdict"]["beats_baselines"] is True
    assert report["data"]["source"] == "archive" and report["data"]["symbols"] == MARKETS
    assert report["model_version"] in done.stdout
    model_file = registry.load_model_file(tmp_path / "models")
    assert model_file["version"] == report["model_version"] and model_file["horizon_seconds"] == HORIZON


def test_train_command_explains_what_is_missing(tmp_path):
    env = {"OUTPUT_DIR": str(tmp_path / "empty"), "MODEL_DIR": str(tmp_path / "models")}
    done = _cli("train", env=env)
    assert done.returncode == 2 and "no candles to train on" in done.stderr
    done = _cli("train", "--source", "database", env=env)
    assert done.returncode == 2 and "DATABASE_URL is not set" in done.stderr
    done = _cli("train", "--source", "s3", env=env)
    assert done.returncode == 2 and "'s3' is not one of 'archive', 'database'" in done.stderr
    assert load_report(tmp_path / "models") is None

    env["OUTPUT_DIR"] = str(tmp_path / "outputs")
    _write_archive(tmp_path / "outputs", _planted(hours=0.1))
    done = _cli("train", "--exchanges", "kraken", env=env)
    assert done.returncode == 2, done.stderr
    assert (
        "no stored market matches exchanges kraken: candles are stored for binance (3 symbols)" in done.stderr
    )
    done = _cli("train", "--exchanges", "binance", "--symbols", "DOGEUSDT", env=env)
    assert "matches exchanges binance and symbols DOGEUSDT: candles are stored for binance" in done.stderr

    # the demo's candles beside too few real ones: left out by default, and the refusal says so
    _write_archive(tmp_path / "outputs", _planted(hours=0.1), venue="synthetic")
    done = _cli("train", "--horizon", str(HORIZON), env=env)
    assert done.returncode == 2, done.stderr
    last = done.stderr.splitlines()[-1]
    assert last.startswith("cryptostream: not enough candles for 5 walk-forward fold(s)"), done.stderr
    assert last.endswith(
        "The demo venue's 3 market(s) were left out (generated data is never mixed with real markets): "
        "--exchanges synthetic trains on them alone."
    ), last
    assert load_report(tmp_path / "models") is None


async def _copy_candles(conn: asyncpg.Connection, table: pa.Table) -> None:
    buf = io.BytesIO()
    pacsv.write_csv(table, buf, pacsv.WriteOptions(include_header=False))
    await conn.copy_to_table(
        "ohlc_1s", source=io.BytesIO(buf.getvalue()), columns=table.column_names, format="csv"
    )


async def test_training_from_the_database_gives_the_model_the_archive_gives(tmp_path, db, database_url):
    tables = _planted(hours=1.5)
    _write_archive(tmp_path / "outputs", tables)
    for table in tables.values():
        await _copy_candles(db, table)
    common = {"output_dir": tmp_path / "outputs", "folds": 3, "show_progress": False}
    from_archive = train(tmp_path / "a", HORIZON, source="archive", **common)
    from_db = await asyncio.to_thread(
        train, tmp_path / "b", HORIZON, source="database", database_dsn=database_url, **common
    )
    assert from_db.report["data"]["source"] == "database"
    assert from_db.report["data"]["rows"] == from_archive.report["data"]["rows"]
    assert from_db.report["metrics"] == from_archive.report["metrics"]
    np.testing.assert_array_equal(from_db.model.coef, from_archive.model.coef)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["logit", "sgd"])
async def test_live_predictions_are_stored_in_both_sinks_and_published(
    kind, make_settings, produce, db, tmp_path
):
    # a model trained on an archive of planted-signal candles, horizon 10 s
    _write_archive(tmp_path / "history", _planted(hours=1.0))
    trained = train(
        tmp_path / "models",
        10,
        source="archive",
        output_dir=tmp_path / "history",
        folds=3,
        candidates=(kind,),
        show_progress=False,
    )
    settings = make_settings(
        model_dir=tmp_path / "models",
        prediction_horizon_seconds=10,
        max_buffer_seconds=1.0,
        parquet_chunk_seconds=0.5,
    )
    scorer = load_live_scorer(settings)
    assert scorer is not None and scorer.version == trained.model_file["version"]

    trades = SyntheticMarket(["BTCUSDT", "ETHUSDT"], rate=120, seed=21).generate(14_400, start_ms=T0)
    candles = batch_candles(trades)
    expected = {}
    for symbol in ("BTCUSDT", "ETHUSDT"):
        keys = sorted(b for _, s, b in candles if s == symbol)
        cols = {
            name: np.array([candles[("synthetic", symbol, b)][name] for b in keys])
            for name in CANDLE_SCHEMA.names[3:]
        }
        cols["bucket"] = np.array(keys, dtype=np.int64)
        x = candle_features(cols)
        ok = np.isfinite(x).all(axis=1)
        p = trained.model.predict_proba(x[ok])
        expected.update(
            {("synthetic", symbol, int(b)): float(v) for b, v in zip(cols["bucket"][ok], p, strict=True)}
        )

    async def all_predicted() -> bool:
        return await db_count(settings.database_dsn, "predictions") >= len(expected)

    processor = Processor(settings, sinks_for(settings), scorers=[scorer])

    async def feed() -> None:
        """Trades arrive as they would live, ~10 s of market at a time, once the processor is in its group."""
        await asyncio.wait_for(processor.ready.wait(), 30)
        for lo in range(0, len(trades), 1200):
            await produce(settings, trades[lo : lo + 1200], close=lo + 1200 >= len(trades))
            await asyncio.sleep(0.2)

    feeder = asyncio.create_task(feed())
    await run_processor_until(settings, all_predicted, processor=processor, timeout=90)
    await feeder

    rows = await db.fetch("SELECT * FROM predictions ORDER BY exchange, symbol, bucket")
    stored = {(r["exchange"], r["symbol"], int(r["bucket"].timestamp() * 1000)): r for r in rows}
    assert stored.keys() == expected.keys()
    assert {r["horizon_seconds"] for r in rows} == {10}
    assert all(r["label"] == ("up" if r["probability_up"] > 0.5 else "down") for r in rows)
    # no online learning: every prediction is the model file's, exactly what batch scoring gives
    assert {r["model_version"] for r in rows} == {trained.model_file["version"]}
    for key, row in stored.items():  # (the reference's candles sum volumes in another order: last bits)
        assert row["probability_up"] == pytest.approx(expected[key], rel=1e-9)

    parquet = {
        (r["exchange"], r["symbol"], int(r["bucket"].timestamp() * 1000)): r
        for r in parquet_rows(settings.output_dir, "predictions")
    }
    assert parquet.keys() == stored.keys()
    assert all(parquet[k]["probability_up"] == stored[k]["probability_up"] for k in stored)
    assert all(parquet[k]["model_version"] == stored[k]["model_version"] for k in stored)

    published = await read_topic(settings, settings.kafka_candles_topic, expect=len(expected) * 3)
    kinds = [orjson.loads(m.value).get("type") for m in published]
    assert kinds.count("predictions") == len(expected)
