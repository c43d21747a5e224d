"""Recording: keep a JSONL copy of every trade a source yields (the format ``cryptostream replay`` reads)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import orjson

from cryptostream.models import Trade

__all__ = ["recorded"]


async def recorded(source: AsyncIterator[list[Trade]], path: Path) -> AsyncIterator[list[Trade]]:
    """Yield what ``source`` yields, appending each batch to ``path`` (flushed per batch) first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as out:  # noqa: ASYNC230 - local appends of a few KB, cheaper than a thread hop
        async for batch in source:
            out.write(b"".join(orjson.dumps(t.to_dict()) + b"\n" for t in batch))
            out.flush()
            yield batch
