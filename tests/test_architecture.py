"""The house rules of imports: one direction, core at the bottom (STYLE.md, DESIGN.md).

cryptostream (core) <- ingest, processor <- graphql_api. ``cryptostream.cli`` is the composition root and
may import the roles (lazily, inside commands); nothing else in the core may.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "cryptostream": {"ingest", "processor", "graphql_api"},
    "ingest": {"processor", "graphql_api"},
    "processor": {"ingest", "graphql_api"},
    "graphql_api": {"ingest"},
}
COMPOSITION_ROOT = {"cryptostream/cli.py"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_package_imports_a_layer_above_it(package: str) -> None:
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in COMPOSITION_ROOT:
            continue
        bad = _imports(path) & FORBIDDEN[package]
        if bad:
            offenders.append(f"{rel} imports {', '.join(sorted(bad))}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_every_package_declares_its_public_surface(package: str) -> None:
    init = ROOT / package / "__init__.py"
    assert "__all__" in init.read_text(), f"{package}/__init__.py has no __all__"
