"""Symbol spellings are read in one place; what an exchange calls a pair is its own list's business."""

from __future__ import annotations

import pytest

from cryptostream import symbols
from cryptostream.errors import UnsupportedSymbol
from cryptostream.symbols import normalize_symbol, split_pair


@pytest.mark.parametrize(
    ("raw", "symbol"),
    [("BTC-USD", "BTCUSD"), ("btcusdt", "BTCUSDT"), ("eth/usdc", "ETHUSDC"), (" SOL_USDT ", "SOLUSDT")],
)
def test_exchange_spellings_normalize(raw: str, symbol: str) -> None:
    assert normalize_symbol(raw) == symbol


@pytest.mark.parametrize(
    "raw", ["", "B", "BTC USD$", "🚀USD", "X" * 30, "btcuſdt", "ethuß", "ﬀusd", "ＢＴＣＵＳＤ"]
)
def test_unsupported_symbols_raise_their_own_error(raw: str) -> None:
    with pytest.raises(UnsupportedSymbol):
        normalize_symbol(raw)


@pytest.mark.parametrize(
    ("raw", "pair"),
    [
        ("DOT-USD", ("DOT", "USD")),
        ("dot/usd", ("DOT", "USD")),
        ("1inch_usd", ("1INCH", "USD")),
        (" USDT-USD ", ("USDT", "USD")),
        ("ETH:BTC", ("ETH", "BTC")),
        ("DOTUSD", None),  # only the exchange's market list can split a concatenation
        ("btcusdt", None),
    ],
)
def test_a_separator_splits_a_pair_exactly_where_it_stands(raw: str, pair: tuple[str, str] | None) -> None:
    assert split_pair(raw) == pair


@pytest.mark.parametrize("raw", ["BTC-USD-X", "-USD", "BTC-", "B$-USD", "X-" + "Y" * 30])
def test_a_broken_pair_raises_the_symbol_error(raw: str) -> None:
    with pytest.raises(UnsupportedSymbol):
        split_pair(raw)


def test_no_exchange_id_is_guessed_from_a_string() -> None:
    """Issue #14: DOTUSD became DO-TUSD. The helpers that guessed are gone; ids come from markets."""
    assert symbols.__all__ == ["normalize_symbol", "split_pair"]
