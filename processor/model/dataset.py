"""Training data: 1 s candles from the Parquet archive or the database, turned into labelled rows.

Each market's candles (one venue's symbol, keyed ``exchange:symbol``) become features and labels on their
own grid (markets never mix inside a row, venues never mix in a market); the rows of all markets are then
pooled and ordered by time, which is the order walk-forward evaluation needs. One pooled model serves every
market: the features are returns and ratios, free of price scale.

Which venues: those asked for; by default every real venue that has candles, and the demo venue only when
nothing else has any (so `make demo` then `cryptostream train` works, and live data is never mixed with the
demo's).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from cryptostream import archive
from cryptostream.models import CANDLE_SCHEMA
from cryptostream.venues import DEMO
from processor.model.errors import NotEnoughData
from processor.model.features import FEATURES, LOOKBACK_SECONDS, grid_features, to_grid
from processor.model.labels import last_direction, up_labels

__all__ = [
    "Candles",
    "Dataset",
    "build_dataset",
    "choose_markets",
    "load_candles",
    "market_key",
    "table_to_candles",
]

Candles = dict[
    str, npt.NDArray[Any]
]  # the processor's `recent` shape: bucket (int64 ms), open, ... sell_volume
Source = Literal["archive", "database"]
FIELDS = CANDLE_SCHEMA.names[2:]  # bucket .. sell_volume
_ALL_ROWS = 2**62  # "no limit" for the read store's newest-N query


def table_to_candles(table: pa.Table) -> Candles:
    """Columns of a ``CANDLE_SCHEMA`` table (sorted by bucket) as NumPy arrays, bucket in epoch ms."""
    out = {name: table[name].to_numpy() for name in FIELDS if name != "bucket"}
    out["bucket"] = table["bucket"].cast(pa.int64()).to_numpy()
    return out


@dataclass(frozen=True, slots=True)
class Dataset:
    """Labelled rows of every symbol, ordered by time (then symbol)."""

    symbols: list[str]
    horizon_s: int
    x: npt.NDArray[np.float64]  # rows x FEATURES
    y: npt.NDArray[np.int8]  # 1 = the close rose over the horizon
    time: npt.NDArray[np.int64]  # bucket (ms) of the row
    symbol: npt.NDArray[np.int32]  # index into ``symbols``
    persistence: npt.NDArray[np.int8]  # the last-direction baseline's guess
    candles: int  # candles read, before rows without lookback or label were dropped
    no_order_flow: int = 0  # rows left out for candles without buy/sell volume (imported ones)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def features(self) -> tuple[str, ...]:
        return FEATURES


# Features other than the order-flow imbalances: finite in every row a candle without sides would give.
_NOT_FLOW = np.array([not name.startswith("imbalance") for name in FEATURES])


def build_dataset(candles: Mapping[str, Candles], horizon_s: int) -> Dataset:
    """Rows with full lookback, a known label and a defined persistence guess, for every symbol."""
    symbols = sorted(s for s, c in candles.items() if c["bucket"].shape[0])
    xs, ys, ts, ss, ps = [], [], [], [], []
    total = flowless = 0
    for code, name in enumerate(symbols):
        grid = to_grid(candles[name], max_gap_s=max(LOOKBACK_SECONDS, horizon_s) + 1)
        at = grid.index
        total += int(at.shape[0])
        x = grid_features(grid, at)
        y, known = up_labels(grid, at, horizon_s)
        guess, defined = last_direction(grid, at, horizon_s)
        finite = np.isfinite(x)
        keep = known & defined & finite.all(axis=1)
        flowless += int((known & defined & ~keep & finite[:, _NOT_FLOW].all(axis=1)).sum())
        xs.append(x[keep])
        ys.append(y[keep])
        ts.append(np.asarray(candles[name]["bucket"], dtype=np.int64)[keep])
        ss.append(np.full(int(keep.sum()), code, dtype=np.int32))
        ps.append(guess[keep])
    if not symbols:
        raise NotEnoughData("no candles to train on: the archive (or database) holds none for these symbols")
    time = np.concatenate(ts)
    symbol = np.concatenate(ss)
    order = np.lexsort((symbol, time))
    return Dataset(
        symbols=symbols,
        horizon_s=horizon_s,
        x=np.concatenate(xs)[order],
        y=np.concatenate(ys)[order],
        time=time[order],
        symbol=symbol[order],
        persistence=np.concatenate(ps)[order],
        candles=total,
        no_order_flow=flowless,
    )


def min_history_seconds(horizon_s: int) -> int:
    """Seconds of candles a symbol needs before its first usable row."""
    return max(LOOKBACK_SECONDS, horizon_s) + horizon_s


def market_key(exchange: str, symbol: str) -> str:
    return f"{exchange}:{symbol}"


def choose_markets(
    stored: Iterable[tuple[str, str]],
    exchanges: Iterable[str] | None,
    symbols: Iterable[str] | None,
    left_out: list[tuple[str, str]] | None = None,
) -> list[tuple[str, str]]:
    """The (exchange, symbol) markets to train on (see the module docstring for the default). Markets are
    stored but none is what was asked for: :class:`NotEnoughData` naming what is stored. The demo venue's
    markets the default leaves out are added to ``left_out`` (to say so if training then has too little)."""
    stored_markets = sorted(set(stored))
    markets = stored_markets
    if symbols is not None:
        wanted = set(symbols)
        markets = [m for m in markets if m[1] in wanted]
    if exchanges is not None:
        venues = set(exchanges)
        markets = [m for m in markets if m[0] in venues]
    else:
        real = [m for m in markets if m[0] != DEMO]
        if real and left_out is not None:
            left_out.extend(m for m in markets if m[0] == DEMO)
        markets = real or markets
    if stored_markets and not markets:
        asked = [f"exchanges {','.join(sorted(set(exchanges)))}" if exchanges is not None else ""]
        asked.append(f"symbols {','.join(sorted(set(symbols)))}" if symbols is not None else "")
        held: dict[str, int] = {}
        for exchange, _ in stored_markets:
            held[exchange] = held.get(exchange, 0) + 1
        raise NotEnoughData(
            f"no stored market matches {' and '.join(a for a in asked if a)}: candles are stored for "
            + ", ".join(f"{venue} ({n} symbol{'s' * (n > 1)})" for venue, n in held.items())
        )
    return markets


def _load_archive(
    root: Path,
    markets: list[tuple[str, str]],
    start: datetime | None,
    end: datetime | None,
    step: Callable[[str], None],
) -> dict[str, Candles]:
    out = {}
    for exchange, symbol in markets:
        key = market_key(exchange, symbol)
        out[key] = table_to_candles(archive.load(root, "ohlc", exchange, symbol, start, end, unique=True))
        step(key)
    return out


async def _load_database(
    dsn: str,
    exchanges: list[str] | None,
    symbols: list[str] | None,
    start: datetime | None,
    end: datetime | None,
    step: Callable[[str], None],
    left_out: list[tuple[str, str]] | None,
) -> dict[str, Candles]:
    from cryptostream.store import DatabaseStore

    store = await DatabaseStore.connect(dsn)
    try:
        stored = await store.markets()
        pairs = zip(stored["exchange"].to_pylist(), stored["symbol"].to_pylist(), strict=True)
        out = {}
        for exchange, symbol in choose_markets(pairs, exchanges, symbols, left_out):
            key = market_key(exchange, symbol)
            table = await store.candles(exchange, symbol, start, end, limit=_ALL_ROWS, interval="1s")
            out[key] = table_to_candles(table)
            step(key)
        return out
    finally:
        await store.close()


def load_candles(
    source: Source,
    *,
    output_dir: Path,
    database_dsn: str | None,
    symbols: list[str] | None = None,
    exchanges: list[str] | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    step: Callable[[str], None] = lambda _market: None,
    left_out: list[tuple[str, str]] | None = None,
) -> dict[str, Candles]:
    """Each market's 1 s candles with ``start <= bucket < end``, keyed ``exchange:symbol``, from the Parquet
    archive or the database (markets: :func:`choose_markets`, which adds the demo markets it leaves out to
    ``left_out``). ``step`` is called after each market."""
    if source == "archive":
        markets = choose_markets(archive.list_markets(output_dir), exchanges, symbols, left_out)
        return _load_archive(output_dir, markets, start, end, step)
    if not database_dsn:
        from cryptostream.errors import SettingsError

        raise SettingsError(
            "DATABASE_URL is not set: training from the database needs one (or use the archive)"
        )
    return asyncio.run(_load_database(database_dsn, exchanges, symbols, start, end, step, left_out))
