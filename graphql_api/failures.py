"""The store's failures in the API's log: a line per kind of failure and minute, not a traceback per request.

During a database outage every request that reads the store fails the same way: logged each time with its
traceback, 50 requests a second wrote 50 tracebacks a second and buried what came before. A failure that
means the database does not answer (refused, reset, shutting down) is one line without a traceback, there
is nothing in our code to see; any other (a table missing: not migrated; a query the server refuses: a
bug) keeps its traceback. Either way the same failure is said at most once a minute, with the count of
the requests it failed in between.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

__all__ = ["OUTAGES", "StoreFailures"]

# The database does not answer, or is going away: nothing in our code to see.
OUTAGES = (
    OSError,  # refused, reset, unreachable, timed out
    asyncpg.InterfaceError,  # the connection closed under a query
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, starting up (57P*)
)
EVERY_S = 60.0
KINDS = 256  # failures told apart at most; the oldest is forgotten past it


@dataclass(slots=True)
class _Seen:
    said_at: float
    since: int = 0  # requests it failed since it was last said


class StoreFailures:
    """Says each kind of store failure (its type and message) at most every ``every_s`` seconds."""

    def __init__(
        self,
        log: logging.Logger,
        every_s: float = EVERY_S,
        clock: Callable[[], float] = time.monotonic,
        level: int = logging.ERROR,  # WARNING where the failure is survived (a cached list kept)
    ) -> None:
        self.log = log
        self.level = level
        self.every_s = every_s
        self.clock = clock
        self.seen: dict[tuple[str, str], _Seen] = {}

    def failed(self, where: str, exc: BaseException) -> None:
        """``exc`` failed the request ``where`` names (a route, or "GraphQL")."""
        key = (type(exc).__name__, str(exc)[:300])
        now = self.clock()
        seen = self.seen.get(key)
        if seen is not None and now - seen.said_at < self.every_s:
            seen.since += 1
            self.log.debug("%s: the store failed again: %s", where, exc)
            return
        also = f" (and {seen.since} more requests since it was last said)" if seen and seen.since else ""
        if isinstance(exc, OUTAGES):
            self.log.log(self.level, "%s: the store does not answer: %s: %s%s", where, key[0], exc, also)
        else:
            self.log.log(self.level, "%s: the store failed: %s%s", where, exc, also, exc_info=exc)
        self.seen.pop(key, None)
        self.seen[key] = _Seen(now)
        while len(self.seen) > KINDS:
            del self.seen[next(iter(self.seen))]
