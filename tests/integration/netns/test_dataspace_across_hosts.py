"""A data space across hosts: every service in its own network namespace, on its own IP.

The authority, the chain, PostgreSQL and each member (SunArc the OEM on PostgreSQL,
Cellex a supplier on SQLite, Polycell a second supplier, the regulator) run on separate
hosts of a bridged /24 (see ``hosts.py``). Members negotiate, transfer and anchor over
the network, the regulator fetches a proof from the OEM's node and verifies it against
the chain from its own host, and once the authority revokes Polycell the others refuse
it within the revocation list's refresh.

The tests run in order on one module-wide space (each builds on the last).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from qdspace.connector.sample import order_for, write_sample_files
from qdspace.node.client import ClientError

from .conftest import make_lan
from .hosts import Lan, wait_for
from .space import API_PORT, GRPC_PORT, Chain, Member, Postgres, pg_binaries, qdspace

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(420)]

SPACE = "netns-space"
OEM, SUPPLIER, LEAVER, REGULATOR = "sunarc", "cellex", "polycell", "regulator"
ROLES = {OEM: "oem", SUPPLIER: "supplier", LEAVER: "supplier", REGULATOR: "regulator"}
NODES = (OEM, SUPPLIER, LEAVER)  # the regulator holds keys but runs no node
HOSTS = ["authority", "chain", "pg", *ROLES]
QA = "quality-assurance"
#: a revocation reaches the nodes within this (they reload the CRL when it changes)
REVOCATION_DEADLINE_S = 60.0


@dataclass
class Space:
    lan: Lan
    authority_dir: Path
    chain: Chain
    pg: Postgres
    members: dict[str, Member]

    def __getitem__(self, name: str) -> Member:
        return self.members[name]


@pytest.fixture(scope="module")
def lan(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lan]:
    yield from make_lan(request, tmp_path_factory.mktemp("netns"), HOSTS)


def _members(lan: Lan, workdir: Path) -> dict[str, Member]:
    return {
        name: Member(lan[name], name, role, workdir / "nodes" / name)
        for name, role in ROLES.items()
    }


def _enroll_static(lan: Lan, authority_dir: Path, members: dict[str, Member]) -> None:
    """Every member's keys, certificate and node directory, made on the member's host."""
    for member in members.values():
        peers = [f"{o.name}={o.peer_address}" for o in members.values() if o is not member]
        argv = qdspace("node", "init", "--dir", str(member.directory), "--name", member.name)
        argv += ["--role", member.role, "--authority", str(authority_dir)]
        argv += ["--grpc-port", str(GRPC_PORT), "--api-port", str(API_PORT)]
        for peer in peers:
            argv += ["--peer", peer]
        member.host.run(argv)
        member.bind()


@pytest.fixture(scope="module")
def space(lan: Lan) -> Iterator[Space]:
    binaries = pg_binaries()
    if binaries is None:
        pytest.skip("the namespace test runs PostgreSQL: install the server (apt postgresql)")
    workdir = lan.workdir
    authority_dir = workdir / "authority"
    init = qdspace("authority", "init", "--dir", str(authority_dir), "--space", SPACE)
    lan["authority"].run(init)
    chain = Chain(lan["chain"], workdir / "chain" / "state")
    pg = Postgres(lan["pg"], binaries)
    try:
        chain.start()
        pg.start()
        members = _members(lan, workdir)
        _enroll_static(lan, authority_dir, members)
        members[OEM].env["QDSPACE_DB_URL"] = pg.create_database(OEM)
        for name in NODES:
            chain.provision(members[name].directory)
        for name in NODES:
            members[name].start()
        yield Space(lan, authority_dir, chain, pg, members)
    finally:
        pg.stop()


def _ingest_sample(member: Member, folder: Path) -> None:
    files = write_sample_files(folder, member.name, member.role, bad_rows=False)
    with member.operator() as client:
        for kind, path in files.items():
            client.ingest_file(kind, path)


def test_members_on_separate_hosts_reach_each_other(space: Space) -> None:
    """Each node listens on its own IP only; peers reach it there, TLS names intact."""
    ips = {space[n].host.ip for n in NODES} | {space.chain.host.ip, space.pg.host.ip}
    assert len(ips) == len(NODES) + 2
    with space[OEM].operator() as oem:
        info = oem.node()
        assert info["database"].startswith("postgresql"), info["database"]
        assert info["grpc_address"].startswith(space[OEM].host.ip), info["grpc_address"]
        for peer in (SUPPLIER, LEAVER):
            hello = oem.hello(peer)
            assert (hello["peer"], hello["seen_as"]) == (peer, OEM)
    with space[LEAVER].operator() as leaver:
        assert leaver.hello(SUPPLIER)["seen_as"] == LEAVER


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
    fetch += ["--api", space[OEM].api_url, "--kind", "agreement", "--id", aid, "--out", str(proof)]
    regulator.host.run(fetch)
    verify = qdspace("verify", str(proof), "--rpc", space.chain.url, "--json")
    verdict = json.loads(regulator.host.run(verify).stdout)
    assert verdict["valid"] is True, verdict


def _refused(call: object) -> str | None:
    try:
        call()  # type: ignore[operator]
    except ClientError as exc:
        return f"{exc.status} {exc.detail}"
    return None


def test_a_revoked_member_is_refused_by_the_others(space: Space) -> None:
    """Revoked at the authority, Polycell's calls are refused by every other node in time."""
    with space[LEAVER].operator() as leaver:
        assert leaver.hello(OEM)["seen_as"] == LEAVER
        space.lan["authority"].run(
            qdspace("authority", "revoke", "--dir", str(space.authority_dir), "--member", LEAVER)
        )
        deadline = time.monotonic() + REVOCATION_DEADLINE_S
        for other in (OEM, SUPPLIER):
            refused = wait_for(
                f"{other} to refuse the revoked {LEAVER}",
                lambda other=other: _refused(lambda: leaver.hello(other)),
                deadline - time.monotonic(),
                poll_s=0.5,
            )
            assert "revoked" in refused, refused
    with space[OEM].operator() as oem:
        assert oem.hello(SUPPLIER)["peer"] == SUPPLIER  # the others still talk
