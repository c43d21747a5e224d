"""Processor: event-time 1 s windows, volatility, sinks and the exactly-once consume/commit loop."""

from processor.service import Processor

__all__ = ["Processor"]
