"""REST trade history: the pages that fill a trade-id gap the WebSocket left.

A feed that notices missing ids (an id jump, a Coinbase heartbeat ``last_trade_id`` ahead of what arrived,
the window of a reconnect) asks its :class:`RestHistory` for the raw rows of ``[lo, hi]``; the feed parses
and deduplicates them like live trades (see :mod:`ingest.exchanges.base`). This module only knows each
exchange's paging:

* Binance ``GET /api/v3/aggTrades?symbol=BTCUSDT&fromId=N&limit=1000`` (``aggTrade`` stream) or
  ``GET /api/v3/historicalTrades?symbol=BTCUSDT&fromId=N&limit=1000`` (``trade`` stream): oldest first,
  page forward from ``fromId``. ``GET /api/v3/trades`` (or ``aggTrades``) ``?symbol=BTCUSDT&limit=1`` names
  the newest trade: whether a silent stream missed any (:meth:`BinanceHistory.latest_id`).
* Coinbase ``GET /products/BTC-USD/trades?after=N&limit=1000``: newest first, trades with ids below the
  ``after`` cursor, page backward. Coinbase Advanced Trade shares trade ids with the Exchange API, so both
  Coinbase feeds backfill from this public endpoint.

The exchange's own id in those URLs (``BTCUSDT``, ``DOT-USD``) comes from the feed's markets
(:mod:`cryptostream.markets`), the same ones it subscribed with; it is never spelled from the symbol.

Base URLs are settings (``BINANCE_REST_URL``, ``COINBASE_REST_URL``). Throttling answers (HTTP 429/418,
``Retry-After``) and server errors are retried a few times; then :class:`BackfillError` says why.
"""

from __future__ import annotations

import asyncio
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from cryptostream.errors import CryptostreamError, SettingsError
from cryptostream.markets import Market

__all__ = ["BackfillError", "BinanceHistory", "CoinbaseHistory", "RestHistory"]

log = logging.getLogger(__name__)

PAGE_LIMIT = 1000
MAX_PAGES = 100  # at most 100k trades per gap; a longer outage is reported as lost beyond that
ATTEMPTS = 4


class BackfillError(CryptostreamError):
    """The exchange's REST history did not answer usably (after retries)."""


