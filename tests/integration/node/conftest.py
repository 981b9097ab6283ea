"""Helpers of the node's integration tests over real node processes' REST APIs."""

from __future__ import annotations

import time
from typing import Any

import httpx


def ok(response: httpx.Response) -> Any:
    """The JSON of a successful answer (an assertion naming the status and body else)."""
    assert response.status_code < 400, f"HTTP {response.status_code}: {response.text}"
    return response.json()


def wait_for(what: str, probe: Any, timeout: float = 30.0) -> Any:
    """`probe()`'s first truthy value within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := probe():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
