"""Ingest: exchange clients, file replay, the synthetic market, and the Kafka publisher."""

from ingest.publisher import Publisher
from ingest.synthetic import SyntheticMarket

__all__ = ["Publisher", "SyntheticMarket"]
