"""A data space across hosts: every service in its own network namespace, on its own IP.

The authority service, the chain, PostgreSQL and each member (SunArc the OEM on
PostgreSQL, Cellex a supplier on SQLite, Polycell a second supplier, the regulator) run
on separate hosts of a bridged /24 (see ``hosts.py``). Each member joins from its own
host knowing only the authority's URL and a one-time enrollment code (``qdspace node
join``: keys made there, a certificate from a request, the CA pinned by the code), and
finds the others through the authority's signed directory: no node has a static peer.
Members negotiate, transfer and anchor over the network, the regulator fetches a proof
from the OEM's node and verifies it against the chain from its own host, and once the
authority revokes Polycell the others refuse it within the CRL refresh interval.

The tests run in order on one module-wide space (each builds on the last).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qdspace.connector.sample import order_for, write_sample_files
from qdspace.node.client import ClientError

from .conftest import make_lan
from .hosts import Lan, wait_for
from .space import AuthorityService, Chain, Member, Postgres, pg_binaries, qdspace

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(420)]

SPACE = "netns-space"
OEM, SUPPLIER, LEAVER, REGULATOR = "sunarc", "cellex", "polycell", "regulator"
ROLES = {OEM: "oem", SUPPLIER: "supplier", LEAVER: "supplier", REGULATOR: "regulator"}
NODES = (OEM, SUPPLIER, LEAVER)  # the regulator holds keys but runs no node
HOSTS = ["authority", "chain", "pg", *ROLES]
QA = "quality-assurance"
#: the nodes' refresh intervals here (the defaults are 60 s and 30 s)
CRL_REFRESH_S = 4.0
DIRECTORY_REFRESH_S = 2.0
#: a generous bound on "within the refresh interval" for a loaded 2-core machine
REVOCATION_DEADLINE_S = 3 * CRL_REFRESH_S + 45.0
DISCOVERY_DEADLINE_S = 3 * DIRECTORY_REFRESH_S + 45.0


@dataclass
class Space:
    lan: Lan
    authority: AuthorityService
    chain: Chain
    pg: Postgres
    members: dict[str, Member]

    def __getitem__(self, name: str) -> Member:
        return self.members[name]


@pytest.fixture(scope="module")
def lan(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lan]:
    yield from make_lan(request, tmp_path_factory.mktemp("netns"), HOSTS)


def _join(authority: AuthorityService, member: Member) -> None:
    """The member's operator got a code from the authority's; the node joins with it."""
    code = authority.enroll(member.name, member.role)
    member.join(authority.url, code)
    member.configure(crl_refresh_s=CRL_REFRESH_S, directory_refresh_s=DIRECTORY_REFRESH_S)


@pytest.fixture(scope="module")
def space(lan: Lan) -> Iterator[Space]:
    binaries = pg_binaries()
    if binaries is None:
        pytest.skip("the namespace test runs PostgreSQL: install the server (apt postgresql)")
    workdir = lan.workdir
    authority = AuthorityService(lan["authority"], workdir / "authority")
    chain = Chain(lan["chain"], workdir / "chain" / "state")
    pg = Postgres(lan["pg"], binaries)
    try:
        authority.init(SPACE)
        authority.start()
        chain.start()
        pg.start()
        members = {
            name: Member(lan[name], name, role, workdir / "nodes" / name)
            for name, role in ROLES.items()
        }
        for member in members.values():
            _join(authority, member)
        # the database URL, password and all, reaches the node in a file (a secret)
        members[OEM].use_database(pg.create_database(OEM))
        for name in NODES:
            chain.provision(members[name].directory)
        for name in NODES:
            members[name].start()
        yield Space(lan, authority, chain, pg, members)
    finally:
        for service in lan.services():  # the nodes before their database
            if service.label == "node":
                service.stop()
        pg.stop()


def _ingest_sample(member: Member, folder: Path) -> None:
    files = write_sample_files(folder, member.name, member.role, bad_rows=False)
    with member.operator() as client:
        for kind, path in files.items():
            client.ingest_file(kind, path)


def _until_ok(call: Callable[[], Any]) -> Callable[[], Any]:
    """A probe that is the call's answer, or None while the call is refused."""

    def probe() -> Any:
        try:
            return call()
        except ClientError:
            return None

    return probe


