"""Lifecycle steps of one hosted tenant asked at the same time run one after the other,
each on the tenant as the one before left it: the registry, the host's list and what
serves agree afterwards.

A ``tenant renew`` opens the tenant again (`HostRuntime.reopen`: closes the serving
object, opens a new one). A removal or a suspension asked meanwhile used to act on the
object the reopen had closed: the removal "succeeded" (registry entry and directory
deleted) while the reopened tenant went on serving, out of the host operator's reach;
the suspension was answered and recorded while the reopened tenant served its staff.
Asked while the reopen was opening the tenant, both were answered "no such tenant".

A real host process (`race_host`: the real host, in which the reopen's closing or
opening of a tenant is held until the test lets it go) serves real tenants over TLS.
Nothing is timed: the reopen is held, the second step is sent and reaches the host
(the host notes it), then the reopen is let go.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from qdspace.node.host.registry import Registry
from qdspace.node.localnet.network import LocalNetwork
from qdspace.util.ports import free_port

from .conftest import Host, eventually, qdspace

pytestmark = pytest.mark.integration

HELD_AT = ("drop", "open")  # the reopen held as it closes the tenant, or as it opens it
LEAVERS = {at: f"leaver-{at}" for at in HELD_AT}
PAUSED = {at: f"paused-{at}" for at in HELD_AT}


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    workdir = tmp_path_factory.mktemp("host-races")
    net = LocalNetwork(workdir, members=(), chain=False)
    net.create()
    gate = workdir / "gate"
    gate.mkdir()
    names = [*LEAVERS.values(), *PAUSED.values()]
    hosted = Host(
        workdir,
        workdir / "H",
        net,
        free_port(),
        {name: free_port() for name in names},
        launcher=(str(Path(__file__).with_name("race_host.py")),),
        env={"QDSPACE_RACE_GATE": str(gate)},
    )
    done = qdspace("host", "init", "--dir", str(hosted.directory), "--api-port",
                   str(hosted.api_port))  # fmt: skip
    assert done.returncode == 0, done.stderr
    for name in names:
        hosted.add_tenant(name, "supplier")
    try:
        hosted.start()
        yield hosted
    finally:
        hosted.stop()


def _post(host: Host, path: str, body: Any = None) -> httpx.Response:
    with host.client(host.host_token()) as admin:
        answer: httpx.Response = admin.post(path, json=body)
    return answer


def _race(
    host: Host, name: str, held_at: str, step: str, send: Callable[[], httpx.Response]
) -> tuple[httpx.Response, httpx.Response]:
    """Reopen `name` (as ``tenant renew`` does), held as it closes or opens the tenant;
    `send` the other step while it is held, and once the host noted that `step` arrived
    let the reopen go. The answers of both."""
    gate = host.workdir / "gate"
    for old in gate.iterdir():
        old.unlink()
    (gate / f"hold-{held_at}").write_text(name)
    with ThreadPoolExecutor(2) as pool:
        reopen: Future[httpx.Response] = pool.submit(_post, host, f"/host/v1/tenants/{name}/reopen")
        eventually(
            lambda: (gate / f"held-{held_at}").exists() or reopen.done(),
            f"the reopen of {name} to be held at its {held_at}",
        )
        assert not reopen.done(), reopen.result().text
        other = pool.submit(send)
        eventually(
            lambda: (gate / f"entered-{step}").exists() or other.done(),
            f"the {step} of {name} to reach the host",
        )
        (gate / "release").touch()
        return reopen.result(), other.result()


def _staff_status(host: Host, name: str) -> int:
    """How the host answers the tenant's own staff (its operator token)."""
    with host.client(host.tokens[name]) as staff:
        status: int = staff.get("/v1/node").status_code
    return status


def _listed(host: Host) -> dict[str, dict[str, Any]]:
    with host.client(host.host_token()) as admin:
        listed = admin.get("/host/v1/tenants")
    assert listed.status_code == 200, listed.text
    return {t["name"]: t for t in listed.json()}


def _grpc_listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            return True
    except ConnectionRefusedError:
        return False


@pytest.mark.parametrize("held_at", HELD_AT)
def test_a_removal_racing_a_renewal_removes_the_renewed_tenant(host: Host, held_at: str) -> None:
    name = LEAVERS[held_at]
    assert _staff_status(host, name) == 200 and _grpc_listening(host.ports[name])

    def remove() -> httpx.Response:
        return _post(host, f"/host/v1/tenants/{name}/remove", {"confirm": name})

    reopened, removed = _race(host, name, held_at, "remove", remove)
    assert reopened.status_code == 200, reopened.text
    assert removed.status_code == 200, removed.text  # (not "no tenant": it waited)
    assert removed.json()["name"] == name and removed.json()["purged"] is True
    # gone from the book, the disk and the list, and nothing of it serves
    assert name not in [r.name for r in Registry(host.directory).tenants()]
    assert not (host.directory / "tenants" / name).exists()
    assert name not in _listed(host)
    assert _staff_status(host, name) == 401
    assert not _grpc_listening(host.ports[name])  # the reopened instance was the one removed
    again = _post(host, f"/host/v1/tenants/{name}/remove", {"confirm": name})
    assert again.status_code == 404, again.text


@pytest.mark.parametrize("held_at", HELD_AT)
def test_a_suspension_racing_a_renewal_suspends_the_renewed_tenant(
    host: Host, held_at: str
) -> None:
    name = PAUSED[held_at]
    assert _staff_status(host, name) == 200

    def suspend() -> httpx.Response:
        return _post(host, f"/host/v1/tenants/{name}/suspend", {"reason": "compromised key"})

    reopened, suspended = _race(host, name, held_at, "suspend", suspend)
    assert reopened.status_code == 200, reopened.text
    assert suspended.status_code == 200, suspended.text  # (not "no tenant": it waited)
    assert suspended.json()["status"] == "suspended"
    # the book, the list and the tenant serving agree: suspended
    assert Registry(host.directory).get(name).state.value == "suspended"
    assert _listed(host)[name]["status"] == "suspended"
    assert _staff_status(host, name) == 423
    done = qdspace("host", "tenant", "resume", "--dir", str(host.directory), "--name", name)
    assert done.returncode == 0, done.stderr
    assert _staff_status(host, name) == 200
