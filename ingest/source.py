"""What a trade source hands the ingest service: batches of accepted trades and what it rejected.

Sources (live exchanges, file replay, the synthetic market) are async iterators of lists. A plain
``list[Trade]`` is enough for a source that cannot reject anything; :class:`TradeBatch` adds the rejected
records so the service can count them and write them to the dead-letter topic, and :class:`EncodedBatch`
carries trades already encoded as Kafka records (key, value, timestamp), the replay fast path that skips
building a :class:`Trade` object per row.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from cryptostream.codec import Progress, Rejected
from cryptostream.feeds import FeedStatus
from cryptostream.models import Trade

__all__ = ["Batch", "EncodedBatch", "Record", "TradeBatch", "now_ms"]

Record = tuple[bytes, bytes, int]  # key (symbol), value (JSON), timestamp ms
T = TypeVar("T")


def now_ms() -> int:
    """The receipt clock: wall-clock epoch milliseconds."""
    return time.time_ns() // 1_000_000


class _WithRejects(list[T]):
    """Items of a batch, the records ``source`` rejected (reason and raw payload kept), its progress, and
    the connection state of sources (about once a second)."""

    __slots__ = ("acknowledged", "feeds", "progress", "rejected", "source", "stamped")

    def __init__(
        self,
        items: Iterable[T] = (),
        rejected: Iterable[Rejected] = (),
        source: str = "",
        progress: Iterable[Progress] = (),
        feeds: Iterable[FeedStatus] = (),
        acknowledged: Callable[[], None] | None = None,
        stamped: int | None = None,
    ) -> None:
        super().__init__(items)
        self.rejected: list[Rejected] = list(rejected)
        self.source = source
        self.progress: list[Progress] = list(progress)
        self.feeds: list[FeedStatus] = list(feeds)  # sources' connection states, for the API
        # called once Kafka acknowledged every record of this batch and of those before it (a live
        # source's resume file: it may say only what the broker holds)
        self.acknowledged = acknowledged
        # the receipt time of its progress records (a live feed's: the exchange's clock); None: now
        self.stamped = stamped


class TradeBatch(_WithRejects[Trade]):
    """Accepted trades, plus the records ``source`` rejected."""

    __slots__ = ()


class EncodedBatch(_WithRejects[Record]):
    """Trades already encoded as Kafka records, plus the rows ``source`` rejected."""

    __slots__ = ()


Batch = list[Trade] | EncodedBatch  # what a source yields (TradeBatch is a list[Trade])
