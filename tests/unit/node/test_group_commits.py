"""The consumer's grouped commits of a pull (`contracts_client._GroupCommits`), on a real
contract store (SQLite): verified batches are stored a group at a time with the cursor
after the group's last batch, so the stored cursor is always at a batch boundary and
rows not yet committed are simply pulled again on a resume; a failed commit surfaces
and stores nothing of its group."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
from nacl.signing import SigningKey
from sqlalchemy import create_engine

from qdspace.connector.agreement import ContractAgreement, countersign, sign_agreement
from qdspace.connector.contract_errors import ContractStoreError, ForeignRecordError
from qdspace.connector.contract_store import ContractStore, IncomingRow, IncomingRun, ensure_schema
from qdspace.connector.negotiation import Role
from qdspace.connector.transfer import TransferProcess, advance, open_transfer
from qdspace.connector.transfer import apply as apply_transfer
from qdspace.connector.transfer_messages import TransferRequest, TransferStart
from qdspace.connector.transfer_wire import Checkpoint, row_bytes
from qdspace.node.metrics import NodeMetrics
from qdspace.node.rpc import contracts_client
from qdspace.node.rpc.contracts_client import _GroupCommits
from qdspace.policies.model import OfferTerms, make_offer, to_agreement

T0 = datetime(2026, 5, 1, tzinfo=UTC)


def _consumer(tmp_path: Path) -> tuple[ContractStore, TransferProcess]:
    """A consumer's store holding a signed agreement on ORD-1 and a STARTED transfer."""
    terms = OfferTerms(purposes=frozenset({"qa"}), orders=frozenset({"ORD-1"}), fields=None)
    policy = to_agreement(make_offer("offer-logs", "cellex", "logs", terms), "agr-g", "sunarc")
    engine = create_engine(f"sqlite:///{tmp_path / 'consumer.db'}")
    ensure_schema(engine)
    store = ContractStore(engine, b"k" * 32)
    provider, consumer = SigningKey(b"p" * 32), SigningKey(b"c" * 32)
    signed = ContractAgreement("agr-g", "neg-g", "cellex", "sunarc", "logs", policy, T0, T0)
    store.save_agreement(
        countersign(sign_agreement(signed, provider), consumer, provider.verify_key), Role.CONSUMER
    )
    opening = TransferRequest("m1", "tx", "sunarc", "agr-g", "cellex", T0, "qa", "ORD-1")
    process = open_transfer(opening, Role.CONSUMER)
    store.save_transfer(None, process)
    start = TransferStart("m2", "tx", "cellex", Checkpoint.genesis("tx"), T0)
    started = apply_transfer(process, start)
    store.save_transfer(process, started)
    return store, started


def _batch(process: TransferProcess, size: int) -> tuple[list[bytes], TransferProcess]:
    first = process.offset
    payloads = [
        row_bytes({"@key": f"rec_{first + i:032x}", "@v": 1, "action": "rework"})
        for i in range(size)
    ]
    return payloads, advance(process, payloads, str(first + size))


def test_batches_are_stored_a_group_at_a_time_at_batch_boundaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(contracts_client, "GROUP_BATCHES", 3)
    store, process = _consumer(tmp_path)
    metrics = NodeMetrics()

    async def pull() -> list[int]:
        commits = _GroupCommits(store.commit_transfer_batch, metrics, process)
        current, stored = process, []
        for _ in range(7):  # 7 batches of 4 rows: groups of 3, 3 and (cut off) 1
            first = current.offset
            payloads, current = _batch(current, 4)
            commits.add(first, ["ORD-1"] * 4, payloads, current, 100)
            if commits.full:
                await commits.flush(T0)
            await commits.settle()
            stored.append(store.load_transfer("tx").offset)
        return stored  # the stream breaks here: the 7th batch was never committed

    stored = asyncio.run(pull())
    assert stored == [0, 0, 12, 12, 12, 24, 24]
    held = store.load_transfer("tx")
    assert held.offset == 24 and held.checkpoint.position == "24"  # a batch boundary
    assert store.count_received("agr-g") == 24
    resumed = store.load_transfer("tx")  # a resume pulls from here: rows 24.. again
    payloads, after = _batch(resumed, 4)
    rows = [IncomingRow(24 + i, "ORD-1", p) for i, p in enumerate(payloads)]
    store.commit_transfer_batch(resumed, after, rows, T0)  # rows as tuples, as the DSP gave them
    assert store.count_received("agr-g") == 28


def test_a_failed_group_commit_surfaces_and_stores_nothing_of_its_group(tmp_path: Path) -> None:
    store, process = _consumer(tmp_path)

    async def pull() -> None:
        commits = _GroupCommits(store.commit_transfer_batch, NodeMetrics(), process)
        payloads, after = _batch(process, 4)
        commits.add(0, ["ORD-1"] * 3 + ["ORD-2"], payloads, after, 100)  # ORD-2: not covered
        await commits.flush(T0)
        await commits.settle()

    with pytest.raises(ForeignRecordError, match="does not cover order 'ORD-2'"):
        asyncio.run(pull())
    assert store.load_transfer("tx").offset == 0
    assert store.count_received("agr-g") == 0


def test_rows_out_of_place_are_refused_by_the_group_and_by_the_store(tmp_path: Path) -> None:
    store, process = _consumer(tmp_path)
    payloads, after = _batch(process, 4)
    commits = _GroupCommits(store.commit_transfer_batch, NodeMetrics(), process)
    with pytest.raises(ValueError, match="do not follow"):
        commits.add(1, ["ORD-1"] * 4, payloads, after, 100)  # the cursor is at 0
    with pytest.raises(ValueError, match="3 orders for 4 rows"):
        commits.add(0, ["ORD-1"] * 3, payloads, after, 100)
    for wrong in (
        IncomingRun(1, ["ORD-1"] * 4, payloads),  # one on
        IncomingRun(0, ["ORD-1"] * 3, payloads[:3]),  # one short
        [IncomingRow(i + 1, "ORD-1", p) for i, p in enumerate(payloads)],
    ):
        with pytest.raises(ContractStoreError, match=r"batch rows must have seq 0\.\.3"):
            store.commit_transfer_batch(process, after, wrong, T0)
    assert store.load_transfer("tx").offset == 0
    assert store.count_received("agr-g") == 0
    store.commit_transfer_batch(process, after, IncomingRun(0, ["ORD-1"] * 4, payloads), T0)
    held = sorted((r.seq, r.payload) for r in store.received_rows("agr-g"))
    assert held == list(enumerate(payloads))  # each row under its own seq
    assert [IncomingRow(*r) for r in IncomingRun(0, ["ORD-1"] * 4, payloads)] == [
        IncomingRow(i, "ORD-1", p) for i, p in enumerate(payloads)
    ]
