"""``Trace/Upstream`` honours withdrawals as the trace walk does (`connector.genealogy`).

The review found that the one-hop answer read the batch and its genealogy links with no
``withdrawn_at`` filter: a batch the producer withdrew was still answered, and so were
the links it withdrew (a parent it took back, with its producer), while the trace walk
(`connector.trace_data.walk_genealogy`) hid them. Held against the walk itself on both
backends, and through the real servicer over real mutual TLS.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from qdspace.connector.genealogy import BatchInfo, UnknownBatch, upstream
from qdspace.connector.storage import QualityStore, open_store
from qdspace.connector.trace_data import walk_genealogy
from qdspace.node.identity.authority import Authority
from qdspace.node.identity.member import create_member_keys
from qdspace.node.identity.revocation import RevocationList
from qdspace.node.rpc.auth import PeerAuthenticator
from qdspace.node.rpc.client import open_channel
from qdspace.node.rpc.server import build_server
from qdspace.node.rpc.trace_service import TraceServicer
from qdspace.protocols.v1 import trace_pb2, trace_pb2_grpc

MADE = "2026-06-01T06:00:00Z"
NOW = datetime(2026, 7, 1, tzinfo=UTC)


def _batch(batch_id: str, producer: str, customer: str | None = None) -> dict[str, object]:
    kind = "cell" if producer == "cellex" else "wafer"
    return {
        "batch_id": batch_id,
        "material": kind,
        "kind": kind,
        "producer": producer,
        "customer": customer,
        "order_id": "PO-1" if customer else None,
        "quantity": 1,
        "made_at": MADE,
    }


@pytest.fixture
def qdm(
    db_backend: str,
    tmp_path: Path,
    fresh_pg_schema: Callable[[str], AbstractContextManager[tuple[str, str]]],
) -> Iterator[QualityStore]:
    """Cellex's QDM (a SQLite file or a new PostgreSQL schema): cell batch CB-1, sold to
    sunarc, made from siwafer's wafers W-1, W-2 and W-SECRET."""
    with ExitStack() as stack:
        if db_backend == "sqlite":
            url = f"sqlite:///{tmp_path / 'cellex.db'}"
        else:
            url, _ = stack.enter_context(fresh_pg_schema("genealogy"))
        store = open_store(url)
        stack.callback(store.close)
        rows = [_batch("CB-1", "cellex", "sunarc")]
        rows += [_batch(w, "siwafer", "cellex") for w in ("W-1", "W-2", "W-SECRET")]
        assert not store.ingest_rows("batch", enumerate(rows, 1)).rejected
        edges = [
            {"child_batch_id": "CB-1", "parent_batch_id": w} for w in ("W-1", "W-2", "W-SECRET")
        ]
        assert not store.ingest_rows("genealogy", enumerate(edges, 1)).rejected
        yield store


def walked(store: QualityStore, batch_id: str) -> tuple[BatchInfo, ...] | None:
    """The parents the trace walk gives `batch_id` (None: the walk does not see it)."""
    links, _ = walk_genealogy(store.engine, [batch_id], "cellex")
    return links[0].parents if links else None


def test_a_withdrawn_link_and_a_withdrawn_parent_are_answered_as_the_walk_reads_them(
    qdm: QualityStore,
) -> None:
    batch, parents = upstream(qdm.engine, "CB-1", customer="sunarc")
    assert [p.batch_id for p in parents] == ["W-1", "W-2", "W-SECRET"]
    assert tuple(parents) == walked(qdm, "CB-1")

    qdm.withdraw("genealogy", {"child_batch_id": "CB-1", "parent_batch_id": "W-SECRET"}, NOW)
    qdm.withdraw("batch", {"batch_id": "W-SECRET"}, NOW)
    qdm.withdraw("batch", {"batch_id": "W-2"}, NOW)  # its link stands
    batch, parents = upstream(qdm.engine, "CB-1", customer="sunarc")
    assert batch.batch_id == "CB-1"
    # the withdrawn link is gone; the withdrawn batch behind a standing link is named,
    # with nothing of the withdrawn row (its producer, material, quantity)
    assert parents == [
        BatchInfo("W-1", "wafer", "wafer", "siwafer", 1.0),
        BatchInfo("W-2", "", "", "unknown", 0.0),
    ]
    assert tuple(parents) == walked(qdm, "CB-1")


