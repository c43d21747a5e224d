"""Coinbase: the Exchange ``matches`` channel, or Advanced Trade ``market_trades`` (``COINBASE_FEED``).

Side mapping, in one place:

* **Exchange** ``match`` (and REST ``/products/<id>/trades``): ``side`` is the *maker's* side. ``sell``
  means a resting sell order was hit, the taker bought: ``is_buyer_maker = (side == "buy")``. Coinbase's
  documentation says so ("The side field indicates the maker order side"); inverting it is the usual bug.
* **Advanced Trade** ``market_trades``: Coinbase's schema calls ``side`` "the side of the trade" without
  saying whose, and clients disagree. We read it as the maker's side too (:data:`ADVANCED_SIDE_IS_MAKER`),
  because the two APIs report the same trades from the same matching engine under the same trade ids, and
  a trade must not change direction with the feed it came from: the gap backfill of either feed comes from
  the Exchange REST history. Should Coinbase confirm the opposite, flip that one constant; the test
  ``test_advanced_trade_side_mapping_is_the_documented_choice`` pins the current choice.

Timestamps are ISO 8601 with micro- (Exchange) or nanoseconds (Advanced Trade) and are cut to the exact
millisecond. The Exchange ``heartbeat`` channel's ``last_trade_id`` tells us, every second, which trades
should have arrived: the feed opens a gap (and backfills it) when we are behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from cryptostream.codec import Rejected
from cryptostream.errors import UnsupportedSymbol
from cryptostream.markets import Market
from cryptostream.models import Trade
from cryptostream.settings import Settings
from cryptostream.symbols import normalize_symbol
from ingest.backfill import RestHistory
from ingest.exchanges.base import Exchange, Parsed, reject_frame
from ingest.validation import FieldError, iso_to_ms, make_trade

__all__ = [
    "ADVANCED_SIDE_IS_MAKER",
    "CoinbaseAdvanced",
    "CoinbaseExchange",
    "advanced_is_buyer_maker",
    "maker_side_is_buyer_maker",
]

ADVANCED_SIDE_IS_MAKER = True


def maker_side_is_buyer_maker(side: Any) -> bool:
    """``side`` names the maker's order: ``buy`` -> the buyer is the maker."""
    if not isinstance(side, str) or side.lower() not in ("buy", "sell"):
        raise FieldError("bad_side", f"side {side!r:.40} is neither buy nor sell")
    return side.lower() == "buy"


def advanced_is_buyer_maker(side: Any) -> bool:
    """Advanced Trade ``BUY``/``SELL`` -> :attr:`Trade.is_buyer_maker` (see the module docstring)."""
    maker_is_buyer = maker_side_is_buyer_maker(side)
    return maker_is_buyer if ADVANCED_SIDE_IS_MAKER else not maker_is_buyer


class _Coinbase(Exchange):
    """What both Coinbase feeds share: product ids (Coinbase's own, from its market list) and REST rows."""

    name = "coinbase"
    heartbeats = True  # both feeds subscribe to a heartbeat channel: a frame every second

    def __init__(
        self, settings: Settings, markets: Sequence[Market], history: RestHistory | None = None
    ) -> None:
        self.products = [m.native for m in markets]
        super().__init__(settings, markets, history)

    def parse_history(
        self, symbol: str, rows: list[dict[str, Any]], received_at: int
    ) -> tuple[list[Trade], list[Rejected]]:
        """Exchange REST ``/products/BTC-USD/trades`` rows (newest first; ``side`` is the maker's)::

        [{"time":"2014-11-07T22:19:28.578544Z","trade_id":74,"price":"10.00000000",
          "size":"0.01000000","side":"buy"}]
        """
        out = Parsed()
        for row in rows:
            self.trade_or_reject(partial(self._rest_trade, symbol, row, received_at), row, out)
        return out.trades, out.rejected

    def _rest_trade(self, symbol: str, r: dict[str, Any], received_at: int) -> Trade:
        return make_trade(
            self.name,
            symbol,
            r["price"],
            r["size"],
            iso_to_ms(r["time"]),
            r["trade_id"],
            maker_side_is_buyer_maker(r["side"]),
            received_at,
            self.symbols,
        )


