"""A hosted tenant that joined with the authority service's URL and a code: it follows
the service from inside the host (publishes its entry at the host's address), and a
self-hosted member that joined the same way finds it in the directory and calls it.
A code for another name or role is refused before it is spent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qdspace.node.config import NodeSettings
from qdspace.node.host.registry import Registry
from qdspace.node.identity.authority import Authority
from qdspace.node.layout import NodeLayout
from qdspace.node.localnet.authority import AuthorityProcess
from qdspace.node.localnet.network import LocalNetwork, MemberProcess, MemberSpec
from qdspace.util.ports import free_port

from .conftest import Host, eventually, qdspace

pytestmark = pytest.mark.integration

FAST = {"crl_refresh_s": 0.5, "directory_refresh_s": 0.5}


@dataclass
class Space:
    workdir: Path
    authority: Authority
    url: str
    host: Host


def _code_file(workdir: Path, authority: Authority, name: str, role: str) -> Path:
    path = workdir / f"{name}.code"
    path.write_text(str(authority.create_enrollment(name=name, role=role)) + "\n")
    return path


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Space]:
    workdir = tmp_path_factory.mktemp("host-join")
    authority = Authority.init(workdir / "authority", "join-space")
    service = AuthorityProcess(authority.directory)
    url = service.start()
    net = LocalNetwork(workdir, members=(), chain=False)
    port = free_port()
    host = Host(workdir, workdir / "H", net, free_port(), {"siliwafer": port, "dsp": free_port()})
    try:
        done = qdspace("host", "init", "--dir", str(host.directory), "--api-port",
                       str(host.api_port))  # fmt: skip
        assert done.returncode == 0, done.stderr
        code = _code_file(workdir, authority, "siliwafer", "supplier")
        done = qdspace("host", "tenant", "add", "--dir", str(host.directory), "--name",
                       "siliwafer", "--role", "supplier", "--authority-url", url,
                       "--code-file", str(code), "--grpc-port", str(port),
                       "--dsp-port", str(host.ports["dsp"]))  # fmt: skip
        assert done.returncode == 0, done.stderr
        tenant = host.directory / "tenants" / "siliwafer"
        NodeSettings.load(tenant).model_copy(update=FAST).save()
        # a self-hosted member joins the same space with a code of its own
        sunarc = workdir / "nodes" / "sunarc"
        ports = (free_port(), free_port(), free_port())
        code = _code_file(workdir, authority, "sunarc", "oem")
        done = qdspace("node", "join", "--dir", str(sunarc), "--authority-url", url,
                       "--code-file", str(code), "--grpc-port", str(ports[0]),
                       "--api-port", str(ports[1]), "--regulator-port", str(ports[2]))  # fmt: skip
        assert done.returncode == 0, done.stderr
        NodeSettings.load(sunarc).model_copy(update=FAST).save()
        token = NodeLayout(sunarc).operator_token.read_text().strip()
        net.members["sunarc"] = MemberProcess(
            MemberSpec("sunarc", "oem"), sunarc, *ports, token=token
        )
        net.start()
        host.start()
        yield Space(workdir, authority, url, host)
    finally:
        host.stop()
        net.stop()
        service.stop()


def _entry(space: Space, name: str) -> dict[str, Any] | None:
    path = space.authority.files.member_directory
    try:
        document = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return next((e for e in document["entries"] if e["name"] == name), None)


def test_a_joined_tenant_publishes_its_host_address_and_is_called(space: Space) -> None:
    port = space.host.ports["siliwafer"]
    entry = eventually(lambda: _entry(space, "siliwafer"), "the tenant's directory entry")
    assert entry["endpoints"]["peer"] == f"127.0.0.1:{port}"
    # its DSP listener, published where the host advertises its tenants (callbacks go there)
    assert entry["endpoints"]["dsp"] == f"127.0.0.1:{space.host.ports['dsp']}"
    settings = NodeSettings.load(space.host.directory / "tenants" / "siliwafer")
    assert settings.authority_url == space.url and settings.member_id == entry["member_id"]
    sunarc = space.host.net["sunarc"]

    def hello() -> dict[str, Any] | None:
        with sunarc.client() as client:
            answer = client.post("/v1/peers/siliwafer/hello")
        return answer.json() if answer.status_code == 200 else None

    answer = eventually(hello, "sunarc finds the hosted tenant in the directory and calls it")
    assert answer["peer_member_id"] == entry["member_id"] and answer["seen_as"] == "sunarc"


def test_a_code_for_another_name_or_role_is_refused_unspent(space: Space) -> None:
    host_dir = str(space.host.directory)
    wrong_role = _code_file(space.workdir, space.authority, "cellex", "oem")
    done = qdspace("host", "tenant", "add", "--dir", host_dir, "--name", "cellex", "--role",
                   "supplier", "--authority-url", space.url, "--code-file", str(wrong_role),
                   )  # fmt: skip
    assert done.returncode == 1 and "admits 'cellex' as oem" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (space.host.directory / "tenants" / "cellex").exists()
    assert [r.name for r in Registry(space.host.directory).tenants()] == ["siliwafer"]
    # the code was not spent: the right role takes it
    done = qdspace("host", "tenant", "add", "--dir", host_dir, "--name", "cellex", "--role",
                   "oem", "--authority-url", space.url, "--code-file", str(wrong_role))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [r.name for r in Registry(space.host.directory).tenants()] == ["cellex", "siliwafer"]
