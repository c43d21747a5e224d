"""Arrow table -> PostgreSQL binary COPY stream, built with NumPy (no per-row Python).

Why binary rather than CSV: formatting floats as shortest round-trip text costs about as much as the
whole COPY, and PostgreSQL then parses them back; binary is the exact IEEE bytes both ways, so values
also survive bit for bit. The layout (PostgreSQL docs, "COPY ... Binary Format"): an 11-byte signature,
two int32 (flags, extension length), then per row an int16 field count and per field an int32 length and
the value in network byte order; an int16 -1 ends the stream.

Handles the column types the sinks write: text, timestamptz (from Arrow timestamp), float8, int8, int4
and bool, without nulls (every stored column is NOT NULL). :func:`supports` says whether a table fits.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

__all__ = ["encode", "supports"]

SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER = b"\xff\xff"
PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in Unix microseconds

_FIXED: dict[pa.DataType, str] = {
    pa.float64(): ">f8",
    pa.int64(): ">i8",
    pa.int32(): ">i4",
}
_US_PER_UNIT = {"s": 1_000_000, "ms": 1000, "us": 1}


def supports(table: pa.Table) -> bool:
    """True when every column has a type :func:`encode` handles and no nulls."""
    for column in table.columns:
        t = column.type
        known = (
            t in _FIXED
            or pa.types.is_string(t)
            or pa.types.is_boolean(t)
            or (pa.types.is_timestamp(t) and t.unit in _US_PER_UNIT)
        )
        if not known or column.null_count:
            return False
    return True


def _values(column: pa.ChunkedArray) -> tuple[npt.NDArray[Any], str]:
    """A fixed-width column as NumPy values and the big-endian dtype they are written with."""
    t = column.type
    if pa.types.is_timestamp(t):
        return column.cast(pa.int64()).to_numpy() * _US_PER_UNIT[t.unit] - PG_EPOCH_US, ">i8"
    if pa.types.is_boolean(t):
        return column.to_numpy(zero_copy_only=False).astype(np.uint8), "u1"
    return column.to_numpy(), _FIXED[t]


def _text(column: pa.ChunkedArray) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """A string column's UTF-8 bytes and the offsets of each value in them."""
    array = column.combine_chunks()
    n = len(array)
    offsets = np.frombuffer(array.buffers()[1], np.int32, n + 1, array.offset * 4).astype(np.int64)
    data = (
        np.frombuffer(array.buffers()[2], np.uint8)
        if array.buffers()[2] is not None
        else np.empty(0, np.uint8)
    )
    return data, offsets


def encode(table: pa.Table) -> bytes:
    """The binary COPY stream of ``table`` (columns in table order; row order may differ).

    Rows are written as NumPy records, one record layout per combination of text lengths (a batch has a
    handful: symbols, labels), so every field is filled by one vectorized assignment.
    """
    n = table.num_rows
    fixed: dict[int, tuple[npt.NDArray[Any], str]] = {}
    text: dict[int, tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]] = {}
    for j, column in enumerate(table.columns):
        if pa.types.is_string(column.type):
            text[j] = _text(column)
        else:
            fixed[j] = _values(column)
    chunks = [SIGNATURE]
    if n:
        lengths = np.stack([np.diff(offsets) for _, offsets in text.values()], axis=1) if text else None
        if lengths is None:
            groups: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.intp]]] = [
                (np.empty(0, np.int64), np.arange(n))
            ]
        else:
            shapes, which = np.unique(lengths, axis=0, return_inverse=True)
            which = which.reshape(-1)
            groups = [(shape, np.flatnonzero(which == g)) for g, shape in enumerate(shapes)]
        for shape, rows in groups:
            chunks.append(_records(table.num_columns, fixed, text, dict(zip(text, shape, strict=True)), rows))
    chunks.append(TRAILER)
    return b"".join(chunks)


def _records(
    ncols: int,
    fixed: dict[int, tuple[npt.NDArray[Any], str]],
    text: dict[int, tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]],
    widths: dict[int, Any],
    rows: npt.NDArray[np.intp],
) -> bytes:
    """Rows ``rows`` (whose text columns have the byte lengths ``widths``) as packed binary COPY tuples."""
    layout: list[tuple[str, Any]] = [("count", ">i2")]
    for j in range(ncols):
        layout.append((f"len{j}", ">i4"))
        if j in fixed:
            layout.append((f"val{j}", fixed[j][1]))
        elif int(widths[j]):
            layout.append((f"val{j}", f"V{int(widths[j])}"))
    records = np.empty(len(rows), np.dtype(layout))
    records["count"] = ncols
    for j in range(ncols):
        if j in fixed:
            values, dtype = fixed[j]
            records[f"len{j}"] = np.dtype(dtype).itemsize
            records[f"val{j}"] = values[rows]
        else:
            width = int(widths[j])
            records[f"len{j}"] = width
            if width:
                data, offsets = text[j]
                chars = data[offsets[rows][:, None] + np.arange(width)]
                records[f"val{j}"] = np.ascontiguousarray(chars).view(f"V{width}").reshape(-1)
    return records.tobytes()