def test_a_withdrawn_batch_is_no_batch_here(qdm: QualityStore) -> None:
    qdm.withdraw("batch", {"batch_id": "CB-1"}, NOW)
    assert walked(qdm, "CB-1") is None
    for customer in ("sunarc", None):  # the customer's question, and the operator's
        with pytest.raises(UnknownBatch):
            upstream(qdm.engine, "CB-1", customer=customer)


# ---------------------------------------------------------------- over mutual TLS


def test_the_servicer_answers_no_withdrawn_record_over_mutual_tls(tmp_path: Path) -> None:
    """SunArc asks Cellex's real Trace servicer over real gRPC with member certificates:
    the withdrawn parent is not named, and the withdrawn batch gets the one refusal a
    batch that does not exist gets."""
    Authority.init(tmp_path / "authority", "test-space")
    authority = Authority.load(tmp_path / "authority")
    cellex = create_member_keys(tmp_path / "cellex", authority, name="cellex", role="supplier")
    sunarc = create_member_keys(tmp_path / "sunarc", authority, name="sunarc", role="oem")
    store = open_store(f"sqlite:///{tmp_path / 'cellex.db'}")
    rows = [_batch("CB-1", "cellex", "sunarc"), _batch("W-1", "siwafer", "cellex")]
    rows += [_batch("W-SECRET", "siwafer", "cellex")]
    assert not store.ingest_rows("batch", enumerate(rows, 1)).rejected
    edges = [{"child_batch_id": "CB-1", "parent_batch_id": w} for w in ("W-1", "W-SECRET")]
    assert not store.ingest_rows("genealogy", enumerate(edges, 1)).rejected
    store.withdraw("genealogy", edges[1], NOW)
    store.withdraw("batch", {"batch_id": "W-SECRET"}, NOW)
    revocations = RevocationList(cellex.ca_cert, authority.files.crl)

    async def ask(batch_ids: list[str]) -> list[trace_pb2.UpstreamReply | tuple[str, str]]:
        server = build_server(
            cellex,
            PeerAuthenticator(revocations),
            [TraceServicer(store, None).register],
            "127.0.0.1",
            0,
        )
        await server.start()
        got: list[trace_pb2.UpstreamReply | tuple[str, str]] = []
        try:
            async with open_channel(sunarc, f"127.0.0.1:{server.port}", "cellex") as channel:
                stub = trace_pb2_grpc.TraceStub(channel)
                for batch_id in batch_ids:
                    try:
                        request = trace_pb2.UpstreamRequest(batch_id=batch_id)
                        got.append(await stub.Upstream(request, timeout=20))
                    except grpc.aio.AioRpcError as exc:
                        details = (exc.details() or "").replace(batch_id, "ID")
                        got.append((exc.code().name, details))
        finally:
            await server.stop(0)
        return got

    try:
        first, nowhere = asyncio.run(ask(["CB-1", "CB-NONE"]))
        assert isinstance(first, trace_pb2.UpstreamReply)
        assert first.batch.batch_id == "CB-1"
        assert [(p.batch_id, p.producer) for p in first.parents] == [("W-1", "siwafer")]
        store.withdraw("batch", {"batch_id": "CB-1"}, NOW)
        (withdrawn,) = asyncio.run(ask(["CB-1"]))
        assert withdrawn == nowhere  # one answer: withdrawn, or never here
        assert nowhere[0] == "PERMISSION_DENIED"
    finally:
        store.close()
