"""Sinks: where closed candles, volatility and predictions become durable."""

from processor.sinks.base import FlushBatch, Lineage, Sink
from processor.sinks.parquet import ParquetSink
from processor.sinks.postgres import PostgresSink

__all__ = ["FlushBatch", "Lineage", "ParquetSink", "PostgresSink", "Sink"]
