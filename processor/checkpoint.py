"""Checkpoints: what a partition's processor must know to resume exactly where its commit left off.

Kafka stores the committed offset; everything else lives in one file per commit, written durably (temp
file, fsync, rename, fsync the folder) *before* the offset is committed, and looked up by the partition's
lineage and that offset on assignment. Under ``OUTPUT_DIR/_checkpoints/<group>/<topic>/p<partition>/``::

    LINEAGE                         the partition's current lineage (epoch) and where it started
    OWNER                           the fence: which processor owns the partition now
    <epoch>/<offset:020d>.ckpt      one checkpoint per commit

A checkpoint (a zip of ``header.json`` and three Arrow IPC streams, written off the event loop) holds:

* ``offset``: the committed offset = the read position. Open windows are *in* the checkpoint (their trades),
  so nothing before the committed offset is ever read again and no open window pins the commit;
* ``epoch`` and ``seq``: the lineage of this partition's Parquet files. Files of this epoch with a higher
  seq were written after the last commit by a crashed attempt whose rows replay writes again, so they are
  deleted on assignment;
* ``dlq``: the end offsets of the dead-letter topic when it was written. On assignment the dead letters
  written after them for this partition are read back, so a crash never dead-letters a record twice;
* per stream (exchange, symbol): the frontier, the highest event time and progress watermark, the recent
  closed candles rolling volatility and prediction features need, and the trades of the open windows.

**Lineage.** A partition with no committed offset (a new group, a new topic, or the embedded broker's
in-memory log starting over) starts a new lineage: a new epoch, named so that a later lineage sorts after
an earlier one (readers prefer its rows), written to ``LINEAGE`` before its first commit. Checkpoints of
older lineages can never be the committed one again and are removed then; their Parquet files stay: they
are the archive. A committed offset whose checkpoint is missing is not guessed around: the processor stops
and says how to recover (:class:`~cryptostream.errors.MissingCheckpoint`).

**Pruning** happens only after a commit succeeded and never touches the committed checkpoint, so a crash
between writing a checkpoint and committing it always finds the previous one.

**Fencing.** The owner of a partition writes a fresh token to ``OWNER`` when it is assigned the partition and
checks it before every Parquet write and checkpoint. A processor that lost the partition without noticing
(paused past its session timeout) finds another token there and drops the partition instead of publishing
files or checkpoints the next owner would take. (Kafka itself refuses its offset commit.)

Kafka commit metadata would be the natural home for the lineage, but the embedded broker does not keep it,
and files next to the archive keep the checkpoint beside the data it describes.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from cryptostream.archive import fsync_path

__all__ = ["Checkpoint", "CheckpointStore", "new_epoch"]

FORMAT = 2
_TABLES = ("streams", "recent", "open")


def new_epoch(now_ms: int | None = None) -> str:
    """A lineage name that sorts after every earlier one: creation time in ms (hex) plus randomness."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    return f"{ms:011x}{secrets.token_hex(2)}"


@dataclass(slots=True)
class Checkpoint:
    topic: str
    partition: int
    offset: int
    epoch: str
    seq: int
    dlq: dict[int, int] = field(default_factory=dict)  # dead-letter partition -> end offset when written
    tables: tuple[pa.Table, pa.Table, pa.Table] | None = None  # streams, recent, open (PartitionState)

    def header(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "epoch": self.epoch,
            "seq": self.seq,
            "dlq": {str(p): o for p, o in self.dlq.items()},
        }

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr("header.json", orjson.dumps(self.header()))
            for name, table in zip(_TABLES, self.tables or (), strict=False):
                sink = pa.BufferOutputStream()
                with pa.ipc.new_stream(sink, table.schema) as writer:
                    writer.write_table(table)
                zf.writestr(f"{name}.arrow", sink.getvalue().to_pybytes())
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Checkpoint:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            head = orjson.loads(zf.read("header.json"))
            if head.get("format") != FORMAT:
                raise ValueError(f"checkpoint format {head.get('format')!r}, this version reads {FORMAT}")
            names = set(zf.namelist())
            tables = (
                tuple(pa.ipc.open_stream(zf.read(f"{name}.arrow")).read_all() for name in _TABLES)
                if all(f"{name}.arrow" in names for name in _TABLES)
                else None
            )
        return cls(
            topic=head["topic"],
            partition=head["partition"],
            offset=head["offset"],
            epoch=head["epoch"],
            seq=head["seq"],
            dlq={int(p): int(o) for p, o in head.get("dlq", {}).items()},
            tables=tables,
        )


class CheckpointStore:
    """Lineage, fence and checkpoint files of one consumer group and topic (see the module docstring)."""

    def __init__(self, root: Path, group: str, topic: str) -> None:
        self.root = root / "_checkpoints" / group / topic

    def folder(self, partition: int) -> Path:
        return self.root / f"p{partition:04d}"

    # ------------------------------------------------------------------ lineage
    def lineage(self, partition: int) -> str | None:
        """The partition's current epoch, or None if no lineage was ever started here."""
        try:
            return str(orjson.loads((self.folder(partition) / "LINEAGE").read_bytes())["epoch"])
        except FileNotFoundError:
            return None

    def start_lineage(self, partition: int, epoch: str, offset: int) -> int:
        """Make ``epoch`` the partition's lineage; remove the checkpoints of older ones (returns how many)."""
        folder = self.folder(partition)
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomic(folder / "LINEAGE", orjson.dumps({"epoch": epoch, "started_at_offset": offset}))
        removed = 0
        for old in folder.iterdir():
            if old.is_dir() and old.name != epoch:
                removed += sum(1 for _ in old.glob("*.ckpt"))
                shutil.rmtree(old, ignore_errors=True)
        return removed

    # ------------------------------------------------------------------ fencing
    def claim(self, partition: int, member: str) -> str:
        """Take the partition: write a fresh owner token (any earlier owner is fenced off from now on)."""
        token = f"{member}/{secrets.token_hex(6)}"
        folder = self.folder(partition)
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomic(folder / "OWNER", token.encode())
        return token

    def owns(self, partition: int, token: str) -> bool:
        try:
            return (self.folder(partition) / "OWNER").read_bytes().decode() == token
        except FileNotFoundError:
            return False

    # ------------------------------------------------------------------ checkpoints
    def _path(self, partition: int, epoch: str, offset: int) -> Path:
        return self.folder(partition) / epoch / f"{offset:020d}.ckpt"

    def save(self, checkpoint: Checkpoint) -> Path:
        """Write durably (temp file, fsync, rename, fsync folder). Nothing is pruned here."""
        path = self._path(checkpoint.partition, checkpoint.epoch, checkpoint.offset)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, checkpoint.to_bytes())
        return path

    def load(self, partition: int, epoch: str, offset: int) -> Checkpoint | None:
        """The checkpoint written for committed ``offset`` of lineage ``epoch``, if there is one."""
        try:
            return Checkpoint.from_bytes(self._path(partition, epoch, offset).read_bytes())
        except FileNotFoundError:
            return None

    def prune(self, partition: int, epoch: str, committed: int) -> int:
        """After ``committed`` was committed: delete the lineage's checkpoints older than it."""
        removed = 0
        for path in (self.folder(partition) / epoch).glob("*.ckpt"):
            try:
                offset = int(path.stem)
            except ValueError:
                continue
            if offset < committed:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
        return removed


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)
