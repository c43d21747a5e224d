"""Kafka TLS/SASL: the settings refuse what cannot work, in one line; :func:`security_options` turns them into
aiokafka's arguments (real ``ssl.SSLContext`` objects, proven by an in-memory TLS handshake); and every Kafka
client constructed anywhere in the code base is given those arguments."""

from __future__ import annotations

import ast
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cryptostream.errors import SettingsError
from cryptostream.kafka import security_options
from cryptostream.settings import Settings, load_settings
from tests.certs import Certs, make_certs

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "hunter2-s3cret"
SASL = {"kafka_sasl_username": "api-key", "kafka_sasl_password": PASSWORD}
CHILD_ENV = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}  # this checkout's code, whichever is installed


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def settings(**values: Any) -> Settings:
    return load_settings(_env_file=None, **values)


def one_line_error(**values: Any) -> str:
    with pytest.raises(SettingsError) as info:
        settings(**values)
    text = str(info.value)
    assert "\n" not in text and PASSWORD not in text
    return text


# ---------------------------------------------------------------------------------------------- settings
def test_by_default_kafka_is_plaintext_and_the_clients_get_nothing_else() -> None:
    s = settings()
    assert s.kafka_security_protocol == "PLAINTEXT"
    assert security_options(s) == {"security_protocol": "PLAINTEXT"}


def test_names_are_read_from_the_environment_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "sasl_ssl")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "scram-sha-512")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "api-key")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", PASSWORD)
    monkeypatch.setenv("KAFKA_SSL_CAFILE", "")  # an empty variable (compose, .env templates) is unset
    s = settings()
    assert (s.kafka_security_protocol, s.kafka_sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    assert s.kafka_ssl_cafile is None


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"kafka_security_protocol": "TLS"}, "KAFKA_SECURITY_PROTOCOL must be 'PLAINTEXT', 'SSL', "),
        (
            {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "GSSAPI", **SASL},
            "KAFKA_SASL_MECHANISM must be 'PLAIN', 'SCRAM-SHA-256' or 'SCRAM-SHA-512', got 'GSSAPI'",
        ),
        (
            {"kafka_security_protocol": "SASL_SSL"},
            "KAFKA_SASL_USERNAME must be set with KAFKA_SECURITY_PROTOCOL=SASL_SSL",
        ),
        (
            {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_username": "u"},
            "KAFKA_SASL_PASSWORD must be set with KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT",
        ),
        (
            {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_username": "u", "kafka_sasl_password": ""},
            "KAFKA_SASL_PASSWORD must be set with KAFKA_SECURITY_PROTOCOL=SASL_SSL",
        ),
        (
            {"kafka_sasl_mechanism": "SCRAM-SHA-256"},
            "KAFKA_SASL_MECHANISM needs KAFKA_SECURITY_PROTOCOL=SASL_SSL or SASL_PLAINTEXT, got PLAINTEXT",
        ),
        (
            {"kafka_security_protocol": "SSL", **SASL},
            "KAFKA_SASL_USERNAME needs KAFKA_SECURITY_PROTOCOL=SASL_SSL or SASL_PLAINTEXT, got SSL",
        ),
        (
            {"kafka_sasl_password": PASSWORD},
            "KAFKA_SASL_PASSWORD needs KAFKA_SECURITY_PROTOCOL=SASL_SSL or SASL_PLAINTEXT, got PLAINTEXT",
        ),
    ],
)
def test_a_combination_that_cannot_work_is_one_line_naming_the_setting(values, message) -> None:
    assert one_line_error(**values).startswith(message)


def test_tls_files_must_exist_belong_to_a_tls_protocol_and_come_in_pairs(
    certs: Certs, tmp_path: Path
) -> None:
    missing = tmp_path / "nope.pem"
    assert one_line_error(kafka_security_protocol="SSL", kafka_ssl_cafile=missing) == (
        f"KAFKA_SSL_CAFILE must name an existing PEM file, got '{missing}'"
    )
    assert one_line_error(kafka_ssl_cafile=certs.ca) == (
        "KAFKA_SSL_CAFILE needs KAFKA_SECURITY_PROTOCOL=SSL or SASL_SSL, got PLAINTEXT"
    )
    assert one_line_error(kafka_security_protocol="SASL_PLAINTEXT", kafka_ssl_cafile=certs.ca, **SASL) == (
        "KAFKA_SSL_CAFILE needs KAFKA_SECURITY_PROTOCOL=SSL or SASL_SSL, got SASL_PLAINTEXT"
    )
    assert one_line_error(kafka_security_protocol="SSL", kafka_ssl_certfile=certs.client_cert) == (
        "KAFKA_SSL_KEYFILE must be set with KAFKA_SSL_CERTFILE (mutual TLS needs both)"
    )
    assert one_line_error(kafka_security_protocol="SSL", kafka_ssl_keyfile=certs.client_key) == (
        "KAFKA_SSL_CERTFILE must be set with KAFKA_SSL_KEYFILE (mutual TLS needs both)"
    )


