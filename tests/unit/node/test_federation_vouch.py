"""A member node follows a job under contract only at the member its agreement names, and
any job only while the coordinator's name is held by the member it joined.

Model updates say much about the data they were trained on. A member joins a job by its
coordinator's *name*; a name passes to another member once its holder leaves (the
authority frees it), and an honest coordinator refuses a member without an agreement,
but a member that took the name need not. So before a session starts, the node checks
that the job's agreement asset is one it agreed on with a provider of that name and
that the server answering to the name is that provider (`coordinator_vouch`, on a real
contract store and the node's peer table), and `FederationMember.join` starts nothing
when it is not. The member id vouched for (for a job under no contract, the one holding
the name at the join) is what the session is held to; that the session sends nothing
once the name answers as another member is tested against a real coordinator in
`tests/integration/federation/test_federation_hostile.py`."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import create_engine

from qdspace.connector.agreement import ContractAgreement, countersign, sign_agreement
from qdspace.connector.contract_store import ContractStore, ensure_schema
from qdspace.connector.negotiation import Role
from qdspace.federation import logreg
from qdspace.federation.agreements import job_offer_terms
from qdspace.federation.job import JobSpec
from qdspace.node.errors import NotTheMember
from qdspace.node.identity.authority import Authority
from qdspace.node.identity.directory import new_entry
from qdspace.node.identity.member import MemberKeys, create_member_keys
from qdspace.node.rpc.federation_link import coordinator_vouch
from qdspace.node.rpc.peers import PeerDirectory
from qdspace.node.runtime.contracts_base import ContractBase
from qdspace.node.runtime.federation_member import (
    FederationMember,
    JoinRequest,
    NotTheCoordinator,
)
from qdspace.policies.model import make_offer, to_agreement

T0 = datetime(2026, 11, 1, tzinfo=UTC)
ASSET = "fl-job:el-vouch"


def _job(asset: str | None = ASSET) -> JobSpec:
    return JobSpec(
        job_id="el-vouch",
        coordinator="sunarc",
        model="logreg",
        shapes=logreg.model_shapes(4, 2),
        rounds=1,
        min_members=2,
        members=("cellex", "sunarc"),
        agreement_asset=asset,
    )


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> dict[str, MemberKeys]:
    """Cellex, the SunArc it agreed with, and the member that enrolled as sunarc after."""
    workdir = tmp_path_factory.mktemp("vouch")
    authority = Authority.init(workdir / "authority", "vouch-space")
    cellex = create_member_keys(workdir / "cellex", authority, name="cellex", role="supplier")
    sunarc = create_member_keys(workdir / "sunarc", authority, name="sunarc", role="oem")
    authority.revoke("sunarc", "left the data space")
    successor = create_member_keys(workdir / "sunarc-2", authority, name="sunarc", role="oem")
    return {"cellex": cellex, "sunarc": sunarc, "successor": successor}


def _context(tmp_path: Path, members: dict[str, MemberKeys], listed: MemberKeys) -> Any:
    """Cellex's node: a contract store holding its agreement for the job's asset with the
    first SunArc, and a peer table whose directory lists ``listed`` as sunarc."""
    me, provider = members["cellex"], members["sunarc"]
    engine = create_engine(f"sqlite:///{tmp_path / 'cellex.db'}")
    ensure_schema(engine)
    store = ContractStore(engine, b"k" * 32)
    provider_id, me_id = provider.identity.member_id, me.identity.member_id
    offer = make_offer("offer-el-vouch", provider_id, ASSET, job_offer_terms())
    policy = to_agreement(offer, "agr-vouch", me_id)
    terms = ContractAgreement("agr-vouch", "neg-vouch", provider_id, me_id, ASSET, policy, T0, T0)
    signed = countersign(
        sign_agreement(terms, provider.signing_key), me.signing_key, provider.signing_key.verify_key
    )
    store.save_agreement(signed, Role.CONSUMER)
    peers = PeerDirectory(me, {})
    peers.follow([new_entry(listed.identity, listed.signing_key, {"peer": "10.0.0.9:7443"})])
    identity = SimpleNamespace(name="cellex")
    return SimpleNamespace(
        contracts=_Contracts(store), peers=peers, keys=SimpleNamespace(identity=identity)
    )


class _Contracts:
    """The contract runtime's agreement lookup (`ContractBase.agreed_with`) on a store."""

    agreed_with = ContractBase.agreed_with

    def __init__(self, store: ContractStore) -> None:
        self.store = store


