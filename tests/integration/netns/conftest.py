"""Fixtures for tests across network namespaces: a LAN of hosts, torn down whatever happens.

The tests here need root (``ip netns``, veth pairs, a bridge); elsewhere they skip with
the reason. When one fails, the tail of every process's log (nodes, chain, PostgreSQL,
the authority) and of every command run on a host is attached to the failure report.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from .hosts import Lan, unavailable_reason

ROOT = Path(__file__).resolve().parents[3]
LAN_KEY = pytest.StashKey[Lan]()


def lan_env() -> dict[str, str]:
    """The environment of every process on the LAN: this checkout first on the path."""
    path = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    env["PYTHONUNBUFFERED"] = "1"
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        env.pop(proxy, None)  # the hosts' addresses are reached directly
    return env


def make_lan(request: pytest.FixtureRequest, workdir: Path, hosts: list[str]) -> Iterator[Lan]:
    """A LAN of ``hosts`` under ``workdir``, registered for failure reports, always destroyed."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    lan = Lan(workdir, hosts, lan_env())
    request.config.stash[LAN_KEY] = lan
    try:
        lan.create()
        yield lan
    finally:
        lan.destroy()
        del request.config.stash[LAN_KEY]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    lan = item.config.stash.get(LAN_KEY, None)
    if lan is not None and report.failed:
        for title, tail in lan.report():
            report.sections.append((f"netns {title}", tail))
    return report
