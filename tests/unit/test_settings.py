"""Settings: the original README's names and defaults, and one-line errors that name the variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cryptostream.errors import SettingsError
from cryptostream.settings import load_settings, mask_url


def test_the_original_readme_knobs_keep_their_names_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "KAFKA_TOPIC",
        "KAFKA_PARTITIONS",
        "MAX_POLL_RECORDS",
        "CONSUMER_GROUP",
        "MAX_BUFFER_SECONDS",
        "PARQUET_CHUNK_SECONDS",
        "BATCH_SIZE",
        "REPLAY_SPEED",
        "OUTPUT_DIR",
        "SYMBOLS",
    ):
        monkeypatch.delenv(name, raising=False)
    s = load_settings(_env_file=None)
    assert s.kafka_topic == "crypto-trades"
    assert s.kafka_partitions == 4
    assert s.max_poll_records == 500
    assert s.consumer_group == "crypto-consumer-group"
    assert s.max_buffer_seconds == 5
    assert s.parquet_chunk_seconds == 10
    assert s.batch_size == 1
    assert s.replay_speed == 1
    assert s.output_dir == Path("data/outputs")


def test_settings_come_from_the_environment_and_symbols_are_normalized(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SYMBOLS", "btc-usd, ETHUSDT,BTC/USD")
    monkeypatch.setenv("KAFKA_PARTITIONS", "8")
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://u:secret@db:5432/x")
    s = load_settings(_env_file=None)
    assert s.symbols == ["BTCUSD", "ETHUSDT"]
    assert s.kafka_partitions == 8
    assert s.database_dsn == "postgresql://u:secret@db:5432/x"
    assert "secret" not in s.describe_database() and "secret" not in repr(s)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KAFKA_PARTITIONS": "0"}, "KAFKA_PARTITIONS must be >= 1, got '0'"),
        ({"MAX_POLL_RECORDS": "lots"}, "MAX_POLL_RECORDS must be a valid integer"),
        ({"SYMBOLS": "BTCUSDT,$$$"}, "SYMBOLS unsupported symbol '$$$'"),
        (
            {"DATABASE_URL": "mysql://root:pw@x/db"},
            "DATABASE_URL must start with postgresql:// (postgresql://user:password@host:5432/database), "
            "got 'mysql://root:***@x/db'",
        ),
        ({"DATABASE_URL": "garbage"}, "DATABASE_URL must start with postgresql://"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT must be 'human' or 'json'"),
        ({"KAFKA_TOPIC": "bad topic!"}, "KAFKA_TOPIC must use only letters"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch, env, message) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=None)
    text = str(info.value)
    assert text.startswith(message), text
    assert "\n" not in text and "pw" not in text


def test_the_command_fails_at_start_up_with_that_one_line_and_exit_code_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cryptostream", "process"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "KAFKA_PARTITIONS": "0"},
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "cryptostream: KAFKA_PARTITIONS must be >= 1, got '0'"


def test_a_bad_database_url_is_shown_with_only_its_password_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "garbage")
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=None)
    assert str(info.value).endswith("got 'garbage'") and "***" not in str(info.value)
    monkeypatch.setenv("DATABASE_URL", "postgres:s3cret@db:5432/x")  # the // forgotten
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=None)
    assert "got 'postgres:***@db:5432/x'" in str(info.value) and "s3cret" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:secret@db:5432/x", "postgresql://u:***@db:5432/x"),
        ("postgresql://u:se@cr:et@db/x", "postgresql://u:***@db/x"),  # an unencoded @ in the password
        (
            "postgresql://db/x?user=u&password=secret&sslmode=off",
            "postgresql://db/x?user=u&password=***&sslmode=off",
        ),
        ("postgresql://postgres@127.0.0.1:5/postgres", "postgresql://postgres@127.0.0.1:5/postgres"),
    ],
)
def test_urls_in_messages_and_logs_hide_only_the_password(url: str, shown: str) -> None:
    assert mask_url(url) == shown
    assert load_settings(database_url=url or None, _env_file=None).describe_database() == shown
