"""The namespace harness itself: hosts are separate, and nothing outlives a LAN.

A LAN that leaked namespaces, links or processes would eat a CI machine run by run, and
hosts that shared a loopback would let a service bound to the wrong address pass the
data-space test; both are checked here on a two-host LAN (seconds).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import make_lan
from .hosts import Lan, ip, namespaces, remove_stale, unavailable_reason, wait_for

pytestmark = pytest.mark.integration

SERVER = (
    "import http.server, sys; "
    "http.server.HTTPServer((sys.argv[1], 8080), http.server.SimpleHTTPRequestHandler)"
    ".serve_forever()"
)
FETCH = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).status)"


def _pids(netns: str) -> list[int]:
    done = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
    return sorted(int(p) for p in done.stdout.split())


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@pytest.fixture
def lan(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lan]:
    yield from make_lan(request, tmp_path, ["alpha", "beta"])


def test_hosts_reach_each_other_by_address_and_share_no_loopback(lan: Lan) -> None:
    alpha, beta = lan["alpha"], lan["beta"]
    assert alpha.ip != beta.ip and alpha.ip.rsplit(".", 1)[0] == lan.subnet
    server = beta.spawn("http", [sys.executable, "-c", SERVER, "0.0.0.0"])
    fetch = [sys.executable, "-c", FETCH]
    wait_for(
        "beta's server",
        lambda: alpha.run([*fetch, f"http://{beta.ip}:8080/"], check=False).returncode == 0,
        30,
        watch=[server],
    )
    assert beta.run([*fetch, "http://127.0.0.1:8080/"]).stdout.strip() == "200"
    # alpha's loopback is alpha's own: beta's server is not there
    assert alpha.run([*fetch, "http://127.0.0.1:8080/"], check=False).returncode != 0


def test_destroy_leaves_no_namespace_link_or_process(lan: Lan) -> None:
    server = lan["alpha"].spawn("http", [sys.executable, "-c", SERVER, lan["alpha"].ip])
    # a grandchild that no Service tracks: only `ip netns pids` finds it
    orphan = lan["beta"].spawn("sleeper", ["sh", "-c", "sleep 300 & wait"])
    inside = wait_for("the sleeper's child", lambda: _pids(lan["beta"].netns)[1:], 10)
    lan.destroy()
    assert server.process.poll() is not None and orphan.process.poll() is not None
    assert not [pid for pid in inside if _alive(pid)], inside
    assert not [n for n in namespaces() if n.startswith(lan.tag)]
    assert lan.console_link not in ip("-o", "link", "show")


def test_namespaces_of_dead_runs_are_removed_and_live_ones_kept() -> None:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale, live = f"qdn-{dead.pid}-0dead0-x", f"qdn-{os.getpid()}-0live0-x"
    for name in (stale, live):
        ip("netns", "add", name)
    try:
        removed = remove_stale()
        assert stale in removed and live not in removed
        assert stale not in namespaces() and live in namespaces()
    finally:
        for name in (stale, live):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
