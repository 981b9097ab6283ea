"""A newcomer under a freed name asks Cellex's real Trace servicer over real mutual TLS
about its predecessor's batch: refused, as a batch sold to somebody else is (the
servicer passes the caller's member id to `connector.genealogy.upstream`; before, the
name alone decided, and the newcomer read its predecessor's supply-chain links)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import grpc

from qdspace.connector.agreement import ContractAgreement, countersign, sign_agreement
from qdspace.connector.contract_store import ContractStore
from qdspace.connector.negotiation import Role
from qdspace.connector.storage import open_store
from qdspace.node.identity.authority import Authority
from qdspace.node.identity.member import MemberKeys, create_member_keys
from qdspace.node.identity.revocation import RevocationList
from qdspace.node.rpc.auth import PeerAuthenticator
from qdspace.node.rpc.client import open_channel
from qdspace.node.rpc.server import build_server
from qdspace.node.rpc.trace_service import TraceServicer
from qdspace.policies.model import OfferTerms, make_offer, to_agreement
from qdspace.protocols.v1 import trace_pb2, trace_pb2_grpc

T0 = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)


def test_a_newcomer_under_a_freed_name_is_refused_its_predecessors_batch(tmp_path: Path) -> None:
    Authority.init(tmp_path / "authority", "test-space")
    authority = Authority.load(tmp_path / "authority")
    cellex = create_member_keys(tmp_path / "cellex", authority, name="cellex", role="supplier")
    old = create_member_keys(tmp_path / "sunarc-1", authority, name="sunarc", role="oem")
    store = open_store(f"sqlite:///{tmp_path / 'cellex.db'}")
    batch = {
        "batch_id": "B-OLD",
        "material": "cell",
        "kind": "cell",
        "producer": "cellex",
        "customer": "sunarc",
        "order_id": "PO-OLD",
        "quantity": 1,
        "made_at": "2026-06-01T06:00:00Z",
    }
    assert not store.ingest_rows("batch", enumerate([batch], 1)).rejected
    policy = to_agreement(
        make_offer(
            "agr-1",
            cellex.identity.member_id,
            "traceability",
            OfferTerms(frozenset({"root-cause-analysis"}), orders=frozenset({"PO-OLD"})),
        ),
        "agr-1",
        old.identity.member_id,
    )
    terms = ContractAgreement(
        "agr-1",
        "neg-1",
        cellex.identity.member_id,
        old.identity.member_id,
        "traceability",
        policy,
        T0,
        T0,
    )
    signed = countersign(
        sign_agreement(terms, cellex.signing_key), old.signing_key, cellex.signing_key.verify_key
    )
    ContractStore(store.engine, bytes(32)).save_agreement(signed, Role.PROVIDER)
    authority.revoke("sunarc", "left")
    new = create_member_keys(tmp_path / "sunarc-2", authority, name="sunarc", role="oem")
    assert new.identity.member_id != old.identity.member_id
    revocations = RevocationList(cellex.ca_cert, authority.files.crl)

    async def ask(keys: MemberKeys) -> str:
        server = build_server(
            cellex,
            PeerAuthenticator(revocations),
            [TraceServicer(store, None).register],
            "127.0.0.1",
            0,
        )
        await server.start()
        try:
            async with open_channel(keys, f"127.0.0.1:{server.port}", "cellex") as channel:
                try:
                    reply = await trace_pb2_grpc.TraceStub(channel).Upstream(
                        trace_pb2.UpstreamRequest(batch_id="B-OLD"), timeout=20
                    )
                    return "answered " + reply.batch.batch_id
                except grpc.aio.AioRpcError as exc:
                    return exc.code().name
        finally:
            await server.stop(0)

    try:
        assert asyncio.run(ask(new)) == "PERMISSION_DENIED"
    finally:
        store.close()
