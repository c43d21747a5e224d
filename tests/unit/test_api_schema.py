"""The schema kept in the repository is the schema the API serves."""

from __future__ import annotations

from pathlib import Path

from graphql_api.schema import sdl

SCHEMA_FILE = Path(__file__).parents[2] / "schema.graphql"


def test_schema_graphql_is_current() -> None:
    assert SCHEMA_FILE.read_text() == sdl(), (
        "schema.graphql is stale: run `.venv/bin/python -m graphql_api > schema.graphql`"
    )


def test_create_app_has_no_side_effects_until_its_lifespan(tmp_path: Path) -> None:
    from cryptostream.settings import load_settings
    from graphql_api.app import create_app

    settings = load_settings(
        kafka_bootstrap="127.0.0.1:1",
        database_url="postgresql://nobody@127.0.0.1:1/none",
        output_dir=tmp_path,
    )
    app = create_app(settings)  # neither the broker nor the database is touched (both unreachable)
    assert not hasattr(app.state, "services")
    assert {"/api/ohlc/", "/api/ohlc/latest", "/api/volatility/", "/api/symbols", "/health"} <= set(
        app.openapi()["paths"]
    )
