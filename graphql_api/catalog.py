"""Which symbols the API knows, cached so checking a symbol does not cost a database round trip.

Known = the configured ``SYMBOLS`` + what the store holds + what the live feed has carried. The store's
list is refreshed every ``ttl`` seconds, and early (at most once a second) when a request names a symbol
not seen yet, so a symbol that just started trading is accepted within a second, while a stream of
requests for nonsense symbols cannot turn into a stream of ``SELECT DISTINCT`` queries.
"""

from __future__ import annotations

import asyncio
import time

from cryptostream.store import ReadStore

__all__ = ["SymbolCatalog"]


class SymbolCatalog:
    def __init__(self, store: ReadStore, configured: list[str], ttl: float = 5.0) -> None:
        self.store = store
        self.configured = list(configured)
        self.ttl = ttl
        self.live: set[str] = set()
        self._stored: list[str] = []
        self._fetched = float("-inf")
        self._lock = asyncio.Lock()

    async def stored(self, *, fresh_within: float | None = None) -> list[str]:
        """Symbols in the store (cached for ``ttl``, or ``fresh_within`` seconds when given)."""
        max_age = self.ttl if fresh_within is None else fresh_within
        if time.monotonic() - self._fetched > max_age:
            async with self._lock:
                if time.monotonic() - self._fetched > max_age:
                    self._stored = await self.store.symbols()
                    self._fetched = time.monotonic()
        return self._stored

    async def known(self, wanted: list[str] | None = None) -> set[str]:
        """Every known symbol; when ``wanted`` has one not known yet, look at the store again first."""
        names = set(self.configured) | self.live | set(await self.stored())
        if wanted and not set(wanted) <= names:
            names |= set(await self.stored(fresh_within=1.0))
        return names
