"""Store failures in the API's log: one line per kind and minute, a traceback only where code is to see."""

from __future__ import annotations

import logging

import asyncpg
import pytest

from graphql_api.failures import StoreFailures


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _said(caplog: pytest.LogCaptureFixture) -> list[tuple[str, bool]]:
    """(message, with a traceback) of each ERROR line."""
    return [(r.getMessage(), r.exc_info is not None) for r in caplog.records if r.levelno >= logging.ERROR]


def test_an_outage_is_one_line_a_minute_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """A database down failed every request with a traceback each: 50 requests a second, 50 tracebacks."""
    caplog.set_level(logging.DEBUG)
    clock = Clock()
    failures = StoreFailures(logging.getLogger("test.failures"), every_s=60, clock=clock)
    refused = ConnectionRefusedError(111, "Connection refused")
    for i in range(500):
        clock.now = i * 0.1  # 50 s of requests
        failures.failed("GET /api/ohlc/", refused)
    shutting = asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command")
    failures.failed("GraphQL", shutting)
    assert _said(caplog) == [
        (
            "GET /api/ohlc/: the store does not answer: ConnectionRefusedError: [Errno 111] Connection "
            "refused",
            False,
        ),
        (
            "GraphQL: the store does not answer: AdminShutdownError: terminating connection due to "
            "administrator command",
            False,
        ),
    ]
    caplog.clear()
    clock.now = 61.0  # a minute after it was first said: said again, with how many it failed meanwhile
    failures.failed("GET /api/volatility/", refused)
    assert _said(caplog) == [
        (
            "GET /api/volatility/: the store does not answer: ConnectionRefusedError: [Errno 111] Connection "
            "refused (and 499 more requests since it was last said)",
            False,
        )
    ]


def test_a_failure_in_the_store_s_use_keeps_its_traceback_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Not migrated (a table missing) or a query the server refuses is ours to see: the traceback stays."""
    clock = Clock()
    failures = StoreFailures(logging.getLogger("test.failures"), every_s=60, clock=clock)
    missing = asyncpg.exceptions.UndefinedTableError('relation "ohlc_1s" does not exist')
    for _ in range(3):
        failures.failed("GraphQL", missing)
    assert _said(caplog) == [('GraphQL: the store failed: relation "ohlc_1s" does not exist', True)]


def test_the_kinds_remembered_are_bounded() -> None:
    failures = StoreFailures(logging.getLogger("test.failures"), clock=Clock())
    for i in range(1_000):
        failures.failed("GraphQL", OSError(f"error {i}"))
    assert len(failures.seen) == 256
