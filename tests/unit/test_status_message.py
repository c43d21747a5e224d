"""The processor's status message stays small however many markets it holds: the most behind are listed,
all are counted (a Kafka record is at most 1 MB; at 14,000 listed markets it used to exceed that)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from cryptostream.settings import load_settings
from graphql_api.status import StatusBoard
from processor import service
from processor.service import Processor
from processor.state import PartitionState, StreamState


class _Ends:
    """What the status reads from the consumer: each partition's log end."""

    def highwater(self, _: Any) -> int:
        return 0


def test_a_status_of_twenty_thousand_markets_lists_the_most_behind_and_counts_them_all(
    tmp_path: Path,
) -> None:
    processor = Processor(
        load_settings(kafka_bootstrap="127.0.0.1:1", output_dir=tmp_path, database_url=None), []
    )
    part = PartitionState("trades", 0, "e", 0, 0, 5_000, 60_000)
    for i in range(20_000):
        code = processor.interner.stream("binance", f"S{i:05d}USDT")
        part.streams[code] = StreamState(closed=1_000 * i, max_event=1_700_000_000_000 + 1_000 * i)
    processor.parts[0] = part
    processor._consumer = _Ends()  # type: ignore[assignment]

    raw = processor._status()
    message = orjson.loads(raw)
    assert len(raw) < 100_000 and message["streams_total"] == 20_000
    listed = message["streams"]
    assert len(listed) == service.STATUS_STREAMS
    assert [s["symbol"] for s in listed[:2]] == ["S00000USDT", "S00001USDT"]  # the most behind first
    assert max(s["last_event_ms"] for s in listed) == 1_700_000_000_000 + 1_000 * (service.STATUS_STREAMS - 1)

    board = StatusBoard()
    board.update(message)
    snapshot = board.snapshot()
    assert snapshot.markets == 20_000 and len(snapshot.symbols) == service.STATUS_STREAMS
