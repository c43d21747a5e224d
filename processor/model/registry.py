"""Model files and reports under ``MODEL_DIR``: versioned, written atomically, plain JSON.

Layout::

    MODEL_DIR/
      20261125T101500Z-logit-3f2a9c1d.model.json    the fitted model (see ``LinearModel.to_dict``)
      20261125T101500Z-logit-3f2a9c1d.report.json   its walk-forward metrics report
      current.json                                   {"version", "model", "report"}: the live model

Every training run adds a version and then points ``current.json`` at it (temp file + rename, so a
reader sees the old or the new pointer, never half of one). Old versions stay for comparison.
This module imports nothing heavy, so the API can read reports cheaply.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from processor.model.errors import ModelFileError

__all__ = [
    "CURRENT",
    "DEMO_VERSION_PREFIX",
    "MODEL_FORMAT",
    "REPORT_FORMAT",
    "load_model_file",
    "load_report",
    "save",
]

CURRENT = "current.json"
MODEL_FORMAT = "cryptostream-model/1"
REPORT_FORMAT = "cryptostream-model-report/1"
# How the version of a model the demo trained on generated history begins (processor.model.demo).
DEMO_VERSION_PREFIX = "demo-"


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, allow_nan=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFileError(f"{path} is missing (retrain with `cryptostream train`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{path} must hold a JSON object")
    return data


def save(model_dir: Path, model: dict[str, Any], report: dict[str, Any]) -> Path:
    """Write a model and its report under their version, then make that version current."""
    version = str(model["version"])
    model_dir.mkdir(parents=True, exist_ok=True)
    model_name, report_name = f"{version}.model.json", f"{version}.report.json"
    _write(model_dir / model_name, model)
    _write(model_dir / report_name, report)
    _write(model_dir / CURRENT, {"version": version, "model": model_name, "report": report_name})
    return model_dir / model_name


def _current(model_dir: Path) -> dict[str, Any] | None:
    path = model_dir / CURRENT
    if not path.exists():
        return None
    pointer = _read(path)
    if not all(isinstance(pointer.get(k), str) for k in ("version", "model", "report")):
        raise ModelFileError(f"{path} must name version, model and report")
    for key in ("model", "report"):
        if Path(pointer[key]).name != pointer[key]:
            raise ModelFileError(
                f"{path}: {key} must be a file name inside {model_dir}, got {pointer[key]!r}"
            )
    return pointer


def load_report(model_dir: Path) -> dict[str, Any] | None:
    """The current model's metrics report as stored (a JSON object), or None when no model was trained.

    Raises :class:`ModelFileError` when the files exist but cannot be read.
    """
    return _load_current(model_dir, "report", REPORT_FORMAT, "report")


def load_model_file(model_dir: Path) -> dict[str, Any] | None:
    """The current model file's JSON, or None when no model was trained."""
    return _load_current(model_dir, "model", MODEL_FORMAT, "model file")


def _load_current(model_dir: Path, kind: str, fmt: str, noun: str) -> dict[str, Any] | None:
    pointer = _current(model_dir)
    if pointer is None:
        return None
    path = model_dir / pointer[kind]
    loaded = _read(path)
    if loaded.get("format") != fmt:
        raise ModelFileError(f"{path} is not a {fmt} {noun}")
    return loaded
