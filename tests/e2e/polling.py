"""What the end-to-end pipelines share: a GraphQL call, and polling for a condition while watching for
failure."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx


def graphql(url: str, query: str, **variables: Any) -> dict[str, Any]:
    """The ``data`` of a GraphQL query to the API at ``url``; a GraphQL error fails the test."""
    r = httpx.post(f"{url}/graphql", json={"query": query, "variables": variables}, timeout=10)
    r.raise_for_status()
    body = r.json()
    assert "errors" not in body, body["errors"]
    data: dict[str, Any] = body["data"]
    return data


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, *, failure: Callable[[], str | None], every: float
) -> float:
    """Seconds until ``check()`` holds (errors while the API starts count as "not yet"); ``failure()``
    returning a message stops the wait at once."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if (message := failure()) is not None:
            raise AssertionError(message)
        try:
            if check():
                return time.monotonic() - start
        except (httpx.HTTPError, AssertionError, KeyError):
            pass
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout} s")
