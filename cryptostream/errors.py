"""Exceptions of cryptostream.

Expected bad data (a malformed trade, a late trade) is not an exception: it is a counted,
dead-lettered outcome. Exceptions are for things a process cannot carry on through::

    CryptostreamError
    ├── SettingsError          a setting is missing or invalid (one line, names the variable)
    ├── InfraError             an embedded broker/database could not start, or a service is unreachable
    ├── UnsupportedSymbol      a symbol that cannot be normalized
    ├── MarketListError        an exchange's market list (live answer, cache, snapshot) is not in the
    │                          shape we read (defined in cryptostream.markets)
    ├── SinkWriteError         a sink could not make a batch durable (the checkpoint is aborted)
    ├── MissingCheckpoint      a committed offset whose checkpoint file is gone (the processor stops)
    └── QueryError             a read was asked something it cannot answer (bad range, unknown interval)
"""

from __future__ import annotations

__all__ = [
    "CryptostreamError",
    "InfraError",
    "MissingCheckpoint",
    "QueryError",
    "SettingsError",
    "SinkWriteError",
    "UnsupportedSymbol",
]


class CryptostreamError(Exception):
    """Root of every exception cryptostream raises on purpose."""


class SettingsError(CryptostreamError):
    """A setting is missing or invalid; the message is one line naming the variable and the fix."""


class InfraError(CryptostreamError):
    """A service the process needs could not be started or reached."""


class UnsupportedSymbol(CryptostreamError):
    """A symbol that does not normalize to an exchange-independent form such as ``BTCUSDT``."""


class SinkWriteError(CryptostreamError):
    """A sink failed to make a batch durable; the caller must not commit offsets past it."""


class MissingCheckpoint(CryptostreamError):
    """A committed offset whose checkpoint is gone: resuming would lose or double-count rows."""


class QueryError(CryptostreamError):
    """A read request that cannot be answered as asked (shown to API users as a clear error)."""
