"""Checkpoints: what a partition's processor must know to resume exactly where its commit left off.

Kafka stores the committed offset; the rest of the state lives in a small JSON file per commit, written
(atomically, fsynced) *before* the offset is committed and looked up by that offset on assignment:

* ``offset``: the committed offset = the oldest trade still in an open window (replay starts here);
* ``read_until``: where reading had got to; replayed trades before it were already handled once, so
  replay neither dead-letters them again nor re-counts trades of windows closed since;
* ``epoch`` and ``seq``: the lineage of this partition's Parquet files. Files of this epoch with a higher
  seq were written after the last commit: a crashed attempt whose candles replay will write again, so
  they are deleted on assignment. A new topic (no committed offset) starts a new epoch and can never
  overwrite the archive of an earlier one;
* per symbol: the window frontier (``closed``), the highest event time (``max_event``) and the recent
  closed candles the rolling volatility and prediction features need.

Kafka commit metadata would be the natural home, but the embedded broker does not keep it, and files in the
archive folder keep the checkpoint next to the data it describes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from cryptostream.archive import fsync_path

__all__ = ["Checkpoint", "CheckpointStore", "SymbolCheckpoint", "new_epoch"]

KEEP = 8  # checkpoint files kept per partition (older ones can no longer be the committed one)


def new_epoch() -> str:
    return secrets.token_hex(4)


@dataclass(slots=True)
class SymbolCheckpoint:
    closed: int
    max_event: int
    first_bucket: int | None = None
    recent: list[list[Any]] = field(default_factory=list)  # closed candle rows, oldest first


@dataclass(slots=True)
class Checkpoint:
    topic: str
    partition: int
    offset: int
    read_until: int
    epoch: str
    seq: int
    symbols: dict[str, SymbolCheckpoint] = field(default_factory=dict)

    def to_json(self) -> bytes:
        body = {
            "version": 1,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "read_until": self.read_until,
            "epoch": self.epoch,
            "seq": self.seq,
            "symbols": {
                name: {
                    "closed": s.closed,
                    "max_event": s.max_event,
                    "first_bucket": s.first_bucket,
                    "recent": s.recent,
                }
                for name, s in self.symbols.items()
            },
        }
        return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)

    @classmethod
    def from_json(cls, raw: bytes) -> Checkpoint:
        body = orjson.loads(raw)
        return cls(
            topic=body["topic"],
            partition=body["partition"],
            offset=body["offset"],
            read_until=body["read_until"],
            epoch=body["epoch"],
            seq=body["seq"],
            symbols={name: SymbolCheckpoint(**s) for name, s in body["symbols"].items()},
        )


class CheckpointStore:
    """Checkpoint files under ``OUTPUT_DIR/_checkpoints/<group>/<topic>/p<partition>/<offset>.json``."""

    def __init__(self, root: Path, group: str, topic: str) -> None:
        self.root = root / "_checkpoints" / group / topic

    def _dir(self, partition: int) -> Path:
        return self.root / f"p{partition:04d}"

    def save(self, checkpoint: Checkpoint) -> None:
        """Write durably (temp file, fsync, rename, fsync folder) and prune old ones."""
        folder = self._dir(checkpoint.partition)
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"{checkpoint.offset:020d}.json"
        tmp = folder / f".{checkpoint.offset:020d}.json.tmp"
        with open(tmp, "wb") as fh:
            fh.write(checkpoint.to_json())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        fsync_path(folder)
        for old in sorted(folder.glob("*.json"))[:-KEEP]:
            if old != final:
                with contextlib.suppress(FileNotFoundError):
                    old.unlink()

    def load(self, partition: int, offset: int) -> Checkpoint | None:
        """The checkpoint written for committed ``offset``, if there is one."""
        path = self._dir(partition) / f"{offset:020d}.json"
        try:
            return Checkpoint.from_json(path.read_bytes())
        except FileNotFoundError:
            return None