class RestHistory(ABC):
    """Raw trade rows of one exchange's public REST history, by trade-id range."""

    setting: str = "REST URL"  # the setting naming base_url, for error messages

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        markets: Sequence[Market],
        *,
        max_pages: int = MAX_PAGES,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise SettingsError(f"{self.setting} must start with http:// or https://, got {base_url!r}")
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.natives = {m.symbol: m.native for m in markets}
        self.max_pages = max_pages
        self.requests = 0

    def native(self, symbol: str) -> str:
        """The exchange's id of ``symbol`` (``DOTUSD`` -> ``DOT-USD`` at Coinbase), from the markets."""
        try:
            return self.natives[symbol]
        except KeyError:
            known = ", ".join(self.natives) or "none"
            raise BackfillError(f"{symbol} is not one of this feed's markets ({known})") from None

    @abstractmethod
    async def fetch(self, symbol: str, lo: int, hi: int) -> list[dict[str, Any]]:
        """Raw rows with ids in ``[lo, hi]`` (as many as the exchange still has), in any order."""

    @abstractmethod
    def row_id(self, row: dict[str, Any]) -> int:
        """The trade id of one raw row."""

    async def server_time(self) -> int | None:
        """The exchange's clock (ms), or None when it does not say (or not as documented)."""
        return None

    async def _time(self, path: str, read: Callable[[Any], Any]) -> int | None:
        """``read`` of the JSON ``GET path`` answers, as whole ms; None on any failure (one try, 5 s)."""
        try:
            response = await self.client.get(f"{self.base_url}{path}", timeout=5.0)
            value = read(response.json()) if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError, TypeError):
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return None
        return int(value)

    async def _get(self, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        url = f"{self.base_url}{path}"
        delay = 0.5
        last = ""
        for attempt in range(ATTEMPTS):
            self.requests += 1
            try:
                response = await self.client.get(url, params=params)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    try:
                        page = response.json()
                    except ValueError:
                        raise BackfillError(f"GET {url} answered non-JSON: {response.text[:200]!r}") from None
                    if not isinstance(page, list) or not all(isinstance(row, dict) for row in page):
                        raise BackfillError(
                            f"GET {url} answered {str(page)[:200]!r}, expected a list of trades"
                        )
                    return page
                last = f"HTTP {response.status_code}: {response.text[:200]}"
                if response.status_code < 500 and response.status_code not in (418, 429):
                    break  # a client error does not get better by asking again
                retry_after = response.headers.get("Retry-After", "")
                if retry_after.isascii() and retry_after.isdigit():
                    delay = max(delay, float(retry_after))
            if attempt + 1 < ATTEMPTS:
                await asyncio.sleep(delay)
                delay *= 2
        raise BackfillError(f"GET {url} {params} failed: {last}")

    def _keep(self, page: list[dict[str, Any]], lo: int, hi: int) -> tuple[list[dict[str, Any]], list[int]]:
        ids: list[int] = []
        keep: list[dict[str, Any]] = []
        for row in page:
            try:
                trade_id = int(self.row_id(row))
            except (KeyError, TypeError, ValueError):
                keep.append(row)  # the feed's parser rejects it with a reason
                continue
            ids.append(trade_id)
            if lo <= trade_id <= hi:
                keep.append(row)
        return keep, ids


class BinanceHistory(RestHistory):
    """Binance ``aggTrades`` or ``historicalTrades``, matching the live stream's ids."""

    setting = "BINANCE_REST_URL"

    def __init__(
        self, client: httpx.AsyncClient, base_url: str, markets: Sequence[Market], stream: str, **kwargs: Any
    ) -> None:
        super().__init__(client, base_url, markets, **kwargs)
        self.aggregated = stream == "aggTrade"
        self.path = "/api/v3/aggTrades" if self.aggregated else "/api/v3/historicalTrades"

    def row_id(self, row: dict[str, Any]) -> int:
        return int(row["a"] if self.aggregated else row["id"])

    async def server_time(self) -> int | None:
        """Binance's clock: ``GET /api/v3/time`` -> ``{"serverTime": 1499827319559}`` (ms)."""
        return await self._time("/api/v3/time", lambda body: body.get("serverTime"))

    async def latest_id(self, symbol: str) -> tuple[int, int] | None:
        """The id and time (ms) of the exchange's newest trade of ``symbol`` (``GET /api/v3/trades`` or
        ``aggTrades``, ``limit=1``: the most recent), None when the market has none."""
        path = "/api/v3/aggTrades" if self.aggregated else "/api/v3/trades"
        page = await self._get(path, {"symbol": self.native(symbol), "limit": 1})
        try:
            return max(
                ((int(self.row_id(row)), int(row["T"] if self.aggregated else row["time"])) for row in page),
                default=None,
            )
        except (KeyError, TypeError, ValueError):
            raise BackfillError(
                f"GET {self.base_url}{path} answered {str(page)[:200]!r}: no trade id"
            ) from None

    async def fetch(self, symbol: str, lo: int, hi: int) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        native = self.native(symbol)
        from_id = lo
        for _ in range(self.max_pages):
            page = await self._get(self.path, {"symbol": native, "fromId": from_id, "limit": PAGE_LIMIT})
            keep, ids = self._keep(page, lo, hi)
            rows.extend(keep)
            if not ids or max(ids) >= hi or len(page) < PAGE_LIMIT:
                break
            from_id = max(ids) + 1
        return rows


class CoinbaseHistory(RestHistory):
    """Coinbase Exchange ``/products/<id>/trades``, paged backward from the top of the gap."""

    setting = "COINBASE_REST_URL"

    def row_id(self, row: dict[str, Any]) -> int:
        return int(row["trade_id"])

    async def server_time(self) -> int | None:
        """Coinbase's clock: ``GET /time`` -> ``{"iso": "2015-01-07T23:47:25.201Z", "epoch": 1420674445.201}``
        (seconds)."""
        return await self._time("/time", lambda body: round(body.get("epoch") * 1000))

    async def fetch(self, symbol: str, lo: int, hi: int) -> list[dict[str, Any]]:
        path = f"/products/{self.native(symbol)}/trades"
        rows: list[dict[str, Any]] = []
        cursor = hi + 1
        for _ in range(self.max_pages):
            page = await self._get(path, {"after": cursor, "limit": PAGE_LIMIT})
            keep, ids = self._keep(page, lo, hi)
            rows.extend(keep)
            if not ids or min(ids) <= lo or min(ids) >= cursor:
                break
            cursor = min(ids)
        return rows
