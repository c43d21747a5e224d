"""The README is the front door: keep its configuration table and commands true."""

from __future__ import annotations

import re
from pathlib import Path

from typer.main import get_command

from cryptostream.cli import app
from cryptostream.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_in_the_configuration_table() -> None:
    missing = [name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in README]
    assert not missing, f"README configuration table lacks {missing}"


def test_every_documented_variable_is_a_setting_or_a_broker_knob() -> None:
    table = README.split("## Configuration", 1)[1].split("### Performance knobs", 1)[0]
    first_cells = re.findall(r"^\| ([^|]+) \|", table, re.M)
    documented = {name for cell in first_cells for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", cell)}
    known = {name.upper() for name in Settings.model_fields} | {"KAFKA_NUM_THREADS", "KAFKA_IO_THREADS"}
    assert documented <= known, f"README documents unknown variables {documented - known}"


def test_every_command_in_the_readme_exists() -> None:
    commands = set(get_command(app).commands)  # type: ignore[attr-defined]
    used = set(re.findall(r"`cryptostream (\w+)", README))
    assert used and used <= commands, f"README names commands that do not exist: {used - commands}"


def test_the_quick_start_names_the_targets_the_makefile_has() -> None:
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    for target in ("demo", "run", "test"):
        assert f"make {target}" in README and re.search(rf"^{target}:", makefile, re.M)


def test_every_python_example_in_the_readme_is_a_script_that_compiles() -> None:
    """A reader saves an example and runs it: top-level ``async with`` was a SyntaxError there."""
    blocks = re.findall(r"^```python\n(.*?)^```", README, re.M | re.S)
    assert blocks
    for block in blocks:
        compile(block, "README.md example", "exec")
