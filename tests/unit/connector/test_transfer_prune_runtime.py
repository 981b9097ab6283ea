"""A provider's transfers after the retention sweep pruned them, and its count of
re-reads across a restart, through the real runtime and `TransferServicer` on SQLite and
PostgreSQL (`db_backend`)."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path

import grpc
import pytest

from qdspace.connector.agreement import ContractAgreement, countersign, sign_agreement
from qdspace.connector.contract_errors import (
    TransferQuotaError,
    UnknownContractError,
)
from qdspace.connector.contract_store import ContractStore
from qdspace.connector.negotiation import Role
from qdspace.connector.offer_choices import chosen_assets
from qdspace.connector.retention_sweep import sweep
from qdspace.connector.storage import QualityStore, open_store
from qdspace.connector.transfer import TransferProcess, TransferState, completion_id
from qdspace.connector.transfer_messages import TransferCompletion, TransferRequest
from qdspace.connector.transfer_wire import Checkpoint
from qdspace.node.identity.certs import MemberIdentity
from qdspace.node.metrics import NodeMetrics
from qdspace.node.rpc import auth
from qdspace.node.rpc.contracts_service import TransferServicer
from qdspace.node.rpc.contracts_transfer_serde import PullRequest, pull_request_to_proto
from qdspace.node.runtime.contracts import ContractRuntime
from qdspace.node.runtime.contracts_clock import ContractClock
from qdspace.policies.model import to_agreement
from qdspace.protocols.v1 import transfer_pb2

from ..servicer_doubles import Aborted, AbortingContext, seeded_member

ORDER = "PO-1"
NOW = dt.datetime.now(dt.UTC)


class Provider:
    """Cellex's runtime on a database at `url` holding its inspections of one order and an
    agreement with SunArc (made when `fresh`), the way a node builds it at start."""

    def __init__(self, url: str, root: Path, fresh: bool = True) -> None:
        self.qdm: QualityStore = open_store(url)
        self.pkey, self.me = seeded_member("cellex", b"p", "supplier")
        self.ckey, self.consumer = seeded_member("sunarc", b"c", "oem")
        assets = {a.asset_id: a for a in chosen_assets(self.me.member_id, {})}
        clock = ContractClock(root / "clock", control=False)
        store = ContractStore(self.qdm.engine, bytes(32))
        self.rt = ContractRuntime(
            self.me, self.pkey, store, self.qdm.engine, clock, bytes(32), assets
        )
        if fresh:
            self._seed()

    def _seed(self) -> None:
        order = {"customer": "sunarc", "supplier": "cellex", "product": "cell", "quantity": 10}
        order |= {"order_id": ORDER, "status": "open", "opened_at": "2026-01-01T00:00:00Z"}
        self.qdm.ingest_rows("order", enumerate([order], 1))
        rows = [
            {
                "inspection_id": f"INS-{i:06d}",
                "station": "EL-1",
                "inspected_at": (NOW - dt.timedelta(days=1, seconds=-i)).isoformat(),
                "verdict": "pass",
                "score": 0.5,
                "model_version": "el-1",
                "order_id": ORDER,
                "batch_id": "CB-1",
            }
            for i in range(30)
        ]
        self.qdm.ingest_rows("inspection", enumerate(rows, 1))
        policy = to_agreement(self.rt.assets["inspections"].offer, "agr-1", self.consumer.member_id)
        t0 = NOW - dt.timedelta(days=2)
        terms = ContractAgreement(
            "agr-1", "neg-agr-1", self.me.member_id, self.consumer.member_id,
            "inspections", policy, t0, t0,
        )  # fmt: skip
        signed = countersign(sign_agreement(terms, self.pkey), self.ckey, self.pkey.verify_key)
        self.rt.store.save_agreement(signed, Role.PROVIDER)

    def request(self, tid: str, sender: MemberIdentity | None = None) -> TransferRequest:
        sender_id = (sender or self.consumer).member_id
        return TransferRequest(
            f"{tid}:req", tid, sender_id, "agr-1", self.me.member_id,
            dt.datetime.now(dt.UTC), "quality-assurance", ORDER, None, "",
        )  # fmt: skip

    def pulled_and_acknowledged(self) -> TransferProcess:
        """A transfer opened, pulled to its end and acknowledged by the consumer."""
        process = self.rt.transfer_message(self.consumer, self.request(f"tx-{uuid.uuid4().hex}"))
        tid = process.transfer_id
        assert self.reread(tid, process.checkpoint) == 30
        done = self.rt.store.load_transfer(tid)
        assert done.state is TransferState.COMPLETED and done.final is not None
        ack = TransferCompletion(
            completion_id(done, Role.CONSUMER), tid, self.consumer.member_id, done.final,
            dt.datetime.now(dt.UTC),
        )  # fmt: skip
        return self.rt.transfer_message(self.consumer, ack)

    def reread(self, tid: str, resume: Checkpoint) -> int:
        """A Pull of `tid` from `resume` to its end: the rows sent."""
        return sum(b.count for b in self.rt.pull(self.consumer, PullRequest(tid, resume, 10), 10))


@pytest.fixture
def database(
    db_backend: str,
    tmp_path: Path,
    fresh_pg_schema: Callable[[str], AbstractContextManager[tuple[str, str]]],
) -> Iterator[str]:
    """The URL of an empty database: a SQLite file, or a new PostgreSQL schema."""
    with ExitStack() as stack:
        if db_backend == "sqlite":
            yield f"sqlite:///{tmp_path / 'cellex.db'}"
        else:
            url, _ = stack.enter_context(fresh_pg_schema("transferprune"))
            yield url


@pytest.fixture
def opened(database: str, tmp_path: Path) -> Iterator[Callable[[bool], Provider]]:
    """``opened(fresh)``: the provider's runtime on the database (each one a node start)."""
    with ExitStack() as stack:

        def make(fresh: bool) -> Provider:
            made = Provider(database, tmp_path, fresh)
            stack.callback(made.qdm.engine.dispose)
            return made

        yield make


