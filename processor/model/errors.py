"""Exceptions of the trend model::

CryptostreamError
└── ModelError            the model cannot be trained, saved or loaded
    ├── NotEnoughData     too few candles or labelled rows for an honest walk-forward evaluation
    └── ModelFileError    a model file or report is missing a field, or is not JSON
"""

from __future__ import annotations

from cryptostream.errors import CryptostreamError

__all__ = ["ModelError", "ModelFileError", "NotEnoughData"]


class ModelError(CryptostreamError):
    """Root of the trend model's errors."""


class NotEnoughData(ModelError):
    """The data cannot support walk-forward evaluation; the message says how much there is and is needed."""


class ModelFileError(ModelError):
    """A file under MODEL_DIR cannot be read as a cryptostream model or report."""
