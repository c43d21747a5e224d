"""Settings: the original README's names and defaults, and one-line errors that name the variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cryptostream.errors import SettingsError
from cryptostream.markets import EXCHANGES, Catalog, Market, snapshot, whole_market
from cryptostream.settings import Settings, load_settings, mask_url


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


def test_a_database_url_asyncpg_cannot_parse_is_one_line_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """It was a 150-line traceback from asyncpg at the first connection."""
    for url, why in (
        ("postgresql://u:s3cret@db:notaport/x", "Port could not be cast to integer value as 'notaport'"),
        ("postgresql://[::1/x", "Invalid IPv6 URL"),
    ):
        monkeypatch.setenv("DATABASE_URL", url)
        with pytest.raises(SettingsError) as info:
            load_settings(_env_file=None)
        assert f"DATABASE_URL is not a URL ({why})" in str(info.value) and "s3cret" not in str(info.value)
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:se@cr:et@db/x")  # odd, but asyncpg takes it
    assert load_settings(_env_file=None).database_dsn == "postgresql://u:se@cr:et@db/x"


def test_log_level_in_any_case_and_a_dotenv_that_is_not_utf8(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LOG_LEVEL", "debug")
    assert load_settings(_env_file=None).log_level == "DEBUG"
    dotenv = tmp_path / ".env"
    dotenv.write_text("SYMBOLS=BTCUSDT\n", encoding="utf-16")  # Notepad's "Unicode"
    with pytest.raises(SettingsError, match=r"^.*/\.env is not UTF-8 text \(.*\): save it as UTF-8$"):
        load_settings(_env_file=dotenv)


def test_a_dotenv_line_that_is_no_setting_stops_start_up_naming_its_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """python-dotenv skips such a line with a warning: the setting on it silently kept its default."""
    monkeypatch.delenv("KAFKA_PARTITIONS", raising=False)
    dotenv = tmp_path / ".env"
    dotenv.write_text("# mine\nSYMBOLS=BTCUSDT\nKAFKA_PARTITIONS 8\nexport LOG_LEVEL=debug\n")
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=dotenv)
    assert str(info.value) == (
        f"{dotenv} line 3 is not NAME=value: 'KAFKA_PARTITIONS 8' (quote a value with spaces, # or quotes "
        "in it; start a comment with #)"
    )
    dotenv.write_text(
        '# mine\nSYMBOLS="BTCUSDT, ETHUSDT" # two\nKAFKA_PARTITIONS=8\nexport LOG_LEVEL=debug\n'
    )
    settings = load_settings(_env_file=dotenv)
    assert (settings.symbols, settings.kafka_partitions) == (["BTCUSDT", "ETHUSDT"], 8)
    folder = tmp_path / "dotenv-folder"
    folder.mkdir()
    with pytest.raises(SettingsError, match=r"dotenv-folder cannot be read \(Is a directory\)"):
        load_settings(_env_file=folder)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"KAFKA_DLQ_TOPIC": "crypto-trades"},
            "KAFKA_DLQ_TOPIC must differ from KAFKA_TOPIC (each topic holds one kind of record), both are "
            "'crypto-trades'",
        ),
        (
            {"KAFKA_CANDLES_TOPIC": "t", "KAFKA_TOPIC": "t"},
            "KAFKA_CANDLES_TOPIC must differ from KAFKA_TOPIC",
        ),
        (
            {"KAFKA_CANDLES_TOPIC": "d", "KAFKA_DLQ_TOPIC": "d"},
            "KAFKA_DLQ_TOPIC must differ from KAFKA_CANDLES",
        ),
        ({"KAFKA_BOOTSTRAP": "kafka://broker:9092"}, "KAFKA_BOOTSTRAP must be a comma list of host:port"),
        ({"KAFKA_BOOTSTRAP": "broker:99999"}, "KAFKA_BOOTSTRAP must be a comma list of host:port"),
        ({"KAFKA_BOOTSTRAP": "a:9092,b:0"}, "KAFKA_BOOTSTRAP must be a comma list of host:port (e.g. "),
        ({"KAFKA_BOOTSTRAP": "broker:9092/x"}, "KAFKA_BOOTSTRAP must be a comma list of host:port"),
        ({"KAFKA_BOOTSTRAP": " , "}, "KAFKA_BOOTSTRAP must be a comma list of host:port"),
        ({"API_HOST": "[::1]"}, "API_HOST takes an IPv6 address without brackets, got '[::1]' (write ::1)"),
        ({"REPLAY_SPEED": "inf"}, "REPLAY_SPEED must be a finite number"),
        ({"API_HOST": "http://0.0.0.0"}, "API_HOST must be a host name or an IP address"),
        (
            {"METRICS_HOST": "caf\udcff"},
            "METRICS_HOST must be a host name or an IP address",
        ),  # bytes not UTF-8
        ({"MAX_BUFFER_SECONDS": "nan"}, "MAX_BUFFER_SECONDS must be a finite number"),
        (
            {"DATABASE_URL": "postgresql://u:pw@h1:5432,h2:5432/x"},
            "DATABASE_URL must name one host (a list of hosts is not supported: name the primary, or a "
            "proxy in front of them), got 'postgresql://u:***@h1:5432,h2:5432/x'",
        ),
        ({"DATABASE_URL": "postgresql://u:pw@h1,h2/x"}, "DATABASE_URL must name one host"),
    ],
)
def test_settings_that_contradict_each_other_or_no_client_takes_are_one_line(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    """A dead-letter topic that is the trades topic fed rejected trades back in without end; a bootstrap
    with a scheme was retried for a minute; a list of database hosts crashed the migrations."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=None)
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value) and "pw" not in str(info.value)


