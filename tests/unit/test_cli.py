"""The command line as a newcomer meets it: help that reads naturally, a version, and a busy port that is one
line and a non-zero exit before anything starts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from cryptostream import __version__
from cryptostream.cli import _Supervisor, app
from cryptostream.errors import InfraError

COMMANDS = list(get_command(app).commands)  # type: ignore[attr-defined]


def _help(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    return result.output


def test_top_level_help_says_what_it_is_and_lists_up_first() -> None:
    text = _help()
    assert "The ``cryptostream`` command" not in text
    assert "Real-time crypto market data" in text and "cryptostream up" in text
    listed = [line.split()[0] for line in text.split("Commands:", 1)[1].splitlines() if line.strip()]
    assert listed[0] == "up" and sorted(listed) == sorted(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_options_show_a_value_name_or_their_choices_never_a_python_type(command: str) -> None:
    options = _help(command).split("Options:", 1)[1]
    for python_type in ("<bool>", "<str>"):
        assert python_type not in options, options


def test_choices_are_listed() -> None:
    assert "--source <live|synthetic|replay>" in _help("up")
    train = _help("train")
    assert "--source <archive|database>" in train and "--model <auto|logit|sgd>" in train


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"cryptostream {__version__}"


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something listens on, as another program's would."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The command in a child process; its API port is one nothing listens on (not 8000, which the user's own
    `make demo` may hold while the suite runs), unless the test names one."""
    base = {
        k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP", "DATABASE_URL", "METRICS_PORT")
    }
    return subprocess.run(
        [sys.executable, "-m", "cryptostream", *args],
        cwd=tmp_path,
        env={
            **base,
            "STATE_DIR": str(tmp_path / "state"),
            "OUTPUT_DIR": str(tmp_path / "out"),
            "API_PORT": str(_free_port()),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_up_on_a_busy_port_is_one_line_and_a_failure_before_anything_starts(busy_port, tmp_path) -> None:
    done = _run(["up", "--port", str(busy_port)], tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"cryptostream: port {busy_port} (--port / API_PORT) is already in use on 127.0.0.1: stop what "
        "listens there, or choose another port"
    ]
    assert not (tmp_path / "state").exists()  # no broker, no database, no roles were started


def test_up_checks_the_metrics_ports_of_its_roles_too(busy_port, tmp_path) -> None:
    with socket.socket() as sock:  # a free port for the API
        sock.bind(("127.0.0.1", 0))
        api_port = sock.getsockname()[1]
    done = _run(["up", "--port", str(api_port)], tmp_path, METRICS_PORT=str(busy_port))
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        f"cryptostream: port {busy_port} (METRICS_PORT, ingest's /metrics) is already in use on 127.0.0.1: "
        "stop what listens there, or choose another port"
    )


def test_serve_on_a_busy_port_is_one_line(busy_port, tmp_path) -> None:
    done = _run(["serve", "--port", str(busy_port)], tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().startswith(
        f"cryptostream: port {busy_port} (--port / API_PORT) is already in use"
    )
    assert "Traceback" not in done.stderr and "Uvicorn" not in done.stderr


def test_a_role_that_keeps_failing_stops_up_with_an_error_not_a_success(tmp_path) -> None:
    class Crashing(_Supervisor):
        def _spawn(self, role: str) -> None:  # a role that crashes at once (exit code 1)
            self.procs[role] = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(1)"])

    supervisor = Crashing({"train": ["train"]}, dict(os.environ))
    supervisor.MAX_RESTARTS = 1  # one restart (after 2 s) instead of five (after a minute of backoff)
    supervisor.start()
    try:
        with pytest.raises(
            InfraError, match=r"^train failed 2 times \(last exit code 1\): stopping the pipeline"
        ):
            supervisor.watch()
    finally:
        supervisor.stop(["train"])


def test_a_role_that_stops_on_its_one_line_error_stops_up_at_once(tmp_path) -> None:
    """Exit code 2 is a role's own one-line error (a setting it refuses): restarting it only said so again,
    for a minute of backoff (SYMBOLS naming a pair no exchange lists, under `up --source live`)."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    supervisor = _Supervisor({"migrate": ["migrate"]}, {**env, "OUTPUT_DIR": str(tmp_path)})
    supervisor.start()
    started = time.monotonic()
    try:
        with pytest.raises(InfraError, match=r"^migrate stopped on the error above \(exit code 2\)"):
            supervisor.watch()
    finally:
        supervisor.stop(["migrate"])
    assert time.monotonic() - started < 15 and supervisor.restarts["migrate"] == 0


def test_up_refuses_a_replay_without_a_file_and_unusable_folders_before_anything_starts(tmp_path) -> None:
    done = _run(["up", "--source", "replay"], tmp_path)
    assert done.returncode == 2 and done.stderr.splitlines() == [
        "cryptostream: --source replay needs a file: cryptostream up --source replay --path FILE"
    ]
    done = _run(["up", "--source", "replay", "--path", "nowhere.zip"], tmp_path)
    assert done.stderr.splitlines() == ["cryptostream: --path: replay file nowhere.zip does not exist"]
    (tmp_path / "afile").write_text("")
    done = _run(["up"], tmp_path, OUTPUT_DIR=str(tmp_path / "afile"))
    assert done.returncode == 2 and done.stderr.splitlines() == [
        f"cryptostream: OUTPUT_DIR must be a folder this user can write, got {tmp_path / 'afile'} "
        "(File exists)"
    ]
    assert not (tmp_path / "state" / "postgres").exists()  # no database, no broker was started
    done = _run(["migrate"], tmp_path, DATABASE_URL="postgresql://user:secret@localhost:notaport/db")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.splitlines() == [
        "cryptostream: DATABASE_URL is not a URL (Port could not be cast to integer value as 'notaport'): "
        "use postgresql://user:password@host:5432/database, got 'postgresql://user:***@localhost:notaport/db'"
    ]


def test_symbols_all_and_n_are_in_the_help_of_up_and_ingest() -> None:
    for command in ("up", "ingest"):
        text = " ".join(_help(command).split())
        assert "--symbols LIST|all|N" in text
        assert "`all` = every market trading on EXCHANGES" in text and "the first N of them" in text


@pytest.mark.parametrize(
    ("args", "env", "line"),
    [
        (["up", "--symbols", "alll"], {}, "--symbols (SYMBOLS) must be `all`, a count >= 1 or a comma list"),
        (["ingest", "--symbols", "0"], {}, "--symbols (SYMBOLS) must be `all`, a count >= 1 or a comma list"),
        (
            ["up", "--symbols", "all"],
            {"MAX_SYMBOLS": "1000"},
            "--symbols (SYMBOLS) names 1700 symbols, more than MAX_SYMBOLS",
        ),
        (
            ["ingest", "--source", "live", "--symbols", "all"],
            {"EXCHANGES": "binance"},
            "SYMBOLS names 1248 binance markets; binance streams at most 1024 on the one connection",
        ),
        (
            ["up", "--source", "live", "--symbols", "all"],
            {},
            "SYMBOLS names 1248 binance markets; binance streams at most 1024",
        ),
        (
            ["up", "--source", "live", "--symbols", "BTCUSDT,DOTUSX"],
            {},
            "SYMBOLS: DOTUSX is not listed on binance or coinbase; closest: DOTUSD (coinbase)",
        ),
        (
            ["ingest", "--source", "live", "--symbols", "DOTUSX"],
            {"EXCHANGES": "coinbase"},
            "SYMBOLS: DOTUSX is not listed on coinbase; closest: DOTUSD",
        ),
        (
            ["up", "--path", "dump.csv"],
            {},
            "--path is read only with --source replay, not --source synthetic",
        ),
        (
            ["ingest", "--source", "synthetic", "--path", "dump.csv", "--exchange", "binance"],
            {},
            "--path and --exchange are read only with --source replay, not --source synthetic",
        ),
    ],
)
def test_a_selection_that_cannot_run_stops_before_anything_starts(args, env, line, tmp_path) -> None:
    offline = {"BINANCE_REST_URL": "http://127.0.0.1:9", "COINBASE_REST_URL": "http://127.0.0.1:9"}
    done = _run([*args, "--port", str(_free_port())] if args[0] == "up" else args, tmp_path, **offline, **env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[-1].startswith(f"cryptostream: {line}"), done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "state" / "postgres").exists() and "Kafka" not in done.stderr  # nothing started


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["ingest", "--source", "synthetic"], "KAFKA_BOOTSTRAP is not set: point it at a Kafka broker"),
        (["process"], "KAFKA_BOOTSTRAP is not set"),
        (["migrate"], "DATABASE_URL is not set: migrations need a database"),
        (["train", "--source", "database"], "DATABASE_URL is not set: training from the database needs one"),
    ],
)
def test_a_role_without_an_address_names_the_running_up_s(args, line, tmp_path) -> None:
    """Run beside `make demo`, a role did not say where the demo's broker and database are: it names what
    the running `up`'s endpoints.json holds, and says nothing of an `up` that has stopped."""
    stopped = subprocess.Popen([sys.executable, "-c", "pass"])
    stopped.wait()
    endpoints = {
        "kafka_bootstrap": "127.0.0.1:40001",
        "database_url": "postgresql://postgres@127.0.0.1:40002/postgres",
        "api_url": "http://127.0.0.1:8000",
    }
    (tmp_path / "state").mkdir()
    setting = line.split()[0]
    value = endpoints["kafka_bootstrap" if setting == "KAFKA_BOOTSTRAP" else "database_url"]
    for pid, hint in (
        (os.getpid(), f"; the `cryptostream up` running here (pid {os.getpid()}) has "),
        (stopped.pid, ""),
    ):
        (tmp_path / "state" / "endpoints.json").write_text(json.dumps({**endpoints, "pid": pid}))
        done = _run(args, tmp_path)
        assert done.returncode == 2, done.stderr
        last = done.stderr.splitlines()[-1]
        assert last.startswith(f"cryptostream: {line}") and "Traceback" not in done.stderr, done.stderr
        assert last.endswith(f"{hint}{setting}={value}") if hint else "running here" not in last, last


@pytest.mark.parametrize(
    ("args", "doing", "then"),
    [
        (["serve", "--port", "{busy}"], "serving the Parquet archive only", "--port / API_PORT"),
        (["import", "missing"], "importing into the Parquet archive only", "import needs a folder"),
        (["process"], "writing the Parquet archive only", "KAFKA_BOOTSTRAP is not set"),
    ],
)
def test_a_role_that_runs_without_a_database_names_the_running_up_s(args, doing, then, busy_port, tmp_path):
    """`serve`, `import` and `process` run without DATABASE_URL (the archive only): beside a running `up`
    that was surely not meant, so they warn with its database's address, first thing (even when a setting
    then stops them); with no `up` running, a refused setting is the one line said."""
    args = [str(busy_port) if a == "{busy}" else a for a in args]
    stopped = subprocess.Popen([sys.executable, "-c", "pass"])
    stopped.wait()
    url = "postgresql://postgres@127.0.0.1:40002/postgres"
    (tmp_path / "state").mkdir()
    for pid, warned in ((os.getpid(), True), (stopped.pid, False)):
        endpoints = {"kafka_bootstrap": "127.0.0.1:40001", "database_url": url, "pid": pid}
        (tmp_path / "state" / "endpoints.json").write_text(json.dumps(endpoints))
        done = _run(args, tmp_path, LOG_FORMAT="human", LOG_LEVEL="INFO")
        assert done.returncode == 2 and then in done.stderr.splitlines()[-1], done.stderr
        said = [line for line in done.stderr.splitlines() if "DATABASE_URL is not set" in line]
        if not warned:
            assert said == [] and len(done.stderr.splitlines()) == 1, done.stderr
            continue
        assert len(said) == 1 and "WARNING" in said[0] and doing in said[0], done.stderr
        running = f"the `cryptostream up` running here (pid {pid}) has DATABASE_URL={url}"
        assert said[0].endswith(running), said


def test_an_option_or_a_path_that_cannot_work_is_one_line_naming_the_option(tmp_path) -> None:
    """Each was a traceback, a restart loop or a message naming something the user did not type."""
    (tmp_path / "afile").write_text("")
    cases = [
        (["replay", str(tmp_path)], [], f"{tmp_path} is a folder: name a replay file in it"),
        (["replay", "dump.csv", "--speed", "-1"], [], "--speed (REPLAY_SPEED) must be >= 0, got -1.0"),
        (["up", "--rate", "inf"], [], "--rate must be a number of trades per second, got inf"),
        (
            ["up", "--record", str(tmp_path)],
            [],
            f"--record must name a file this user can write, got {tmp_path} (Is a directory)",
        ),
        (
            ["ingest", "--source", "synthetic", "--record", str(tmp_path)],
            [],
            f"--record must name a file this user can write, got {tmp_path} (Is a directory)",
        ),
        (["train", "--horizon", "0"], [], "--horizon (PREDICTION_HORIZON_SECONDS) must be >= 1, got 0"),
        (
            ["train"],
            [("MODEL_DIR", str(tmp_path / "afile"))],
            f"MODEL_DIR must be a folder this user can write, got {tmp_path / 'afile'} (File exists)",
        ),
        (
            ["import", str(tmp_path)],
            [("OUTPUT_DIR", str(tmp_path / "afile" / "out"))],
            f"OUTPUT_DIR must be a folder this user can write, got {tmp_path / 'afile' / 'out'} "
            "(Not a directory)",
        ),
        (
            ["migrate", "0009"],
            [("DATABASE_URL", "postgresql://u:pw@127.0.0.1:9/db")],  # said before waiting for it
            "REVISION must be head, base or one of 0001, 0002, 0003, 0004, 0005, got '0009'",
        ),
    ]
    for args, env, line in cases:
        done = _run(args, tmp_path, **dict(env))
        assert (done.returncode, done.stderr.splitlines()) == (2, [f"cryptostream: {line}"]), (
            args,
            done.stderr,
        )
    assert not (tmp_path / "state").exists()  # `up` started nothing


def test_up_refuses_an_api_port_its_roles_metrics_would_take(tmp_path) -> None:
    """Each port was free when checked; ingest's /metrics took the API's, `up` said "pipeline up" on it,
    and the API's bind failure was blamed on the user."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for metrics in (port, port - 1):
        done = _run(["up", "--port", str(port)], tmp_path, METRICS_PORT=str(metrics))
        assert done.returncode == 2 and done.stderr.splitlines() == [
            f"cryptostream: API_PORT (--port) {port} must differ from METRICS_PORT {metrics} and the "
            f"processor's METRICS_PORT + 1 ({metrics + 1})"
        ], done.stderr
    done = _run(["serve", "--port", str(port)], tmp_path, METRICS_PORT=str(port), API_PRODUCTION="true")
    assert done.returncode == 2 and done.stderr.splitlines() == [
        "cryptostream: METRICS_PORT must differ from API_PORT (--port) with API_PRODUCTION on (/metrics is "
        f"served apart from the API), both are {port}"
    ], done.stderr
    done = _run(["serve", "--host", "192.0.2.1", "--port", str(port)], tmp_path)  # TEST-NET: not this machine
    assert done.returncode == 2 and done.stderr.startswith(
        f"cryptostream: cannot listen on 192.0.2.1:{port} (--host / API_HOST, --port / API_PORT): "
    ), done.stderr