def test_members_joined_from_their_hosts_find_each_other_in_the_directory(space: Space) -> None:
    """No static peers: each node reaches the others at the address they published."""
    ips = {space[n].host.ip for n in NODES} | {space.chain.host.ip, space.pg.host.ip}
    assert len(ips | {space.authority.host.ip}) == len(NODES) + 3
    for name in NODES:
        settings = space[name].settings()
        assert settings.peers == {}, settings.peers
        assert settings.authority_url == space.authority.url
    with space[OEM].operator() as oem:
        info = oem.node()
        assert info["database"].startswith("postgresql"), info["database"]
        assert info["grpc_address"].startswith(space[OEM].host.ip), info["grpc_address"]
        for peer in (SUPPLIER, LEAVER):
            hello = wait_for(
                f"{OEM} to find {peer} in the directory",
                _until_ok(lambda peer=peer: oem.hello(peer)),
                DISCOVERY_DEADLINE_S,
                poll_s=0.5,
            )
            assert (hello["peer"], hello["seen_as"]) == (peer, OEM)
    with space[LEAVER].operator() as leaver:
        hello = wait_for(
            f"{LEAVER} to find {SUPPLIER}",
            _until_ok(lambda: leaver.hello(SUPPLIER)),
            DISCOVERY_DEADLINE_S,
            poll_s=0.5,
        )
        assert hello["seen_as"] == LEAVER
    published = json.loads((space[OEM].directory / "directory.json").read_text())
    entries = {e["name"]: e for e in published["entries"]}
    assert entries[SUPPLIER]["endpoints"]["peer"] == space[SUPPLIER].peer_address


def test_negotiate_transfer_anchor_and_the_regulator_verifies(space: Space) -> None:
    _ingest_sample(space[SUPPLIER], space.lan.workdir / "sample" / SUPPLIER)
    order = order_for(SUPPLIER)
    with space[OEM].operator(timeout=120) as oem:
        agreed = oem.negotiate(SUPPLIER, "inspections", [QA], orders=[order])
        assert agreed["state"] == "FINALIZED", agreed
        aid = agreed["agreement_id"]
        pulled = oem.transfer(aid, QA, order_id=order)
        assert pulled["offset"] > 0, pulled
        assert oem.received(aid)["total"] == pulled["offset"]
        status = oem.ledger_flush(120)["status"]
        assert any(leaf["ref_id"] == aid for leaf in oem.ledger_leaves("agreement")), status

    regulator = space[REGULATOR]
    proof = space.lan.workdir / "proof-agreement.json"
    fetch = qdspace("ledger", "fetch-proof", "--dir", str(regulator.directory))
    fetch += ["--api", space[OEM].regulator_url, "--kind", "agreement", "--id", aid]
    fetch += ["--out", str(proof)]  # from the OEM's regulator listener, across hosts
    regulator.host.run(fetch)
    verify = qdspace("verify", str(proof), "--rpc", space.chain.url, "--json")
    verdict = json.loads(regulator.host.run(verify).stdout)
    assert verdict["valid"] is True, verdict


def _refused(call: Callable[[], Any]) -> str | None:
    try:
        call()
    except ClientError as exc:
        return f"{exc.status} {exc.detail}"
    return None


def test_a_revoked_member_is_refused_by_the_others(space: Space) -> None:
    """Revoked at the authority, Polycell is refused both ways within the CRL refresh."""
    with space[OEM].operator() as oem, space[LEAVER].operator() as leaver:
        assert leaver.hello(OEM)["seen_as"] == LEAVER
        assert oem.hello(LEAVER)["peer"] == LEAVER
        space.authority.revoke(LEAVER)
        deadline = time.monotonic() + REVOCATION_DEADLINE_S
        for other in (OEM, SUPPLIER):  # its calls: refused by each node's refreshed CRL
            refused = wait_for(
                f"{other} to refuse calls of the revoked {LEAVER}",
                lambda other=other: _refused(lambda: leaver.hello(other)),
                deadline - time.monotonic(),
                poll_s=0.5,
            )
            assert "revoked" in refused, refused
        refused = wait_for(  # calls to it: it is gone from the directory, its cert revoked
            f"{OEM} to stop calling the revoked {LEAVER}",
            lambda: _refused(lambda: oem.hello(LEAVER)),
            deadline - time.monotonic(),
            poll_s=0.5,
        )
        print(f"{OEM} -> {LEAVER}: {refused}")
        assert LEAVER in refused, refused
        assert oem.hello(SUPPLIER)["peer"] == SUPPLIER  # the others still talk