def test_settings_take_what_a_user_writes_as_a_shell_would(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP", " broker-1:9092, [::1]:29092,broker-2, ")  # a stray comma too
    monkeypatch.setenv("EXCHANGES", "binance,coinbase,Binance")
    monkeypatch.setenv("OUTPUT_DIR", "~/cryptostream/out")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:a,b@db:5432/x")  # a comma in the password only
    settings = load_settings(_env_file=None)
    assert settings.kafka_bootstrap == "broker-1:9092,[::1]:29092,broker-2"
    assert settings.exchanges == ["binance", "coinbase"]  # one feed each: trades were published twice
    assert settings.output_dir == Path.home() / "cryptostream" / "out"
    assert settings.database_dsn == "postgresql://u:a,b@db:5432/x"


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


# --------------------------------------------------------------------------- SYMBOLS=all, SYMBOLS=N
@pytest.fixture
def market_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No cached market list (the shipped snapshots count), the default EXCHANGES and MAX_SYMBOLS."""
    for name in ("SYMBOLS", "EXCHANGES", "MAX_SYMBOLS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def test_symbols_all_is_every_market_trading_on_the_exchanges_in_a_fixed_order(
    market_env, monkeypatch
) -> None:
    monkeypatch.setenv("SYMBOLS", "all")
    settings = load_settings(_env_file=None)
    trading = {m.symbol for name in EXCHANGES for m in snapshot(name) if m.trading}
    assert settings.symbols == whole_market(snapshot(name) for name in EXCHANGES)
    assert set(settings.symbols) == trading and len(settings.symbols) == len(trading) > 1500
    assert settings.symbols[:4] == ["BTCUSD", "ETHUSD", "USDTUSD", "SOLUSD"]  # USD, the biggest quote, first
    assert settings.symbols_selection == "all"
    assert load_settings(_env_file=None).symbols == settings.symbols  # stable from run to run


def test_symbols_n_is_the_first_n_of_all(market_env, monkeypatch) -> None:
    every = load_settings(symbols="ALL", _env_file=None).symbols
    monkeypatch.setenv("SYMBOLS", "500")
    assert load_settings(_env_file=None).symbols == every[:500]
    assert load_settings(symbols="3", _env_file=None).symbols == ["BTCUSD", "ETHUSD", "USDTUSD"]
    assert load_settings(symbols="1000000", max_symbols=100_000, _env_file=None).symbols == every
    assert load_settings(symbols="BTCUSDT,ETHUSDT", _env_file=None).symbols_selection is None


def test_symbols_all_counts_the_configured_exchanges_and_the_demo_alone_imitates_both(market_env) -> None:
    coinbase = load_settings(symbols="all", exchanges="coinbase", _env_file=None).symbols
    assert coinbase == whole_market([snapshot("coinbase")]) and "DOTUSD" in coinbase
    assert "BTCTRY" not in coinbase  # a Binance-only market
    both = load_settings(symbols="all", _env_file=None).symbols
    assert load_settings(symbols="all", exchanges="synthetic", _env_file=None).symbols == both
    assert load_settings(symbols="all", exchanges="synthetic,coinbase", _env_file=None).symbols == coinbase


def test_symbols_all_reads_the_cached_market_list_before_the_snapshot(market_env) -> None:
    markets = [
        Market("coinbase", "ABCUSD", "ABC", "USD", "ABC-USD", "trading"),
        Market("coinbase", "XYZUSD", "XYZ", "USD", "XYZ-USD", "delisted"),
        Market("coinbase", "ABCEUR", "ABC", "EUR", "ABC-EUR", "trading"),
        Market("coinbase", "DEFUSD", "DEF", "USD", "DEF-USD", "trading"),
    ]
    (market_env / "markets").mkdir(parents=True)
    catalog = Catalog("coinbase", markets, "a test", "2026-01-01T00:00:00Z")
    (market_env / "markets" / "coinbase.json.gz").write_bytes(catalog.to_bytes())
    assert load_settings(symbols="all", exchanges="coinbase", _env_file=None).symbols == [
        "ABCUSD",  # USD: the quote of the most markets; ABC: the coin in the most markets
        "DEFUSD",
        "ABCEUR",
    ]


@pytest.mark.parametrize("value", ["0", "-1", "alll", "al", "BTCUSDT,all", "all,500", "BTCUSDT,5"])
def test_a_bad_symbols_selection_is_one_line_naming_symbols(market_env, monkeypatch, value) -> None:
    monkeypatch.setenv("SYMBOLS", value)
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=None)
    text = str(info.value)
    assert text.startswith("SYMBOLS must be `all`, a count >= 1 or a comma list of symbols"), text
    assert repr(value) in text and "\n" not in text


def test_more_symbols_than_max_symbols_stops_start_up_in_one_line(market_env, monkeypatch) -> None:
    assert Settings.model_fields["max_symbols"].default >= 5000 > len(load_settings(symbols="all").symbols)
    monkeypatch.setenv("MAX_SYMBOLS", "100")
    for value, count in (("all", len(load_settings(symbols="all", max_symbols=5000).symbols)), ("101", 101)):
        monkeypatch.setenv("SYMBOLS", value)
        with pytest.raises(SettingsError) as info:
            load_settings(_env_file=None)
        assert str(info.value) == (
            f"SYMBOLS names {count} symbols, more than MAX_SYMBOLS (100): name fewer, or raise MAX_SYMBOLS"
        )
    monkeypatch.setenv("SYMBOLS", ",".join(f"S{i:03d}USD" for i in range(101)))  # a plain list counts too
    with pytest.raises(SettingsError, match="^SYMBOLS names 101 symbols, more than MAX_SYMBOLS"):
        load_settings(_env_file=None)
    monkeypatch.setenv("SYMBOLS", "100")
    assert len(load_settings(_env_file=None).symbols) == 100
    monkeypatch.setenv("MAX_SYMBOLS", "0")
    with pytest.raises(SettingsError, match="^MAX_SYMBOLS must be >= 1, got '0'"):
        load_settings(_env_file=None)