def test_the_job_s_coordinator_must_be_the_member_the_agreement_names(
    tmp_path: Path, members: dict[str, MemberKeys]
) -> None:
    old_id = members["sunarc"].identity.member_id
    new_id = members["successor"].identity.member_id

    async def scenario() -> None:
        agreed = coordinator_vouch(_context(tmp_path / "a", members, members["sunarc"]))
        # the provider it agreed with: followed, and the session held to it
        assert await agreed("sunarc", _job()) == old_id
        # a job under no contract: held to the member holding the name at the join
        assert await agreed("sunarc", _job(asset=None)) == old_id
        with pytest.raises(NotTheCoordinator, match="holds no agreement with sunarc for job"):
            await agreed("sunarc", _job(asset="fl-job:other"))
        taken = coordinator_vouch(_context(tmp_path / "b", members, members["successor"]))
        with pytest.raises(NotTheMember, match=f"is now {new_id}, not {old_id}"):
            await taken("sunarc", _job())
        assert await taken("sunarc", _job(asset=None)) == new_id  # joined after: its holder

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    asyncio.run(scenario())


class _Link:
    """A coordinator that answers with a job naming this member (no agreement check)."""

    def __init__(self) -> None:
        self.closed = False

    async def job(self) -> JobSpec:
        return _job()

    async def close(self) -> None:
        self.closed = True


def test_join_starts_no_session_when_the_coordinator_is_not_vouched_for(tmp_path: Path) -> None:
    link = _Link()
    asked: list[tuple[str, str]] = []

    async def vouch(coordinator: str, job: JobSpec) -> str | None:
        asked.append((coordinator, job.job_id))
        raise NotTheCoordinator("cellex holds no agreement with sunarc")

    member = FederationMember(lambda _c, _j: link, tmp_path, "cellex", vouch)  # type: ignore[arg-type,return-value]
    data = tmp_path / "cellex.npz"
    logreg.save_dataset(data, logreg.make_blobs(20, 4, 2, seed=1))
    request = JoinRequest("el-vouch", "sunarc", data)
    with pytest.raises(NotTheCoordinator):
        asyncio.run(member.join(request))
    assert asked == [("sunarc", "el-vouch")] and link.closed and member.sessions() == []


class _FollowedLink(_Link):
    """A coordinator whose job this member follows: records whom the session is held to."""

    def __init__(self) -> None:
        super().__init__()
        self.held_to: list[str | None] = []

    async def follow(self, trainer: Any, **kwargs: Any) -> Any:
        self.held_to.append(kwargs["coordinator_id"])
        raise RuntimeError("the test stops the session here")


def test_the_session_is_held_to_the_member_vouched_for(tmp_path: Path) -> None:
    link = _FollowedLink()

    async def vouch(coordinator: str, job: JobSpec) -> str | None:
        return "sunarc-member-id-at-join"

    member = FederationMember(lambda _c, _j: link, tmp_path, "cellex", vouch)  # type: ignore[arg-type,return-value]
    data = tmp_path / "cellex.npz"
    logreg.save_dataset(data, logreg.make_blobs(20, 4, 2, seed=1))

    async def scenario() -> str | None:
        session = await member.join(JoinRequest("el-vouch", "sunarc", data))
        assert session.task is not None
        await session.task
        return session.error

    assert asyncio.run(scenario()) == "the test stops the session here"
    assert link.held_to == ["sunarc-member-id-at-join"] and link.closed
