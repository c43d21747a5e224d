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


def test_a_symbol_padded_past_its_length_is_refused_before_anything_is_kept() -> None:
    """Separators and spaces are dropped when normalizing, so a valid symbol could be padded to any size and
    kept at that size in the cache: one API client filled 1 GB with 900 requests. Over MAX_WRITTEN
    characters it is refused, with a short message (the padding is not echoed back)."""
    assert normalize_symbol("BTC" + " " * (symbols.MAX_WRITTEN - 7) + "USDT") == "BTCUSDT"  # the longest
    before = symbols._normalize.cache_info().currsize
    for i in range(20):
        with pytest.raises(UnsupportedSymbol, match=r"\(100\d{3} characters\)") as refused:
            normalize_symbol("BTC" + " " * (100_000 + i) + "USDT")
        assert len(str(refused.value)) < 200
    assert symbols._normalize.cache_info().currsize == before
