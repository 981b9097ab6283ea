"""A node listening on an IPv6 address, following an authority service on IPv6 loopback.

The directory takes an IPv6 peer address only bracketed (``[::1]:7443``: without the
brackets, which colon starts the port?), and a node on ``grpc_host ::1`` published
``::1:7443``: the authority refused its entry at every refresh and no member found it
(fixed in e9696d8: `util.urls.host_port` in `node.serving.directory_follower`).

- The node's directory follower, as ``node start`` wires it (`directory_follower` over a
  real node directory and context), publishes to a real ``authority serve`` on
  ``https://[::1]:PORT``, and the authority's signed directory lists ``[::1]:PORT``.
- A whole node joined over IPv6 with ``--grpc-host ::1`` starts and is listed bracketed.
  Its gRPC server bound ``f"{host}:{port}"`` (``::1:PORT``, which gRPC cannot parse), so
  such a node exited at start (`node.rpc.server.build_server`, `node.host.refusal`: now
  `util.urls.host_port`).

Skipped where the machine has no IPv6 loopback. Nothing is timed: polls have a generous
deadline.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qdspace.node.config import NodeSettings
from qdspace.node.context import build_context
from qdspace.node.identity.authority import Authority
from qdspace.node.identity.directory_document import accept_document
from qdspace.node.init import init_node
from qdspace.node.layout import NodeLayout
from qdspace.node.localnet.authority import AuthorityProcess
from qdspace.node.localnet.network import LocalNetwork, MemberProcess, MemberSpec
from qdspace.node.serving import directory_follower
from qdspace.util.ports import free_port

from .authority_service import Service, authority_service

DEADLINE_S = 60.0
SPACE = "v6-space"


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback (::1) on this machine"),
]


def _peers_listed(service: Service) -> dict[str, str]:
    """Name -> peer address of the entries in the service's signed directory, verified."""
    accepted = accept_document(
        service.http.get("/v1/directory").json(),
        ca_cert=service.authority.cert,
        space=SPACE,
        held_serial=None,
        is_revoked=lambda serial: False,
    )
    assert not accepted.dropped, accepted.dropped
    return {e.name: e.peer for e in accepted.entries}


def test_the_follower_of_a_node_on_ipv6_publishes_its_address_bracketed(
    tmp_path: Path,
) -> None:
    Authority.init(tmp_path / "authority", SPACE)
    settings = init_node(
        tmp_path / "cellex",
        tmp_path / "authority",
        name="cellex",
        role="supplier",
        db_url=f"sqlite:///{tmp_path / 'cellex.db'}",
    )
    service = AuthorityProcess(tmp_path / "authority", host="::1", hostnames=["::1"])
    url = service.start()
    try:
        assert url.startswith("https://[::1]:")
        settings = settings.model_copy(update={"grpc_host": "::1", "authority_url": url})
        ctx = build_context(settings)
        try:
            follower = directory_follower(ctx, 7443)
            assert follower is not None
            try:
                follower.refresh_directory()  # publishes our entry: the directory lacks it
                held = follower.fetch_directory()
            finally:  # its HTTPS client (a node leaves it to its exit)
                follower._authority.close()  # type: ignore[attr-defined]
        finally:
            ctx.close()
    finally:
        service.stop()
    assert {e.name: e.peer for e in held.entries} == {"cellex": "[::1]:7443"}


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    with authority_service(tmp_path / "authority", SPACE, "::1", ["::1"]) as served:
        yield served


def _join(service: Service, workdir: Path, spec: MemberSpec) -> MemberProcess:
    directory = workdir / "nodes" / spec.name
    code_file = workdir / f"{spec.name}.code"
    code_file.write_text(str(service.authority.create_enrollment(name=spec.name, role=spec.role)))
    grpc_port, api_port, regulator_port = free_port("::1"), free_port(), free_port()
    done = subprocess.run(
        [
            sys.executable, "-m", "qdspace", "node", "join", "--dir", str(directory),
            "--authority-url", service.url, "--code-file", str(code_file),
            "--grpc-host", "::1", "--grpc-port", str(grpc_port),
            "--api-port", str(api_port), "--regulator-port", str(regulator_port),
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    settings = NodeSettings.load(directory)
    assert settings.grpc_host == "::1" and not settings.advertise_peer  # nothing spelled out
    fast = {"crl_refresh_s": 0.5, "directory_refresh_s": 0.5}
    settings.model_copy(update=fast).save()
    token = NodeLayout(directory).operator_token.read_text().strip()
    return MemberProcess(spec, directory, grpc_port, api_port, regulator_port, token=token)


def test_a_node_joined_over_ipv6_is_listed_bracketed(service: Service, tmp_path: Path) -> None:
    spec = MemberSpec("sunarc", "oem")
    member = _join(service, tmp_path, spec)
    network = LocalNetwork(tmp_path, members=(), chain=False)
    network.members[spec.name] = member
    try:
        network.start()
        deadline = time.monotonic() + DEADLINE_S
        while spec.name not in (listed := _peers_listed(service)):
            if time.monotonic() > deadline:
                log = member.log_path.read_text(errors="replace")[-2000:]
                pytest.fail(f"sunarc not in the directory within {DEADLINE_S:.0f}s:\n{log}")
            time.sleep(0.2)
    finally:
        network.stop()
    assert listed[spec.name] == f"[::1]:{member.grpc_port}"
