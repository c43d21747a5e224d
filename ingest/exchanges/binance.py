"""Binance spot: the combined ``/stream?streams=`` endpoint, ``trade`` or ``aggTrade`` (``BINANCE_STREAM``).

Streams are named in the URL (``btcusdt@trade/ethusdt@trade``: the lower-case Binance symbol of each
market the feed serves, from :mod:`cryptostream.markets`), so a reconnect resubscribes by itself. ``m``
true means the buyer's order was resting on the book: the buyer is the maker, the taker sold, which is
exactly :attr:`Trade.is_buyer_maker`. Trade times ``T`` are ms (µs if the URL asks for
``timeUnit=MICROSECOND``; both are read exactly).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from functools import partial
from typing import Any

from cryptostream.codec import Rejected
from cryptostream.errors import SettingsError
from cryptostream.markets import Market
from cryptostream.models import Trade
from cryptostream.settings import Settings
from ingest.backfill import BinanceHistory, RestHistory
from ingest.exchanges.base import Exchange, Parsed, reject_frame
from ingest.validation import FieldError, epoch_to_ms, make_trade

__all__ = ["Binance"]

MAX_STREAMS = 1024  # per connection (Binance limit)
# A silent connection of at most this many markets asks REST whether they are quiet or the stream stalled
# (a request of weight 25 per market once a silence, then every WS_STALL_SECONDS); one of more is taken as
# stalled at once, and its answered pings stand in as proof of completeness (see ingest.exchanges.base).
QUIET_CHECK_MARKETS = 20


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise FieldError("wrong_type", f"{name} is {type(value).__name__}: {value!r:.40}")
    return value


def _sent(value: Any) -> int | None:
    """A frame's event time ``E`` in ms (µs too, as ``T``), or None when it has none we can read."""
    try:
        return epoch_to_ms(value)
    except FieldError:
        return None


class Binance(Exchange):
    """Binance spot trades over one combined-stream connection."""

    name = "binance"
    url_setting = "BINANCE_WS_URL"

    def __init__(
        self, settings: Settings, markets: Sequence[Market], history: RestHistory | None = None
    ) -> None:
        self.base_url = settings.binance_ws_url.rstrip("/")
        self.stream = settings.binance_stream
        if len(markets) > MAX_STREAMS:
            raise SettingsError(
                f"SYMBOLS names {len(markets)} Binance pairs; Binance allows {MAX_STREAMS} per connection"
            )
        self.streams = "/".join(sorted(f"{m.native.lower()}@{self.stream}" for m in markets))
        super().__init__(settings, markets, history)

    def url(self) -> str:
        return f"{self.base_url}/stream?streams={self.streams}"

    def can_prove_quiet(self) -> bool:
        return isinstance(self.history, BinanceHistory) and len(self.markets) <= QUIET_CHECK_MARKETS

    async def latest_ids(self) -> dict[str, tuple[int, int] | None] | None:
        """The newest trade id of each market from Binance's REST API (one request per market)."""
        history = self.history
        if not isinstance(history, BinanceHistory) or not self.can_prove_quiet():
            return None
        symbols = sorted(self.symbols)
        latest = await asyncio.gather(*(history.latest_id(symbol) for symbol in symbols))
        return dict(zip(symbols, latest, strict=True))

    def id_space(self) -> str:
        return f"Binance {self.stream} {self.base_url}"  # the same whichever symbols are streamed

    def parse(self, raw: str | bytes, received_at: int) -> Parsed:
        """One frame of the combined stream.

        ``trade``::

            {"stream":"btcusdt@trade","data":{"e":"trade","E":1672515782136,"s":"BNBBTC","t":12345,
             "p":"0.001","q":"100","T":1672515782136,"m":true,"M":true}}

        ``aggTrade`` (``a`` is the aggregate id, ``f``/``l`` the first/last trade ids)::

            {"stream":"nknusdt@aggTrade","data":{"e":"aggTrade","E":1633998523963,"s":"NKNUSDT",
             "a":15683430,"p":"0.35280000","q":"58.00000000","f":19862790,"l":19862790,
             "T":1633998523963,"m":false,"M":true}}

        Control frames: ``{"result":null,"id":1}`` (subscribe ack), ``{"error":{"code":2,"msg":"..."}}``,
        and the 24 h notice ``{"e":"serverShutdown","E":1770123456789}`` (bare, wrapped in ``data``, or in
        ``event`` as the WebSocket API sends it).
        """
        msg = reject_frame(raw)
        if isinstance(msg, Parsed):
            return msg
        if "error" in msg or ("code" in msg and "msg" in msg):
            err = msg.get("error", msg)
            detail = f"{err.get('code')}: {err.get('msg')}" if isinstance(err, dict) else str(err)
            return Parsed(error=detail[:500])
        if "result" in msg and "id" in msg:
            return Parsed(alive=True)
        data = msg.get("data", msg) if "stream" in msg else msg
        if not isinstance(data, dict):
            payload = raw.encode() if isinstance(raw, str) else raw
            return Parsed(rejected=[Rejected("not_an_object", "data is not an object", payload)])
        event = data.get("e")
        if event is None and isinstance(msg.get("event"), dict):
            event = msg["event"].get("e")
        if event == "serverShutdown":
            return Parsed(shutdown=True, alive=True)
        out = Parsed(sent_ms=_sent(data.get("E")))  # event time: the exchange's clock when it sent this
        if event == "trade":
            self.trade_or_reject(lambda: self._trade(data, "t", received_at), raw, out)
        elif event == "aggTrade":
            self.trade_or_reject(lambda: self._trade(data, "a", received_at), raw, out)
        return out

    def _trade(self, data: dict[str, Any], id_key: str, received_at: int) -> Trade:
        return make_trade(
            self.name,
            data["s"],
            data["p"],
            data["q"],
            epoch_to_ms(data["T"]),
            data[id_key],
            _flag(data["m"], "m"),
            received_at,
            self.symbols,
        )

    def parse_history(
        self, symbol: str, rows: list[dict[str, Any]], received_at: int
    ) -> tuple[list[Trade], list[Rejected]]:
        """REST rows, from ``aggTrades``::

            [{"a":26129,"p":"0.01633102","q":"4.70443515","f":27781,"l":27781,"T":1498793709153,
              "m":true,"M":true}]

        or ``historicalTrades``::

            [{"id":28457,"price":"4.00000100","qty":"12.00000000","quoteQty":"48.000012",
              "time":1499865549590,"isBuyerMaker":true,"isBestMatch":true}]
        """
        out = Parsed()
        for row in rows:
            if self.stream == "aggTrade":
                self.trade_or_reject(partial(self._trade, {**row, "s": symbol}, "a", received_at), row, out)
            else:
                self.trade_or_reject(partial(self._historical, symbol, row, received_at), row, out)
        return out.trades, out.rejected

    def _historical(self, symbol: str, r: dict[str, Any], received_at: int) -> Trade:
        return make_trade(
            self.name,
            symbol,
            r["price"],
            r["qty"],
            epoch_to_ms(r["time"]),
            r["id"],
            _flag(r["isBuyerMaker"], "isBuyerMaker"),
            received_at,
            self.symbols,
        )