def servicer_pull(p: Provider, peer: MemberIdentity, tid: str) -> tuple[int, Aborted | None]:
    """A Pull through the servicer from `peer`: (rows sent, how it was aborted)."""
    auth._CURRENT_PEER.set(auth.Peer(peer, "ipv4:10.0.0.9:1"))
    wire = pull_request_to_proto(PullRequest(tid, Checkpoint.genesis(tid), 10))
    request = transfer_pb2.PullRequest.FromString(wire.SerializeToString())
    stream = TransferServicer(p.rt, NodeMetrics()).Pull(request, AbortingContext())  # type: ignore[arg-type]

    async def run() -> tuple[int, Aborted | None]:
        rows = 0
        try:
            async for batch in stream:
                rows += transfer_pb2.RowBatch.FromString(batch).row_count
        except Aborted as aborted:
            return rows, aborted
        return rows, None

    return asyncio.run(run())


def test_a_re_read_of_a_pruned_transfer_is_told_it_is_no_longer_held(
    opened: Callable[[bool], Provider],
) -> None:
    """A transfer completed and acknowledged under an agreement since terminated is pruned
    by the sweep a month later. Its consumer's re-read is answered NOT_FOUND, saying it is
    no longer held (no rows, no denial in the gate's words, no error of ours); its
    messages and a request that would reuse its id get the same answer; another member
    asking for it is told it is not theirs, as for any id."""
    p = opened(True)
    done = p.pulled_and_acknowledged()
    tid = done.transfer_id
    p.rt.terminate("agr-1", "breach")
    sweep(p.rt.store, p.pkey, dt.datetime.now(dt.UTC) + dt.timedelta(days=31))

    rows, refused = servicer_pull(p, p.consumer, tid)
    assert rows == 0 and refused is not None
    assert refused.code is grpc.StatusCode.NOT_FOUND, refused
    assert f"transfer {tid} is no longer held here" in str(refused)
    with pytest.raises(UnknownContractError, match="no longer held"):
        p.rt.transfer_message(p.consumer, p.request(tid))  # no new transfer under its id
    assert p.rt.store.find_transfer(tid) is None
    _, stranger = seeded_member("polycell", b"x", "oem")
    rows, refused = servicer_pull(p, stranger, tid)
    assert rows == 0 and refused is not None
    assert refused.code is grpc.StatusCode.PERMISSION_DENIED and "not yours" in str(refused)
    with pytest.raises(Exception, match="cannot be used"):
        p.rt.transfer_message(stranger, p.request(tid, stranger))


def test_the_re_read_count_survives_reopening_the_runtime(
    opened: Callable[[bool], Provider],
) -> None:
    """Three transfers an hour: one opened and one re-read, then the node restarts (the
    runtime opened again on the same database); one more re-read is the last the hour
    allows, the next is refused. (The count lived in memory: a restart gave a fresh
    quota, and the re-read after it went through.)"""
    first = opened(True)
    first.rt.transfers_per_hour = 3
    done = first.pulled_and_acknowledged()
    genesis = Checkpoint.genesis(done.transfer_id)
    assert first.reread(done.transfer_id, genesis) == 30
    first.qdm.engine.dispose()

    again = opened(False)
    again.rt.transfers_per_hour = 3
    assert again.reread(done.transfer_id, genesis) == 30
    with pytest.raises(TransferQuotaError, match="transfers_per_member_hour 3"):
        again.reread(done.transfer_id, genesis)
    with pytest.raises(TransferQuotaError):  # new transfers are spent with them
        again.rt.transfer_message(again.consumer, again.request(f"tx-{uuid.uuid4().hex}"))


def test_a_pruned_transfers_id_is_taken_for_a_dsp_stream_as_for_a_pull(
    opened: Callable[[bool], Provider],
) -> None:
    """A DSP live stream is opened under the consumer's own pid as the transfer's id; one
    that names a pruned transfer's id is refused as the gRPC request is above (the binding
    asked only whether a transfer of that id was held, and the pruned one is not)."""
    p = opened(True)
    tid = p.pulled_and_acknowledged().transfer_id
    p.rt.terminate("agr-1", "breach")
    sweep(p.rt.store, p.pkey, dt.datetime.now(dt.UTC) + dt.timedelta(days=31))
    store = p.rt.store
    assert store.find_transfer(tid) is None  # what the binding asked before
    assert store.find_transfer_or_gone(tid) is not None
    assert store.find_transfer_or_gone(f"never-{uuid.uuid4()}") is None
