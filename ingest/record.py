"""Recording: keep a JSONL copy of every trade a source yields (the format ``cryptostream replay`` reads)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import orjson

from ingest.source import Batch, EncodedBatch

__all__ = ["recorded"]


async def recorded(source: AsyncIterator[Batch], path: Path) -> AsyncIterator[Batch]:
    """Yield what ``source`` yields, appending each batch to ``path`` (flushed per batch) first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as out:  # noqa: ASYNC230 - local appends of a few KB, cheaper than a thread hop
        async for batch in source:
            if isinstance(batch, EncodedBatch):  # replay: records already hold the trade JSON
                out.write(b"".join(value + b"\n" for _, value, _ in batch))
            else:
                out.write(b"".join(orjson.dumps(t.to_dict()) + b"\n" for t in batch))
            out.flush()
            yield batch
