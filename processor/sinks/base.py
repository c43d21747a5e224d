"""The sink contract: make one checkpoint's rows durable, or fail so the checkpoint is aborted.

The processor calls :meth:`Sink.write` once per checkpoint with every closed row since the previous one,
then commits Kafka offsets only if every sink returned. Writes must be idempotent: after a crash the same
rows (and the same :class:`Lineage`) come again, and must not be stored twice.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import pyarrow as pa

__all__ = ["FlushBatch", "Lineage", "Sink"]


@dataclass(frozen=True, slots=True)
class Lineage:
    """Names a partition's checkpoint: its epoch and the sequence number this flush commits."""

    epoch: str
    seq: int


@dataclass(slots=True)
class FlushBatch:
    """Rows of one checkpoint, per partition and kind (``ohlc``, ``volatility``, ``predictions``)."""

    tables: dict[int, dict[str, pa.Table]] = field(default_factory=dict)
    lineage: dict[int, Lineage] = field(default_factory=dict)

    def rows(self, kind: str) -> int:
        return sum(t[kind].num_rows for t in self.tables.values() if kind in t)

    def concat(self, kind: str) -> pa.Table | None:
        parts = [t[kind] for t in self.tables.values() if kind in t and t[kind].num_rows]
        return pa.concat_tables(parts) if parts else None


class Sink(ABC):
    """A durable destination for closed candles, volatility and predictions."""

    name: str = "sink"

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open connections; called once before the first write."""

    @abstractmethod
    async def write(self, batch: FlushBatch) -> None:
        """Make ``batch`` durable, idempotently. Raise ``SinkWriteError`` to abort the checkpoint."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; called once at shutdown after the last write."""