class CoinbaseExchange(_Coinbase):
    """Coinbase Exchange WebSocket feed, ``matches`` + ``heartbeat`` channels."""

    url_setting = "COINBASE_WS_URL"

    def __init__(
        self, settings: Settings, markets: Sequence[Market], history: RestHistory | None = None
    ) -> None:
        self.ws_url = settings.coinbase_ws_url
        super().__init__(settings, markets, history)

    def url(self) -> str:
        return self.ws_url

    def subscriptions(self) -> list[dict[str, Any]]:
        return [{"type": "subscribe", "product_ids": self.products, "channels": ["matches", "heartbeat"]}]

    def parse(self, raw: str | bytes, received_at: int) -> Parsed:
        """One frame. After subscribing: ``subscriptions``, one ``last_match`` per product, then::

            {"type":"match","trade_id":10,"sequence":50,"maker_order_id":"ac928c66-ca53-498f-9c13-a110027a60e8",
             "taker_order_id":"132fb6ae-456b-4654-b4e0-d681ac05cea1","time":"2014-11-07T08:19:27.028459Z",
             "product_id":"BTC-USD","size":"5.23512","price":"400.23","side":"sell"}

        and every second per product::

            {"type":"heartbeat","sequence":90,"last_trade_id":20,"product_id":"BTC-USD",
             "time":"2014-11-07T08:19:28.464459Z"}

        Errors: ``{"type":"error","message":"Failed to subscribe","reason":"FOO-BAR is not a valid product"}``
        """
        msg = reject_frame(raw)
        if isinstance(msg, Parsed):
            return msg
        kind = msg.get("type")
        out = Parsed()
        if kind == "match" or kind == "heartbeat":  # (a last_match's time is its trade's, long ago maybe)
            out.sent_ms = _sent(msg.get("time"))
        if kind in ("match", "last_match"):
            self.trade_or_reject(lambda: self._match(msg, received_at), raw, out)
        elif kind == "heartbeat":
            out.alive = True
            try:
                symbol = normalize_symbol(msg["product_id"])
                last = msg["last_trade_id"]
            except (KeyError, UnsupportedSymbol):
                return out
            if symbol in self.symbols and isinstance(last, int) and not isinstance(last, bool):
                out.last_ids[symbol] = last
        elif kind == "subscriptions":
            out.alive = True
        elif kind == "error":
            out.error = f"{msg.get('message')}: {msg.get('reason')}"
        return out

    def _match(self, msg: dict[str, Any], received_at: int) -> Trade:
        return make_trade(
            self.name,
            msg["product_id"],
            msg["price"],
            msg["size"],
            iso_to_ms(msg["time"]),
            msg["trade_id"],
            maker_side_is_buyer_maker(msg["side"]),
            received_at,
            self.symbols,
        )


class CoinbaseAdvanced(_Coinbase):
    """Coinbase Advanced Trade WebSocket feed, ``market_trades`` + ``heartbeats`` (public, no key)."""

    url_setting = "COINBASE_ADVANCED_WS_URL"

    def __init__(
        self, settings: Settings, markets: Sequence[Market], history: RestHistory | None = None
    ) -> None:
        self.ws_url = settings.coinbase_advanced_ws_url
        self.sequence: int | None = None
        self.sequence_gaps = 0
        super().__init__(settings, markets, history)

    def url(self) -> str:
        return self.ws_url

    def subscriptions(self) -> list[dict[str, Any]]:
        # heartbeats keep an idle connection open; Advanced Trade closes silent subscribers
        return [
            {"type": "subscribe", "product_ids": self.products, "channel": "market_trades"},
            {"type": "subscribe", "channel": "heartbeats"},
        ]

    def on_connect(self) -> None:
        self.sequence = None

    def parse(self, raw: str | bytes, received_at: int) -> Parsed:
        """One frame; trades come batched every 250 ms, the first event after subscribing a ``snapshot``::

            {"channel":"market_trades","client_id":"","timestamp":"2026-08-09T21:05:48.251397169Z",
             "sequence_num":9,"events":[{"type":"update","trades":[{"product_id":"BTC-USD",
             "trade_id":"1068572091","price":"65083.67","size":"0.01034361",
             "time":"2026-08-09T21:05:48.167634Z","side":"SELL"}]}]}

        ``sequence_num`` counts messages per connection (a jump means the server dropped some, which the
        trade-id tracker then sees as a gap). Errors: ``{"type":"error","message":"failure to subscribe"}``.
        """
        msg = reject_frame(raw)
        if isinstance(msg, Parsed):
            return msg
        out = Parsed(sent_ms=_sent(msg.get("timestamp")))
        if msg.get("type") == "error":
            out.error = str(msg.get("message"))
            return out
        seq = msg.get("sequence_num")
        if isinstance(seq, int):
            if self.sequence is not None and seq > self.sequence + 1:
                self.sequence_gaps += 1
            self.sequence = seq
        channel = msg.get("channel")
        if channel in ("heartbeats", "subscriptions"):
            out.alive = True
        elif channel == "market_trades":
            events = msg.get("events")
            if not isinstance(events, list):
                out.rejected.append(Rejected("missing_field", "market_trades without events", _bytes(raw)))
                return out
            for event in events:
                trades = event.get("trades") if isinstance(event, dict) else None
                if not isinstance(trades, list):
                    out.rejected.append(Rejected("wrong_type", "event without a trades list", _bytes(raw)))
                    continue
                for trade in trades:
                    self.trade_or_reject(partial(self._trade, trade, received_at), trade, out)
            out.alive = True
        return out

    def _trade(self, t: dict[str, Any], received_at: int) -> Trade:
        return make_trade(
            self.name,
            t["product_id"],
            t["price"],
            t["size"],
            iso_to_ms(t["time"]),
            t["trade_id"],
            advanced_is_buyer_maker(t["side"]),
            received_at,
            self.symbols,
        )


def _sent(text: Any) -> int | None:
    """A frame's sending time (the exchange's clock), or None when it has none we can read."""
    try:
        return iso_to_ms(text)
    except FieldError:
        return None


def _bytes(raw: str | bytes) -> bytes:
    return raw.encode() if isinstance(raw, str) else raw
