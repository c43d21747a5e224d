"""Symbols are normalized in one place."""

from __future__ import annotations

import pytest

from cryptostream.errors import UnsupportedSymbol
from cryptostream.symbols import normalize_symbol, split_symbol, to_binance_stream, to_coinbase_product


@pytest.mark.parametrize(
    ("raw", "symbol"),
    [("BTC-USD", "BTCUSD"), ("btcusdt", "BTCUSDT"), ("eth/usdc", "ETHUSDC"), (" SOL_USDT ", "SOLUSDT")],
)
def test_exchange_spellings_normalize(raw: str, symbol: str) -> None:
    assert normalize_symbol(raw) == symbol


@pytest.mark.parametrize("raw", ["", "B", "BTC USD$", "🚀USD", "X" * 30])
def test_unsupported_symbols_raise_their_own_error(raw: str) -> None:
    with pytest.raises(UnsupportedSymbol):
        normalize_symbol(raw)


def test_exchange_names_of_a_symbol() -> None:
    assert split_symbol("BTCUSDT") == ("BTC", "USDT")  # not BTCUSD + T
    assert to_coinbase_product("ETHUSD") == "ETH-USD"
    assert to_binance_stream("BTCUSDT") == "btcusdt"
    with pytest.raises(UnsupportedSymbol):
        split_symbol("ABCXYZ")
