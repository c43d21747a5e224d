"""The request context resolvers see: the read store and the settings."""

from __future__ import annotations

from dataclasses import dataclass

from strawberry.fastapi import BaseContext

from cryptostream.settings import Settings
from cryptostream.store import ReadStore

__all__ = ["Context"]


@dataclass
class Context(BaseContext):
    store: ReadStore
    settings: Settings

    def __post_init__(self) -> None:
        super().__init__()
