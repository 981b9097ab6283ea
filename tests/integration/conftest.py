"""Integration fixtures: a local data space of real node processes on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from node.launcher import LocalNetwork


@pytest.fixture(scope="session")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    """The reference members (OEM, two suppliers, regulator), started once per session."""
    net = LocalNetwork(tmp_path_factory.mktemp("space"))
    net.create()
    net.start()
    try:
        yield net
    finally:
        net.stop()
