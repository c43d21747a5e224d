"""cryptostream core: domain models, settings, codecs, Kafka helpers, embedded infrastructure, read layer."""

from cryptostream.errors import CryptostreamError, SettingsError
from cryptostream.models import Trade, TradeColumns
from cryptostream.settings import Settings, load_settings

__all__ = ["CryptostreamError", "Settings", "SettingsError", "Trade", "TradeColumns", "load_settings"]
__version__ = "0.1.0"
