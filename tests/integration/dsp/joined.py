"""A member that joins a space through the authority service (``qdspace node join`` with an
enrollment code, as a new company would), its settings then changed for the test."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qdspace.node.config import NodeSettings
from qdspace.node.identity.authority import Authority
from qdspace.node.layout import NodeLayout
from qdspace.node.localnet.authority import AuthorityProcess
from qdspace.node.localnet.network import LocalNetwork, MemberProcess, MemberSpec
from qdspace.util.ports import free_port

#: a directory and CRL followed twice a second, a DSP listener on any free port
FOLLOW_FAST = {"crl_refresh_s": 0.5, "directory_refresh_s": 0.5, "dsp_port": 0}


def join_with_code(
    workdir: Path, url: str, code: str, spec: MemberSpec, update: dict[str, Any]
) -> MemberProcess:
    """``spec`` joined at the authority service ``url`` with ``code``, its settings updated
    with `FOLLOW_FAST` and ``update``; not started."""
    directory = workdir / "nodes" / spec.name
    ports = free_port(), free_port(), free_port()
    code_file = workdir / f"{spec.name}.code"
    code_file.write_text(code + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "qdspace", "node", "join", "--dir", str(directory),
         "--authority-url", url, "--code-file", str(code_file),
         "--grpc-port", str(ports[0]), "--api-port", str(ports[1]),
         "--regulator-port", str(ports[2])],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    settings = NodeSettings.load(directory)
    settings.model_copy(update={**FOLLOW_FAST, **update}).save()
    token = NodeLayout(directory).operator_token.read_text().strip()
    return MemberProcess(spec, directory, *ports, token=token)


def held_directory(net: LocalNetwork, holder: str) -> dict[str, Any]:
    """The member directory document ``holder``'s node holds (as it saved it), or {}."""
    path = NodeLayout(net[holder].directory).member_directory
    try:
        document: dict[str, Any] = json.loads(path.read_text())
        return document
    except (FileNotFoundError, ValueError):
        return {}


#: a member to join: its spec, the BPNL its enrollment code attests (or None), and the
#: settings it starts with
Joining = tuple[MemberSpec, str | None, dict[str, Any]]


@contextmanager
def joined_space(
    workdir: Path, space: str, members: Sequence[Joining]
) -> Iterator[tuple[LocalNetwork, Authority, str]]:
    """A space whose members joined through a running authority service, started:
    (the network, the authority, the service's URL); all stopped after."""
    authority = Authority.init(workdir / "authority", space)
    service = AuthorityProcess(authority.directory)
    url = service.start()
    network = LocalNetwork(workdir, members=(), chain=False)
    try:
        for spec, bpn, update in members:
            code = str(authority.create_enrollment(name=spec.name, role=spec.role, bpn=bpn))
            network.members[spec.name] = join_with_code(workdir, url, code, spec, update)
        network.start()
        yield network, authority, url
    finally:
        network.stop()
        service.stop()