def test_the_password_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(kafka_security_protocol="SASL_SSL", **SASL)
    for shown in (repr(s), str(s), s.model_dump_json(), str(s.model_dump())):
        assert PASSWORD not in shown
    assert "**********" in repr(s)
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", PASSWORD)  # a wrong combination echoes nothing of it either
    assert one_line_error().startswith("KAFKA_SASL_PASSWORD needs KAFKA_SECURITY_PROTOCOL")


def test_a_command_fails_at_start_up_with_that_one_line_and_exit_code_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cryptostream", "process"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={
            **CHILD_ENV,
            "KAFKA_BOOTSTRAP": "127.0.0.1:1",
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_PASSWORD": PASSWORD,
        },
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "cryptostream: KAFKA_SASL_USERNAME must be set with KAFKA_SECURITY_PROTOCOL=SASL_SSL"
    )
    assert PASSWORD not in result.stdout + result.stderr


def test_up_refuses_a_secured_protocol_for_the_plaintext_broker_it_would_start(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cryptostream", "up"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**CHILD_ENV, "KAFKA_SECURITY_PROTOCOL": "SSL"},
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith(
        "cryptostream: KAFKA_SECURITY_PROTOCOL=SSL needs KAFKA_BOOTSTRAP: the broker `up` starts itself is "
        "plaintext"
    )
    assert not (tmp_path / ".cryptostream").exists(), "nothing may start before the settings are checked"


# ---------------------------------------------------------------------------------------------- mapping
def _handshake(client: ssl.SSLContext, server: ssl.SSLContext, hostname: str = "localhost") -> dict | None:
    """A complete TLS handshake between two contexts over memory buffers; the client certificate the server
    saw (None if it asked for none)."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname=hostname)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(20):
        for name, side in (("c", c), ("s", s)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return s.getpeercert()
    raise AssertionError("the handshake did not finish")


def _server(certs: Certs, *, require_client_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=certs.ca)
    ctx.load_cert_chain(certs.server_cert, certs.server_key)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    return ctx


def test_sasl_ssl_maps_to_aiokafka_arguments_with_a_verifying_ssl_context(certs: Certs) -> None:
    s = settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_ssl_cafile=certs.ca,
        **SASL,
    )
    options = security_options(s)
    context = options.pop("ssl_context")
    assert options == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "api-key",
        "sasl_plain_password": PASSWORD,
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [dict(x[0] for x in c["subject"]) for c in context.get_ca_certs()] == [{"commonName": "test-ca"}]
    assert _handshake(context, _server(certs, require_client_cert=False)) is None  # the broker is trusted
    with pytest.raises(ssl.SSLCertVerificationError, match="match"):
        _handshake(context, _server(certs, require_client_cert=False), hostname="kafka.example.com")


def test_the_mechanism_defaults_to_plain_and_sasl_plaintext_has_no_ssl_context() -> None:
    options = security_options(settings(kafka_security_protocol="SASL_PLAINTEXT", **SASL))
    assert options == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "api-key",
        "sasl_plain_password": PASSWORD,
    }


def test_without_a_ca_file_the_systems_trusted_cas_are_used(certs: Certs) -> None:
    context = security_options(settings(kafka_security_protocol="SSL"))["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    with pytest.raises(ssl.SSLCertVerificationError):  # our private test CA is not among them
        _handshake(context, _server(certs, require_client_cert=False))


def test_mutual_tls_presents_the_client_certificate(certs: Certs) -> None:
    s = settings(
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=certs.ca,
        kafka_ssl_certfile=certs.client_cert,
        kafka_ssl_keyfile=certs.client_key,
    )
    options = security_options(s)
    assert set(options) == {"security_protocol", "ssl_context"}
    peer = _handshake(options["ssl_context"], _server(certs, require_client_cert=True))
    assert peer is not None and dict(x[0] for x in peer["subject"]) == {"commonName": "client"}


def test_files_that_do_not_load_name_the_setting_at_fault(certs: Certs, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(SettingsError, match=r"^KAFKA_SSL_CAFILE could not be loaded: "):
        security_options(settings(kafka_security_protocol="SSL", kafka_ssl_cafile=garbage))
    mismatched = settings(
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=certs.ca,
        kafka_ssl_certfile=certs.client_cert,
        kafka_ssl_keyfile=certs.server_key,  # another certificate's key
    )
    with pytest.raises(SettingsError, match=r"^KAFKA_SSL_CERTFILE / KAFKA_SSL_KEYFILE could not be loaded: "):
        security_options(mismatched)


# ------------------------------------------------------------------------------ every client gets them
CLIENT_CLASSES = {"AIOKafkaConsumer", "AIOKafkaProducer", "AIOKafkaAdminClient"}
PACKAGES = ("cryptostream", "ingest", "processor", "graphql_api", "bench")


def _calls_security_options(node: ast.AST) -> bool:
    return any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "security_options"
        for n in ast.walk(node)
    )


def _unsecured_clients(source: str, filename: str) -> tuple[int, list[str]]:
    """(Kafka client constructions found, those not given ``**security_options(...)``): directly, or through a
    name the enclosing function assigned from an expression that calls it (``options = {..., **security_
    options(settings)}``)."""
    tree = ast.parse(source, filename)
    aliases = set(CLIENT_CLASSES)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("aiokafka"):
            aliases |= {a.asname for a in node.names if a.name in CLIENT_CLASSES and a.asname}
    found, bad = 0, []

    def visit(scope: ast.AST, secured_names: set[str]) -> None:
        nonlocal found
        for node in ast.iter_child_nodes(scope):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                names = {
                    t.id
                    for n in ast.walk(node)
                    if isinstance(n, (ast.Assign, ast.AnnAssign))
                    and n.value
                    and _calls_security_options(n.value)
                    for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
                    if isinstance(t, ast.Name)
                }
                visit(node, names)
                continue
            if isinstance(node, ast.Call):
                func = node.func
                name = (
                    func.id
                    if isinstance(func, ast.Name)
                    else func.attr
                    if isinstance(func, ast.Attribute)
                    else ""
                )
                if name in aliases:
                    found += 1
                    spread = [k.value for k in node.keywords if k.arg is None]
                    if not any(
                        _calls_security_options(v) or (isinstance(v, ast.Name) and v.id in secured_names)
                        for v in spread
                    ):
                        bad.append(f"{filename}:{node.lineno} {name}(...)")
            visit(node, secured_names)

    visit(tree, set())
    return found, bad


def test_every_kafka_client_in_the_code_base_is_built_with_the_security_options() -> None:
    found, bad = 0, []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            n, unsecured = _unsecured_clients(path.read_text(), path.relative_to(ROOT).as_posix())
            found += n
            bad += unsecured
    assert not bad, "Kafka clients built without **security_options(settings) (TLS/SASL):\n" + "\n".join(bad)
    # kafka.py: 2 admin clients, 2 producers, 1 consumer; the processor's read-back; the API's live feed;
    # the naive baselines of two benchmarks. Fewer found = the check no longer sees them.
    assert found >= 9, found


@pytest.mark.parametrize(
    ("source", "unsecured"),
    [
        ("from aiokafka import AIOKafkaConsumer\nc = AIOKafkaConsumer('t', bootstrap_servers='x')\n", 1),
        ("import aiokafka\ndef f(s):\n    return aiokafka.AIOKafkaProducer(**{'acks': 'all'})\n", 1),
        ("from aiokafka import AIOKafkaProducer as P\ndef f(s):\n    return P(acks='all')\n", 1),
        ("def f(s):\n    return AIOKafkaProducer(acks='all', **security_options(s))\n", 0),
        ("def f(s):\n    o = {'acks': 'all', **security_options(s)}\n    return AIOKafkaProducer(**o)\n", 0),
        ("def f(s):\n    o = {'acks': 'all'}\n    return AIOKafkaProducer(**o)\n", 1),
    ],
)
def test_the_client_check_catches_a_client_without_them(source: str, unsecured: int) -> None:
    found, bad = _unsecured_clients(source, "example.py")
    assert found == 1 and len(bad) == unsecured
