"""What the model predicts, and the persistence baseline's guess, on the forward-filled 1 s grid.

The label of second ``t`` is 1 when the close at ``t + horizon`` is strictly above the close at ``t``
(a flat price is "down": not up). It is known only once the grid reaches ``t + horizon``; rows closer
than that to the end of the data have no label and are never trained or scored on. Persistence guesses
that the last ``horizon`` seconds' direction carries on.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from processor.model.features import Grid

__all__ = ["last_direction", "up_labels"]


def up_labels(
    grid: Grid, at: npt.NDArray[np.int64], horizon_s: int
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.bool_]]:
    """(label, known) at grid indices ``at``: label = close(t + horizon) > close(t)."""
    known = at + horizon_s < len(grid)
    label = np.zeros(at.shape[0], dtype=np.int8)
    p = at[known]
    label[known] = grid.close[p + horizon_s] > grid.close[p]
    return label, known


def last_direction(
    grid: Grid, at: npt.NDArray[np.int64], horizon_s: int
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.bool_]]:
    """(guess, defined): 1 when the close rose over the previous ``horizon`` seconds."""
    defined = at >= horizon_s
    guess = np.zeros(at.shape[0], dtype=np.int8)
    p = at[defined]
    guess[defined] = grid.close[p] > grid.close[p - horizon_s]
    return guess, defined
