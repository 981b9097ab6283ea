"""Joining a data space with a URL and a code, and finding peers through the directory.

An authority service on loopback; two members ``qdspace node join`` it knowing only its
URL and an enrollment code each (no static peers, no shared files), start, find each
other through the signed member directory and authenticate (Hello). Then the hostile
cases the directory exists for: a peer presenting another certificate than its entry
names (outgoing and incoming), and a member revoked at the authority, refused by the
nodes once they fetched the new CRL. Intervals are small; assertions poll with a
generous deadline, nothing is timed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from nacl.signing import SigningKey

from qdspace.node.config import NodeSettings
from qdspace.node.errors import PeerError
from qdspace.node.identity.authority import Authority
from qdspace.node.identity.certs import new_tls_key
from qdspace.node.identity.csr import build_request
from qdspace.node.identity.directory import DirectoryEntry
from qdspace.node.identity.member import MemberKeys, create_member_keys, load_member_keys
from qdspace.node.layout import NodeLayout
from qdspace.node.localnet.authority import AuthorityProcess
from qdspace.node.localnet.network import LocalNetwork, MemberProcess, MemberSpec
from qdspace.node.rpc.peers import HelloResult, PeerDirectory
from qdspace.util.ports import free_port

pytestmark = pytest.mark.integration

DEADLINE_S = 60.0
REFRESH_S = 0.5
MEMBERS = (MemberSpec("sunarc", "oem"), MemberSpec("cellex", "supplier"))
T = TypeVar("T")


@dataclasses.dataclass
class Space:
    workdir: Path
    authority: Authority
    service: AuthorityProcess
    network: LocalNetwork


def _qdspace(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qdspace", *args],
        capture_output=True, text=True, timeout=120, input=stdin,
    )  # fmt: skip


def _join(space_dir: Path, url: str, code: str, spec: MemberSpec) -> MemberProcess:
    directory = space_dir / "nodes" / spec.name
    grpc_port, api_port, regulator_port = free_port(), free_port(), free_port()
    code_file = space_dir / f"{spec.name}.code"  # (one member takes it from stdin)
    code_file.write_text(code + "\n")
    given = ["--code-file", "-" if spec.name == "sunarc" else str(code_file)]
    done = _qdspace(
        "node", "join", "--dir", str(directory), "--authority-url", url, *given,
        "--grpc-port", str(grpc_port), "--api-port", str(api_port),
        "--regulator-port", str(regulator_port), stdin=code + "\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"joined join-space as {spec.name}" in done.stdout.replace("\n", " ")
    settings = NodeSettings.load(directory)
    assert settings.authority_url == url and settings.peers == {}
    fast = {"crl_refresh_s": REFRESH_S, "directory_refresh_s": REFRESH_S}
    settings.model_copy(update=fast).save()
    token = NodeLayout(directory).operator_token.read_text().strip()
    return MemberProcess(spec, directory, grpc_port, api_port, regulator_port, token=token)


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Space]:
    workdir = tmp_path_factory.mktemp("join")
    authority = Authority.init(workdir / "authority", "join-space")
    service = AuthorityProcess(authority.directory)
    url = service.start()
    network = LocalNetwork(workdir, members=(), chain=False)
    try:
        for spec in MEMBERS:
            code = str(authority.create_enrollment(name=spec.name, role=spec.role))
            network.members[spec.name] = _join(workdir, url, code, spec)
        network.start()
        yield Space(workdir, authority, service, network)
    finally:
        network.stop()
        service.stop()


def _eventually(probe: Callable[[], T | None], what: str) -> T:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        found = probe()
        if found is not None:
            return found
        time.sleep(0.1)
    pytest.fail(f"not within {DEADLINE_S:.0f}s: {what}")


def _hello(keys: MemberKeys, directory: Path, target: str, address: str) -> HelloResult:
    files = NodeLayout(directory)
    peers = PeerDirectory(keys, {target: address}, cert_files=(files.tls_cert, files.tls_key))

    async def call() -> HelloResult:
        try:
            return await peers.hello(target, timeout=10)
        finally:
            await peers.close()

    return asyncio.run(call())


def _listed(space: Space, name: str) -> dict[str, Any] | None:
    """The directory entry of ``name`` that the node ``sunarc`` holds, if any."""
    path = NodeLayout(space.network["sunarc"].directory).member_directory
    try:
        document = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return next((e for e in document["entries"] if e["name"] == name), None)


def test_join_refuses_another_ca_and_a_spent_code(space: Space, tmp_path: Path) -> None:
    """The CA is pinned by the code; a failed join leaves no directory behind."""
    good = space.authority.create_enrollment(name="third", role="supplier")
    other_ca = dataclasses.replace(good, ca_fingerprint="0" * 64)
    target = tmp_path / "third"
    url = space.service.url
    done = _qdspace("node", "join", "--dir", str(target), "--authority-url", url,
                    "--code-file", "-", stdin=str(other_ca))  # fmt: skip
    assert done.returncode == 1, done.stdout
    assert "the enrollment code names" in done.stderr and "Traceback" not in done.stderr
    assert not target.exists()
    spent = space.authority.create_enrollment(name="fourth", role="supplier")
    keys_dir = tmp_path / "elsewhere"
    request = build_request(
        space="join-space", name="fourth", role="supplier", tls_key=new_tls_key(),
        signing_key=SigningKey.generate(),
    )  # fmt: skip
    space.authority.sign_request(request, code=str(spent))  # someone else used it first
    done = _qdspace("node", "join", "--dir", str(keys_dir), "--authority-url", url,
                    "--code-file", "-", stdin=str(spent))  # fmt: skip
    assert done.returncode == 1 and "already used" in done.stderr, done.stderr
    # the code is never taken from the command line (the process list shows it)
    done = _qdspace("node", "join", "--dir", str(keys_dir), "--authority-url", url,
                    "--code", str(spent))  # fmt: skip
    assert done.returncode == 2 and "No such option: --code" in done.stderr, done.stderr
    assert not keys_dir.exists()  # the keys made for the refused request are gone


def test_members_find_each_other_through_the_directory(space: Space) -> None:
    for caller, callee in (("sunarc", "cellex"), ("cellex", "sunarc")):
        member = space.network[caller]

        def peers(member: MemberProcess = member, callee: str = callee) -> dict[str, str] | None:
            with member.client() as client:
                known: dict[str, str] = client.get("/v1/peers").json()
            return known if callee in known else None

        known = _eventually(peers, f"{caller} learns {callee} from the directory")
        assert known[callee] == space.network[callee].grpc_address
        with member.client() as client:
            answer = client.post(f"/v1/peers/{callee}/hello")
        assert answer.status_code == 200, answer.text
        assert answer.json()["seen_as"] == caller
    log = space.network["cellex"].log_path.read_text()
    assert "published our entry" in log
    # readiness names the directory the node found its peers in
    with space.network["sunarc"].client() as client:
        ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    check = ready.json()["checks"]["directory"]
    assert check["ok"] and "members" in check["detail"], check


def test_a_peer_with_another_certificate_than_its_entry_is_refused(space: Space) -> None:
    """Outgoing: the caller checks the certificate the peer presents against the entry."""
    sunarc = space.network["sunarc"]
    keys = load_member_keys(sunarc.directory)
    entry = _eventually(lambda: _listed(space, "cellex"), "sunarc holds cellex's entry")
    listed = DirectoryEntry.from_json(entry)
    files = NodeLayout(sunarc.directory)
    peers = PeerDirectory(keys, {}, cert_files=(files.tls_cert, files.tls_key))

    async def hello_with(pinned: DirectoryEntry) -> HelloResult:
        peers.follow([pinned])
        try:
            return await peers.hello("cellex", timeout=10)
        finally:
            await peers.close()

    assert asyncio.run(hello_with(listed)).peer == "cellex"  # the entry as published: fine
    wrong = dataclasses.replace(listed, cert_fingerprint="0" * 64)
    with pytest.raises(PeerError, match=r"UNAUTHENTICATED.*not the one its directory entry names"):
        asyncio.run(hello_with(wrong))


def test_an_old_certificate_is_refused_once_renewed(space: Space, tmp_path: Path) -> None:
    """Incoming: a member renews online; its old certificate (still valid, not revoked)
    is refused by peers once their directory names the new one."""
    cellex = space.network["cellex"]
    old = tmp_path / "old-cellex"
    old.mkdir()
    for name in ("signing.key", "tls.key", "tls.crt", "ca.crt"):
        shutil.copy(cellex.directory / name, old / name)
    old_keys = load_member_keys(old)
    sunarc_address = space.network["sunarc"].grpc_address
    assert _hello(old_keys, old, "sunarc", sunarc_address).peer == "sunarc"
    with space.network["sunarc"].client() as client:  # SunArc has seen the old certificate
        before = client.post("/v1/peers/cellex/hello")
    assert before.status_code == 200, before.text
    done = _qdspace("node", "renew", "--dir", str(cellex.directory))
    assert done.returncode == 0, done.stderr
    new_fingerprint = load_member_keys(cellex.directory).identity.fingerprint
    assert new_fingerprint != old_keys.identity.fingerprint
    space.network.stop(["cellex"])
    space.network.start(["cellex"])  # publishes the renewed certificate at start

    def republished() -> bool | None:
        entry = _listed(space, "cellex")
        return True if entry and entry["cert_fingerprint"] == new_fingerprint else None

    _eventually(republished, "sunarc's directory names cellex's renewed certificate")
    with pytest.raises(PeerError, match=r"UNAUTHENTICATED.*not the one its directory entry names"):
        _hello(old_keys, old, "sunarc", sunarc_address)
    assert "not the one its directory entry names" in space.network["sunarc"].log_path.read_text()
    with cellex.client() as client:  # the renewed member itself is welcome
        answer = client.post("/v1/peers/sunarc/hello")
    assert answer.status_code == 200, answer.text
    with space.network["sunarc"].client() as client:  # and called at its renewed certificate
        called = client.post("/v1/peers/cellex/hello")
    assert called.status_code == 200, called.text


def test_a_member_revoked_at_the_authority_is_refused_after_the_crl_refresh(
    space: Space, tmp_path: Path
) -> None:
    rogue_dir = tmp_path / "rogue"
    rogue = create_member_keys(rogue_dir, space.authority, name="rogue", role="supplier")
    sunarc_address = space.network["sunarc"].grpc_address
    assert _hello(rogue, rogue_dir, "sunarc", sunarc_address).peer == "sunarc"
    Authority.load(space.authority.directory).revoke("rogue", "left the data space")
    # sunarc's CRL is its own copy (DIR/crl.pem): only the follower's fetch brings the news

    def refused() -> str | None:
        try:
            _hello(rogue, rogue_dir, "sunarc", sunarc_address)
        except PeerError as exc:
            return str(exc)
        return None

    reason = _eventually(refused, "sunarc refuses the revoked member")
    assert "UNAUTHENTICATED" in reason and "revoked" in reason
    crl_path = NodeSettings.load(space.network["sunarc"].directory).crl_path
    assert crl_path == NodeLayout(space.network["sunarc"].directory).crl
