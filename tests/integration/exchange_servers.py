"""Local stand-ins for Binance and Coinbase: one port serving the WebSocket feed and the REST API.

Each server lists its pairs the way the exchange does (Binance ``/api/v3/exchangeInfo``, Coinbase
``/products``, in the shapes of tests/data/exchanges), keeps the exchange's full trade history per symbol
(the truth a test compares Kafka with) and speaks the exact wire format of its exchange. What happens on
each WebSocket connection is a script: an async function of (server, connection), the n-th connection
running the n-th script, so a test can write "send 20 trades, drop 3, send garbage, hang up" in order.
Trades a script creates but does not send over the WebSocket (``drop``, :meth:`FakeExchange.offline`)
are still in the history and in the REST endpoint, exactly like trades an exchange made while our
connection was down.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

Script = Callable[["FakeExchange", ServerConnection], Awaitable[None]]


@dataclass
class Truth:
    """One trade as the exchange recorded it, in normalized terms (what must land in Kafka)."""

    exchange: str
    symbol: str
    trade_id: int
    price: float
    quantity: float
    timestamp: int
    is_buyer_maker: bool


def iso(ms: int, digits: int = 6) -> str:
    base = datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    frac = f"{ms % 1000:03d}" + "".join(random.choice("0123456789") for _ in range(digits - 3))
    return f"{base}.{frac}Z"


@dataclass
class FakeExchange:
    """A fake exchange of ``kind`` binance, coinbase (Exchange feed) or advanced (Advanced Trade)."""

    kind: str
    pairs: list[str]  # BASE-QUOTE, as the exchange lists them: BTC-USDT, DOT-USD
    scripts: list[Script | str]  # "reject" = answer the handshake with HTTP 503
    rest_throttle_first: bool = True  # the first trade-history call gets 429 + Retry-After (clients retry)
    ping_interval: float = 20.0  # the server pings this often and drops clients that do not pong in time
    clock_offset_ms: int = 0  # the exchange's clock minus ours (its trades and frames are stamped by its own)
    rest_time: bool = True  # serve the REST clock (Binance /api/v3/time, Coinbase /time); False: 404
    rest_latest: bool = True  # serve Binance's newest trades (/api/v3/trades); False: 503
    history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    truth: dict[tuple[str, int], Truth] = field(default_factory=dict)
    connections: list[dict[str, Any]] = field(default_factory=list)
    rest_calls: list[str] = field(default_factory=list)
    history_calls: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    _server: Server | None = None
    _next_id: dict[str, int] = field(default_factory=dict)
    _attempts: itertools.count = field(default_factory=itertools.count)
    _records: dict[int, dict[str, Any]] = field(default_factory=dict)
    _rng: random.Random = field(default_factory=lambda: random.Random(5))

    @property
    def symbols(self) -> list[str]:
        """The pairs in cryptostream's spelling (BTCUSDT, DOTUSD): what tests and trades are keyed by."""
        return [pair.replace("-", "") for pair in self.pairs]

    # ------------------------------------------------------------------------------ lifecycle
    async def start(self) -> FakeExchange:
        for i, symbol in enumerate(self.symbols):
            self.history[symbol] = []
            self._next_id[symbol] = 1_000 + 1_000_000 * i
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            0,
            process_request=self._process_request,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_interval,
        )
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def clock_ms(self) -> int:
        """The exchange's clock: ours plus ``clock_offset_ms``."""
        return int(datetime.now(UTC).timestamp() * 1000) + self.clock_offset_ms

    # ------------------------------------------------------------------------------ trades
    def _new_trade(self, symbol: str) -> dict[str, Any]:
        trade_id = self._next_id[symbol]
        self._next_id[symbol] += 1
        ms = self.clock_ms()
        price = round(100 + self._rng.random() * 10, 2)
        size = round(self._rng.random() * 3 + 0.001, 6)
        side_buy = self._rng.random() < 0.5  # binance: m; coinbase: maker side == buy
        row = {"id": trade_id, "price": price, "size": size, "ms": ms, "flag": side_buy, "symbol": symbol}
        self.history[symbol].append(row)
        name = "coinbase" if self.kind in ("coinbase", "advanced") else "binance"
        self.truth[(symbol, trade_id)] = Truth(name, symbol, trade_id, price, size, ms, side_buy)
        return row

    def offline(self, symbol: str, n: int) -> list[dict[str, Any]]:
        """Trades that happen while no client is connected (REST history only)."""
        return [self._new_trade(symbol) for _ in range(n)]

    def product(self, symbol: str) -> str:
        """The exchange's id of ``symbol``: Coinbase's BASE-QUOTE (Binance uses the symbol itself)."""
        return self.pairs[self.symbols.index(symbol)]

    def frame(self, rows: list[dict[str, Any]], *, snapshot: bool = False) -> bytes:
        """Rows in this exchange's WebSocket shape (Advanced Trade batches them in one message)."""
        if self.kind == "advanced":
            trades = [
                {
                    "product_id": self.product(r["symbol"]),
                    "trade_id": str(r["id"]),
                    "price": f"{r['price']:.2f}",
                    "size": f"{r['size']:.8f}",
                    "time": iso(r["ms"], 9),
                    "side": "BUY" if r["flag"] else "SELL",
                }
                for r in rows
            ]
            return orjson.dumps(
                {
                    "channel": "market_trades",
                    "client_id": "",
                    "timestamp": iso(rows[-1]["ms"] if rows else 0, 9),
                    "sequence_num": 0,
                    "events": [{"type": "snapshot" if snapshot else "update", "trades": trades}],
                }
            )
        (r,) = rows
        if self.kind == "binance":
            data = {
                "e": "trade",
                "E": r["ms"] + 1,
                "s": r["symbol"],
                "t": r["id"],
                "p": f"{r['price']:.8f}",
                "q": f"{r['size']:.8f}",
                "T": r["ms"],
                "m": r["flag"],
                "M": True,
            }
            return orjson.dumps({"stream": f"{r['symbol'].lower()}@trade", "data": data})
        return orjson.dumps(
            {
                "type": "match",
                "trade_id": r["id"],
                "sequence": r["id"] * 3,
                "maker_order_id": "ac928c66-ca53-498f-9c13-a110027a60e8",
                "taker_order_id": "132fb6ae-456b-4654-b4e0-d681ac05cea1",
                "time": iso(r["ms"]),
                "product_id": self.product(r["symbol"]),
                "size": f"{r['size']:.8f}",
                "price": f"{r['price']:.2f}",
                "side": "buy" if r["flag"] else "sell",
            }
        )

    async def send_trades(
        self, ws: ServerConnection, symbol: str, n: int, *, drop: range | tuple[int, ...] = ()
    ) -> list[dict[str, Any]]:
        """``n`` new trades; those at positions in ``drop`` never reach the WebSocket (REST only)."""
        rows = [self._new_trade(symbol) for _ in range(n)]
        sent = [r for i, r in enumerate(rows) if i not in drop]
        if self.kind == "advanced":
            for start in range(0, len(sent), 4):  # batched, like the 250 ms batches
                await ws.send(self.frame(sent[start : start + 4]).decode())
        else:
            for r in sent:
                await ws.send(self.frame([r]).decode())
        return rows

    async def trickle(
        self, ws: ServerConnection, symbol: str, rounds: int, n: int = 2, pause: float = 0.1
    ) -> None:
        """``rounds`` times: ``n`` new trades, a heartbeat where the exchange has them (Coinbase), a pause."""
        for _ in range(rounds):
            await self.send_trades(ws, symbol, n)
            if self.kind != "binance":
                await self.heartbeat(ws)
            await asyncio.sleep(pause)

    async def resend(self, ws: ServerConnection, rows: list[dict[str, Any]]) -> None:
        """Trades sent before, again (what exchanges do around reconnects)."""
        if self.kind == "advanced":
            await ws.send(self.frame(rows).decode())
        else:
            for r in rows:
                await ws.send(self.frame([r]).decode())

    async def heartbeat(self, ws: ServerConnection) -> None:
        """Coinbase heartbeats: ``last_trade_id`` per product (Exchange), or a bare tick (Advanced)."""
        for symbol in self.symbols:
            last = self.history[symbol][-1]["id"] if self.history[symbol] else 0
            if self.kind == "coinbase":
                msg = {
                    "type": "heartbeat",
                    "sequence": last * 3 + 1,
                    "last_trade_id": last,
                    "product_id": self.product(symbol),
                    "time": iso(self.clock_ms()),
                }
            else:
                msg = {
                    "channel": "heartbeats",
                    "client_id": "",
                    "timestamp": iso(self.clock_ms(), 9),
                    "sequence_num": 0,
                    "events": [{"current_time": "now", "heartbeat_counter": last}],
                }
            await ws.send(orjson.dumps(msg).decode())

    # ------------------------------------------------------------------------------ protocol
    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return self._rest(connection, request)
        attempt = next(self._attempts)
        if attempt < len(self.scripts) and self.scripts[attempt] == "reject":
            self.connections.append({"path": request.path, "rejected": True})
            return connection.respond(503, "maintenance\n")
        return None

    async def ack(self, ws: ServerConnection, *, confirm: bool = True) -> None:
        """Read the client's subscribe message(s) and confirm them (Coinbase; Binance subscribes by URL)."""
        if self.kind == "binance":
            return
        record = self._records[id(ws)]
        wanted = 1 if self.kind == "coinbase" else 2
        while len(record["subscribed"]) < wanted:
            record["subscribed"].append(orjson.loads(await ws.recv()))
        if not confirm:
            return
        if self.kind == "coinbase":
            ack: dict[str, Any] = {
                "type": "subscriptions",
                "channels": [{"name": "matches", "product_ids": []}],
            }
        else:
            ack = {
                "channel": "subscriptions",
                "client_id": "",
                "timestamp": iso(self.clock_ms(), 9),
                "sequence_num": 0,
                "events": [{"subscriptions": {"market_trades": []}}],
            }
        await ws.send(orjson.dumps(ack).decode())

    async def _handle(self, ws: ServerConnection) -> None:
        index = len(self.connections)
        record = {"path": ws.request.path if ws.request else "", "subscribed": []}
        self.connections.append(record)
        self._records[id(ws)] = record
        script = self.scripts[index] if index < len(self.scripts) else None
        if callable(script):
            await script(self, ws)
        if index >= len(self.scripts) - 1:
            if not callable(script):
                await self.ack(ws)
            self.done.set()
            await self._idle(ws)

    async def _idle(self, ws: ServerConnection) -> None:
        """Stay connected; Coinbase feeds send heartbeats, as the real ones do every second."""
        while True:
            if self.kind != "binance":
                await self.heartbeat(ws)
            try:
                await asyncio.wait_for(ws.wait_closed(), 0.3)
                return
            except TimeoutError:
                continue

    def markets(self) -> Any:
        """The market list, as Binance ``exchangeInfo`` or Coinbase Exchange ``/products`` answer it."""
        if self.kind == "binance":
            return {
                "timezone": "UTC",
                "serverTime": self.clock_ms(),
                "rateLimits": [],
                "exchangeFilters": [],
                "symbols": [
                    {
                        "symbol": pair.replace("-", ""),
                        "status": "TRADING",
                        "baseAsset": pair.split("-")[0],
                        "baseAssetPrecision": 8,
                        "quoteAsset": pair.split("-")[1],
                        "quotePrecision": 8,
                        "quoteAssetPrecision": 8,
                        "isSpotTradingAllowed": True,
                        "permissionSets": [["SPOT"]],
                    }
                    for pair in self.pairs
                ],
            }
        return [
            {
                "id": pair,
                "base_currency": pair.split("-")[0],
                "quote_currency": pair.split("-")[1],
                "display_name": pair,
                "status": "online",
                "status_message": "",
                "trading_disabled": False,
            }
            for pair in self.pairs
        ]

    def _rest(self, connection: ServerConnection, request: Request) -> Response:
        url = urlsplit(request.path)
        self.rest_calls.append(request.path)
        if url.path in ("/api/v3/exchangeInfo", "/products"):
            if (url.path == "/products") == (self.kind == "binance"):
                return connection.respond(404, f'{{"message":"NotFound {url.path}"}}')
            return connection.respond(200, orjson.dumps(self.markets()).decode())
        if url.path in ("/api/v3/time", "/time") and not self.rest_time:
            return connection.respond(404, f'{{"message":"NotFound {url.path}"}}')
        if url.path == "/api/v3/time" and self.kind == "binance":
            return connection.respond(200, orjson.dumps({"serverTime": self.clock_ms()}).decode())
        if url.path == "/time" and self.kind != "binance":
            now = self.clock_ms()
            return connection.respond(200, orjson.dumps({"iso": iso(now, 3), "epoch": now / 1000}).decode())
        self.history_calls += 1
        if self.rest_throttle_first and self.history_calls == 1:
            response = connection.respond(429, "too many requests\n")
            response.headers["Retry-After"] = "0"
            return response
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        limit = int(query.get("limit", 1000))
        if self.kind == "binance" and url.path == "/api/v3/historicalTrades":
            rows = [
                r for r in self.history.get(query.get("symbol", ""), []) if r["id"] >= int(query["fromId"])
            ]
            body = [_binance_row(r) for r in sorted(rows, key=lambda r: r["id"])[:limit]]
        elif self.kind == "binance" and url.path == "/api/v3/trades" and not self.rest_latest:
            return connection.respond(503, "Service Unavailable\n")
        elif self.kind == "binance" and url.path == "/api/v3/trades":  # the newest `limit`, oldest first
            rows = self.history.get(query.get("symbol", ""), [])[-limit:]
            body = [_binance_row(r) for r in rows]
        elif self.kind != "binance" and url.path.startswith("/products/") and url.path.endswith("/trades"):
            product = url.path.split("/")[2]
            symbol = product.replace("-", "")
            rows = [r for r in self.history.get(symbol, []) if r["id"] < int(query["after"])]
            body = [
                {
                    "time": iso(r["ms"]),
                    "trade_id": r["id"],
                    "price": f"{r['price']:.8f}",
                    "size": f"{r['size']:.8f}",
                    "side": "buy" if r["flag"] else "sell",
                }
                for r in sorted(rows, key=lambda r: -r["id"])[:limit]
            ]
        else:
            return connection.respond(404, f'{{"message":"NotFound {url.path}"}}')
        return connection.respond(200, orjson.dumps(body).decode())


def _binance_row(r: dict[str, Any]) -> dict[str, Any]:
    """A trade as Binance's ``historicalTrades`` and ``trades`` answer it."""
    return {
        "id": r["id"],
        "price": f"{r['price']:.8f}",
        "qty": f"{r['size']:.8f}",
        "quoteQty": f"{r['price'] * r['size']:.8f}",
        "time": r["ms"],
        "isBuyerMaker": r["flag"],
        "isBestMatch": True,
    }
