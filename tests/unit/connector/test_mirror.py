"""The consumer's copy is a faithful mirror of the provider's records under an agreement.

A real provider (a QDM on SQLite, the views' `stream_batches` behind a `ReleaseGate`) and
a real consumer (`ContractStore`, the transfer state machine with its chained digest)
exchange batches directly, without a network, so that pulls, ingests, corrections and
withdrawals can be interleaved at will: each record is held once, in its current
version; an incremental pull moves only what changed; corrections replace, withdrawals
remove, and both are kept in the audit trail.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey
from sqlalchemy import create_engine, select

from qdspace.connector.agreement import (
    ContractAgreement,
    DeletionReceipt,
    countersign,
    deletion_digest_of_bytes,
    sign_agreement,
    sign_receipt,
)
from qdspace.connector.assets import Asset, AssetKind
from qdspace.connector.contract_errors import (
    ForeignRecordError,
    RecordEnvelopeError,
    TransferCursorError,
    UnknownContractError,
)
from qdspace.connector.contract_store import (
    ContractStore,
    Deletion,
    IncomingRow,
    IncomingRun,
    OutboxMessage,
    received_row_table,
)
from qdspace.connector.contract_store.data_keys import DataKeys
from qdspace.connector.contract_store.received_pages import Pages, received_page_table
from qdspace.connector.encoding import live_page, record_key, stream_batches
from qdspace.connector.errors import UnknownRecordError
from qdspace.connector.negotiation import Role
from qdspace.connector.paging import INSPECTION_FIELDS, INSPECTION_TABLE
from qdspace.connector.pseudonym import Pseudonymizer
from qdspace.connector.release_gate import ReleaseGate
from qdspace.connector.storage import QualityStore, create_store_engine, open_store
from qdspace.connector.transfer import (
    TransferState,
    accept_batch,
    completion_id,
    open_transfer,
    reread,
)
from qdspace.connector.transfer import apply as apply_transfer
from qdspace.connector.transfer_messages import TransferCompletion, TransferRequest, TransferStart
from qdspace.connector.transfer_wire import RowBatch, row_bytes
from qdspace.policies.evaluate import Request
from qdspace.policies.model import Action, OfferTerms, make_offer, to_agreement

T0 = datetime(2026, 6, 1, tzinfo=UTC)
ORDER, OTHER = "PO-1", "PO-2"
AGR = "agr-mirror"
SECRET = b"s" * 32
KEK = bytes(range(32))
P_KEY, C_KEY = SigningKey(b"p" * 32), SigningKey(b"c" * 32)
QA = "qa"

OFFER = make_offer(
    "offer-insp",
    "cellex",
    "inspections",
    OfferTerms(purposes=frozenset({QA}), orders=frozenset({ORDER}), retention_days=30),
)
ASSET = Asset(
    asset_id="inspections",
    title="EL inspections of an order",
    kind=AssetKind.INSPECTIONS_OF_ORDER,
    tables=("qdm_inspection",),
    fields=INSPECTION_FIELDS,
    offer=OFFER,
    pseudonymized=frozenset(),
)
AGREEMENT = to_agreement(OFFER, AGR, "sunarc")


def inspection(n: int, verdict: str = "pass", order: str = ORDER) -> dict[str, Any]:
    return {
        "inspection_id": f"INS-{n:05d}",
        "station": f"EL-{n % 2}",
        "inspected_at": (T0 + timedelta(seconds=n)).isoformat(),
        "verdict": verdict,
        "score": round((n % 50) / 100, 2),
        "model_version": "el-1",
        "order_id": order,
        "batch_id": "CB-1",
    }


def hold(store: ContractStore, agreement_id: str = AGR) -> None:
    policy = AGREEMENT if agreement_id == AGR else to_agreement(OFFER, agreement_id, "sunarc")
    terms = ContractAgreement(
        agreement_id, f"neg-{agreement_id}", "cellex", "sunarc", "inspections", policy, T0, T0
    )
    signed = countersign(sign_agreement(terms, P_KEY), C_KEY, P_KEY.verify_key)
    store.save_agreement(signed, Role.CONSUMER)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated database with the consumer's agreement, copied for every example."""
    path = tmp_path_factory.mktemp("mirror") / "template.db"
    store = open_store(f"sqlite:///{path}")
    hold(ContractStore(store.engine, KEK))
    store.close()
    return path


@dataclass
class Pull:
    transfer_id: str
    batches: Iterator[tuple[RowBatch, Any]]
    done: bool = False


@dataclass
class Mirror:
    """One provider QDM and one consumer store (two SQLite files), pulls between them."""

    qdm: QualityStore
    store: ContractStore
    pulls: int = 0
    open: list[Pull] = field(default_factory=list)

    @classmethod
    def create(cls, template: Path, where: Path) -> Mirror:
        where.mkdir(parents=True, exist_ok=True)
        shutil.copy(template, where / "provider.db")
        shutil.copy(template, where / "consumer.db")
        qdm = QualityStore(create_store_engine(f"sqlite:///{where / 'provider.db'}"))
        store = ContractStore(create_engine(f"sqlite:///{where / 'consumer.db'}"), KEK)
        return cls(qdm, store)

    def close(self) -> None:
        self.qdm.close()
        self.store.engine.dispose()

    def ingest(self, rows: list[dict[str, Any]]) -> Any:
        return self.qdm.ingest_rows("inspection", enumerate(rows, start=1))

    def start(self, *, since_last: bool = False, batch_rows: int = 7) -> Pull:
        self.pulls += 1
        tid = f"tx-{self.pulls}"
        since = ""
        if since_last:
            last = self.store.last_completed_pull(AGR, ORDER, None, QA)
            since = "" if last is None or last.final is None else last.final.position
        request = TransferRequest(
            f"{tid}:req", tid, "sunarc", AGR, "cellex", T0, QA, ORDER, None, since
        )
        provider = open_transfer(request, Role.PROVIDER)
        start = TransferStart(f"{tid}:start", tid, "cellex", provider.checkpoint, T0)
        provider = apply_transfer(provider, start)
        consumer = open_transfer(request, Role.CONSUMER)
        self.store.save_transfer(None, consumer)
        self.store.save_transfer(consumer, apply_transfer(consumer, start))
        asked = Request(Action.READ, T0, ASSET.fields, purpose=QA, order_id=ORDER)
        gate = ReleaseGate(ASSET, AGREEMENT, asked, Pseudonymizer(SECRET, AGR))
        pull = Pull(tid, stream_batches(provider, self.qdm.engine, gate, batch_rows=batch_rows))
        self.open.append(pull)
        return pull

    def step(self, pull: Pull) -> None:
        """The consumer commits the provider's next batch (and completes after the last)."""
        batch, _ = next(pull.batches)
        current = self.store.load_transfer(pull.transfer_id)
        advanced = accept_batch(current, batch)
        rows: list[IncomingRow] | IncomingRun = [
            IncomingRow(batch.first_offset + i, r.order_id, r.payload)
            for i, r in enumerate(batch.rows)
        ]
        if int(pull.transfer_id.removeprefix("tx-")) % 2:  # every other pull as the node's
            rows = IncomingRun(batch.first_offset, batch.orders(), batch.payloads())
        self.store.commit_transfer_batch(current, advanced, rows, T0)
        if batch.last:
            tid = pull.transfer_id
            done = TransferCompletion(f"{tid}:done", tid, "cellex", batch.checkpoint, T0)
            self.store.save_transfer(advanced, apply_transfer(advanced, done))
            pull.done = True
            self.open.remove(pull)

    def pull(self, *, since_last: bool = False, batch_rows: int = 7) -> int:
        """A whole pull; returns how many rows it moved."""
        pull = self.start(since_last=since_last, batch_rows=batch_rows)
        while not pull.done:
            self.step(pull)
        return self.store.load_transfer(pull.transfer_id).offset

    def provider_records(self) -> dict[str, tuple[int, str]]:
        """record key -> (version, verdict) of the provider's current records in scope."""
        table = INSPECTION_TABLE
        pseudonyms = Pseudonymizer(SECRET, AGR)
        statement = select(table.c.inspection_id, table.c.version, table.c.verdict).where(
            table.c.order_id == ORDER, table.c.withdrawn_at.is_(None)
        )
        with self.qdm.engine.connect() as connection:
            found = connection.execute(statement).all()
        return {
            record_key(pseudonyms, table, [i]): (int(version), verdict)
            for i, version, verdict in found
        }

    def held(self) -> dict[str, tuple[int, str]]:
        rows = self.store.received_rows(AGR)
        assert len(rows) == self.store.count_received(AGR)
        out = {r.record_key: (r.version, r.decode()["verdict"]) for r in rows}
        assert len(out) == len(rows), "a record is held twice"
        for r in rows:
            envelope = r.decode()
            assert (envelope["@key"], envelope["@v"]) == (r.record_key, r.version)
        # the sealed pages hold exactly the records held: no stale version, no withdrawn
        # record, no second copy of a re-delivered one
        assert sorted(self.page_slots()) == sorted(r.payload for r in rows)
        return out

    def page_slots(self) -> list[bytes]:
        """The rows in every sealed page (blanked slots left out), opened with the KEK."""
        pages = Pages(DataKeys(self.store.engine, KEK), received_row_table)
        with self.store.engine.connect() as connection:
            page = received_page_table
            ids = list(connection.scalars(select(page.c.id).where(page.c.agreement_id == AGR)))
            opened = pages.open_pages(connection, ids, T0)
        return [p for page in opened.values() for p in page.payloads if p]

    def page_count(self) -> int:
        with self.store.engine.connect() as connection:
            return len(list(connection.scalars(select(received_page_table.c.id))))


@pytest.fixture
def mirror(template: Path, tmp_path: Path) -> Iterator[Mirror]:
    m = Mirror.create(template, tmp_path)
    yield m
    m.close()


# ------------------------------------------------------------- idempotent


def test_pulling_the_same_order_again_stores_nothing_twice(mirror: Mirror) -> None:
    mirror.ingest([inspection(n) for n in range(50)])
    assert mirror.pull() == 50
    for _ in range(3):
        assert mirror.pull() == 50  # every full pull moves the order ...
    assert mirror.store.count_received(AGR) == 50  # ... and it is held once
    assert mirror.held() == mirror.provider_records()


def test_concurrent_pulls_of_one_agreement_store_each_record_once(mirror: Mirror) -> None:
    mirror.ingest([inspection(n) for n in range(40)])
    first, second = mirror.start(batch_rows=3), mirror.start(batch_rows=5)
    while mirror.open:
        for pull in list(mirror.open):
            mirror.step(pull)
    assert mirror.store.count_received(AGR) == 40
    assert mirror.held() == mirror.provider_records()
    assert first.done and second.done


# ------------------------------------------------------------ incremental


def test_an_incremental_pull_after_n_new_rows_moves_exactly_n(mirror: Mirror) -> None:
    mirror.ingest([inspection(n) for n in range(120)])
    assert mirror.pull(since_last=True) == 120  # no earlier pull: everything
    mirror.ingest([inspection(n, order=OTHER) for n in range(1000, 1010)])  # out of scope
    mirror.ingest([inspection(n) for n in range(120, 133)])
    assert mirror.pull(since_last=True) == 13
    assert mirror.pull(since_last=True) == 0  # nothing changed since
    assert mirror.held() == mirror.provider_records()
    transfers = {t.transfer_id: t for t in mirror.store.transfers(AGR)}
    assert transfers["tx-2"].since == transfers["tx-1"].final.position  # type: ignore[union-attr]


def test_an_incremental_pull_carries_corrections_and_withdrawals(mirror: Mirror) -> None:
    mirror.ingest([inspection(n) for n in range(30)])
    mirror.pull()
    report = mirror.ingest([inspection(3, "fail"), inspection(4), inspection(30)])
    assert (report.accepted, report.corrected, report.duplicates) == (1, 1, 1)
    mirror.qdm.withdraw("inspection", {"inspection_id": "INS-00007"}, T0 + timedelta(days=1))
    assert mirror.pull(since_last=True) == 3  # the new row, the correction, the tombstone
    held = mirror.held()
    assert held == mirror.provider_records()
    assert len(held) == 30
    assert sorted(v for v, _ in held.values()).count(2) == 1


# ------------------------------------------------------------ corrections


def test_a_correction_replaces_a_withdrawal_removes_and_both_are_in_the_audit_trail(
    mirror: Mirror,
) -> None:
    mirror.ingest([inspection(n) for n in range(5)])
    mirror.pull()
    pseudonyms = Pseudonymizer(SECRET, AGR)
    key1 = record_key(pseudonyms, INSPECTION_TABLE, ["INS-00001"])
    key2 = record_key(pseudonyms, INSPECTION_TABLE, ["INS-00002"])
    assert mirror.ingest([inspection(1, "fail")]).corrected == 1
    assert mirror.ingest([inspection(1, "fail")]).duplicates == 1  # the same again: nothing
    mirror.qdm.withdraw("inspection", {"inspection_id": "INS-00002"}, T0 + timedelta(hours=1))
    with pytest.raises(UnknownRecordError, match="withdrawn"):
        mirror.qdm.withdraw("inspection", {"inspection_id": "INS-00002"}, T0)
    with pytest.raises(UnknownRecordError):
        mirror.qdm.withdraw("inspection", {"inspection_id": "nope"}, T0)
    mirror.pull(since_last=True)
    held = mirror.held()
    assert held[key1] == (2, "fail")
    assert key2 not in held and len(held) == 4
    trail = {(c.record_key, c.version, c.withdrawn) for c in mirror.store.received_changes(AGR)}
    assert trail == {(key1, 2, False), (key2, 2, True)}
    every = mirror.store.received_changes(AGR)
    pages = [mirror.store.received_changes(AGR, limit=1, offset=o) for o in range(3)]
    assert [c for page in pages for c in page] == every and pages[2] == []  # paged in SQL
    corrected = next(c for c in every if c.record_key == key1)
    current = next(r for r in mirror.store.received_rows(AGR) if r.record_key == key1)
    assert corrected.content_sha256 == hashlib.sha256(current.payload).hexdigest()
    # Re-ingesting a withdrawn record brings it back as the next version.
    assert mirror.ingest([inspection(2, "fail")]).corrected == 1
    mirror.pull(since_last=True)
    assert mirror.held()[key2] == (3, "fail")


def test_a_late_older_version_never_replaces_a_newer_one(mirror: Mirror) -> None:
    mirror.ingest([inspection(n) for n in range(10)])
    slow = mirror.start(batch_rows=2)
    mirror.step(slow)  # it has read a page: INS-0..1 at version 1 are on their way
    mirror.ingest([inspection(0, "fail")])  # corrected after the slow pull read it
    mirror.qdm.withdraw("inspection", {"inspection_id": "INS-00005"}, T0)
    assert mirror.pull() == 10  # a quick pull: 9 current records and one tombstone
    while not slow.done:
        mirror.step(slow)
    assert mirror.held() == mirror.provider_records()


# ------------------------------------------------- the live stream agrees


def test_a_record_seen_on_the_stream_is_not_stored_again_by_a_pull(mirror: Mirror) -> None:
    mirror.ingest([inspection(n) for n in range(12)])
    asked = Request(Action.STREAM, T0, ASSET.fields, purpose=QA)
    gate = ReleaseGate(ASSET, AGREEMENT, asked, Pseudonymizer(SECRET, AGR))
    rows, positions, _ = live_page(mirror.qdm.engine, gate, 0, 500)
    incoming = [
        IncomingRow(int(p), r.order_id, r.payload) for p, r in zip(positions, rows, strict=True)
    ]
    assert mirror.store.store_received_rows(AGR, "sub-1", incoming, T0).added == 12
    assert mirror.pull() == 12
    assert mirror.store.count_received(AGR) == 12
    assert mirror.held() == mirror.provider_records()
    mirror.ingest([inspection(3, "fail")])
    rows, positions, _ = live_page(mirror.qdm.engine, gate, int(positions[-1]), 500)
    incoming = [
        IncomingRow(int(p), r.order_id, r.payload) for p, r in zip(positions, rows, strict=True)
    ]
    assert mirror.store.store_received_rows(AGR, "sub-1", incoming, T0).replaced == 1
    assert mirror.held() == mirror.provider_records()


# ------------------------------------------------------------ hostile peers


def test_a_peers_rows_and_tombstones_are_checked_against_the_agreement(mirror: Mirror) -> None:
    mirror.ingest([inspection(n) for n in range(3)])
    mirror.pull()
    hold(mirror.store, "agr-other")
    other_key = "rec_other"
    mirror.store.store_received_rows(
        "agr-other",
        "sub-x",
        [IncomingRow(1, ORDER, row_bytes({"@key": other_key, "@v": 1, "verdict": "pass"}))],
        T0,
    )
    (victim,) = [r.record_key for r in mirror.store.received_rows(AGR)][:1]
    tombstone = row_bytes({"@key": victim, "@v": 9, "@withdrawn": True})
    # A tombstone for an order the agreement does not cover is refused ...
    with pytest.raises(ForeignRecordError, match=OTHER):
        mirror.store.store_received_rows(AGR, "sub-x", [IncomingRow(5, OTHER, tombstone)], T0)
    # ... one under another agreement cannot reach this agreement's rows ...
    foreign = row_bytes({"@key": victim, "@v": 9, "@withdrawn": True})
    mirror.store.store_received_rows("agr-other", "sub-x", [IncomingRow(6, ORDER, foreign)], T0)
    assert victim in mirror.held()
    # ... a tombstone that carries content, or a row without a key, is not a row at all.
    bent = row_bytes({"@key": victim, "@v": 9, "@withdrawn": True, "verdict": "fail"})
    with pytest.raises(RecordEnvelopeError, match="tombstone"):
        mirror.store.store_received_rows(AGR, "sub-x", [IncomingRow(7, ORDER, bent)], T0)
    with pytest.raises(RecordEnvelopeError, match="record key"):
        mirror.store.store_received_rows(AGR, "sub-x", [IncomingRow(8, ORDER, b"{}")], T0)
    with pytest.raises(UnknownContractError):
        mirror.store.store_received_rows("agr-none", "sub-x", [IncomingRow(9, ORDER, foreign)], T0)
    assert len(mirror.held()) == 3
    assert mirror.store.count_received("agr-other") == 1


def test_a_row_with_a_number_beyond_a_double_is_refused_and_nothing_is_stored(
    mirror: Mirror,
) -> None:
    """A hostile provider's row that orjson (every reader of the copy) would refuse, among
    good ones: the whole delivery is refused naming the row's seq and field, and nothing
    of it is held (the envelopes are checked page-wise, `record_metas`)."""
    hold(mirror.store, "agr-bad")
    good = [
        IncomingRow(i, ORDER, row_bytes({"@key": f"rec_{i}", "@v": 1, "score": i / 3}))
        for i in range(1, 30)
    ]
    for bad in (b"1e999", b"-2E+400", b"NaN"):
        row = b'{"@key":"rec_x","@v":1,"batch_id":"b","score":' + bad + b"}"
        rows = [*good[:10], IncomingRow(77, ORDER, row), *good[10:]]
        with pytest.raises(RecordEnvelopeError, match=r"row seq 77: .*'score'"):
            mirror.store.store_received_rows("agr-bad", "sub-x", rows, T0)
        assert mirror.store.count_received("agr-bad") == 0
    assert mirror.store.store_received_rows("agr-bad", "sub-x", good, T0).added == len(good)


# -------------------------------------------------------------- retention


def test_the_deletion_receipt_covers_exactly_the_records_held(mirror: Mirror) -> None:
    mirror.ingest([inspection(n) for n in range(20)])
    mirror.pull()
    mirror.ingest([inspection(n, "fail") for n in range(5)])
    for n in (10, 11):
        mirror.qdm.withdraw("inspection", {"inspection_id": f"INS-{n:05d}"}, T0)
    mirror.pull(since_last=True)
    held = [r.payload for r in mirror.store.received_rows(AGR)]
    assert len(held) == 18
    mirror.store.record_order_closed(AGR, ORDER, T0)

    def receipt(deletion: Deletion) -> tuple[Any, tuple[OutboxMessage, ...]]:
        signed = sign_receipt(
            DeletionReceipt(AGR, "sunarc", deletion.row_count, deletion.content_sha256, T0, ORDER),
            C_KEY,
        )
        return signed, ()

    signed = mirror.store.shred(AGR, ORDER, T0 + timedelta(days=31), receipt)
    assert (signed.receipt.row_count, signed.receipt.content_sha256) == deletion_digest_of_bytes(
        held
    )
    assert mirror.store.count_received(AGR) == 0
    assert mirror.store.received_changes(AGR) == []
    assert mirror.store.receipts(AGR) == [signed]


# --------------------------------------------------------- property test

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("ingest"), st.integers(1, 12)),
        st.tuples(st.just("correct"), st.integers(0, 200)),
        st.tuples(st.just("withdraw"), st.integers(0, 200)),
        st.tuples(st.just("start"), st.booleans()),
        st.tuples(st.just("step"), st.integers(0, 3)),
    ),
    max_size=30,
)


def test_a_consumer_cut_off_after_the_provider_completed_resumes_with_another_batch_size(
    mirror: Mirror,
) -> None:
    """The provider sent everything in batches of 50 and completed; the consumer had
    committed only the first batch when it was cut off, and resumes with batches of 7.
    The digest chain hashes whole batches, so the provider rewinds to the consumer's
    checkpoint (`reread`) and completes the new chain: the consumer's acknowledgement
    matches, every row is held once. Once acknowledged, a re-read changes nothing."""
    mirror.ingest([inspection(n) for n in range(1, 121)])
    tid = "tx-cut"
    request = TransferRequest(f"{tid}:req", tid, "sunarc", AGR, "cellex", T0, QA, ORDER)
    start = TransferStart(
        f"{tid}:start", tid, "cellex", open_transfer(request, Role.PROVIDER).checkpoint, T0
    )
    provider = apply_transfer(open_transfer(request, Role.PROVIDER), start)
    consumer = open_transfer(request, Role.CONSUMER)
    mirror.store.save_transfer(None, consumer)
    mirror.store.save_transfer(consumer, apply_transfer(consumer, start))
    asked = Request(Action.READ, T0, ASSET.fields, purpose=QA, order_id=ORDER)
    gate = ReleaseGate(ASSET, AGREEMENT, asked, Pseudonymizer(SECRET, AGR))

    def commit(batch: RowBatch) -> None:
        current = mirror.store.load_transfer(tid)
        rows = [
            IncomingRow(batch.first_offset + i, r.order_id, r.payload)
            for i, r in enumerate(batch.rows)
        ]
        mirror.store.commit_transfer_batch(current, accept_batch(current, batch), rows, T0)

    # the provider streams everything in batches of 50 and completes
    first = None
    for batch, after in stream_batches(provider, mirror.qdm.engine, gate, batch_rows=50):
        first = first or batch
        provider = after
        if batch.last:
            done = TransferCompletion(
                completion_id(after, Role.PROVIDER), tid, "cellex", after.checkpoint, T0
            )
            provider = apply_transfer(after, done)
    assert provider.state is TransferState.COMPLETED and first is not None
    commit(first)  # ... but the consumer committed only the first batch
    held = mirror.store.load_transfer(tid)
    assert held.offset == 50

    with pytest.raises(TransferCursorError):  # a checkpoint beyond the end is refused
        reread(provider, replace(held.checkpoint, offset=121))
    resumed, keep = reread(provider, held.checkpoint)
    assert keep and resumed.state is TransferState.STARTED and resumed.final is None
    for batch, after in stream_batches(resumed, mirror.qdm.engine, gate, batch_rows=7):
        commit(batch)
        resumed = after
        if batch.last:
            pid = completion_id(after, Role.PROVIDER)
            assert pid == f"{tid}:p-complete-2"  # its own id: the first completion was signed
            resumed = apply_transfer(
                after, TransferCompletion(pid, tid, "cellex", after.checkpoint, T0)
            )
    consumer = mirror.store.load_transfer(tid)
    assert consumer.offset == 120 and resumed.final == consumer.checkpoint
    ack_id = completion_id(consumer, Role.CONSUMER)
    ack = TransferCompletion(ack_id, tid, "sunarc", consumer.checkpoint, T0)
    acknowledged = apply_transfer(resumed, ack)  # matches: no TransferIntegrityError
    assert acknowledged.state is TransferState.COMPLETED
    assert len(mirror.held()) == 120

    again, keep = reread(acknowledged, held.checkpoint)  # after the acknowledgement
    assert not keep and again.final == acknowledged.final


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=OPS)
def test_any_interleaving_of_pulls_and_changes_ends_in_a_faithful_copy(
    template: Path, tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, Any]]
) -> None:
    mirror = Mirror.create(template, tmp_path_factory.mktemp("example"))
    try:
        made = 0
        for op, arg in ops:
            if op == "ingest":
                mirror.ingest([inspection(made + i) for i in range(arg)])
                made += arg
            elif op == "correct" and made:
                mirror.ingest([inspection(arg % made, "fail" if arg % 2 else "pass")])
            elif op == "withdraw" and made:
                try:
                    key = {"inspection_id": f"INS-{arg % made:05d}"}
                    mirror.qdm.withdraw("inspection", key, T0)
                except UnknownRecordError:
                    pass  # withdrawn already
            elif op == "start":
                mirror.start(since_last=arg, batch_rows=3)
            elif op == "step" and mirror.open:
                mirror.step(mirror.open[arg % len(mirror.open)])
        while mirror.open:  # every pull runs to its end, in the order they were started
            mirror.step(mirror.open[0])
        mirror.pull(since_last=True)
        assert mirror.held() == mirror.provider_records()
        before = mirror.store.count_received(AGR)
        assert mirror.pull(since_last=True) == 0
        mirror.pull()  # a full pull on top changes nothing
        assert mirror.store.count_received(AGR) == before
        assert mirror.held() == mirror.provider_records()
    finally:
        mirror.close()


def test_tombstones_hold_no_content(mirror: Mirror) -> None:
    mirror.ingest([inspection(n) for n in range(3)])
    mirror.qdm.withdraw("inspection", {"inspection_id": "INS-00001"}, T0)
    mirror.pull()
    t = received_row_table
    with mirror.store.engine.connect() as connection:
        rows = connection.execute(
            select(t.c.withdrawn, t.c.ciphertext, t.c.version, t.c.page_id.is_(None))
        ).all()
    assert sorted((bool(w), len(c) == 0, v, bool(n)) for w, c, v, n in rows) == [
        (False, True, 1, False),  # content in a sealed page
        (False, True, 1, False),
        (True, True, 2, True),  # a tombstone: no content, no page
    ]
    assert len(mirror.page_slots()) == 2 and mirror.held()


def test_pages_keep_no_stale_withdrawn_or_redelivered_content(mirror: Mirror) -> None:
    mirror.ingest([inspection(n) for n in range(20)])
    mirror.pull(batch_rows=6)
    pages = mirror.page_count()
    assert pages == 4 and len(mirror.held()) == 20
    assert mirror.pull(batch_rows=6) == 20  # a full re-delivery stores no page
    assert mirror.page_count() == pages
    mirror.ingest([inspection(n) for n in range(20, 23)])  # 3 new among 23 re-sent
    mirror.pull(batch_rows=23)
    assert mirror.page_count() == pages + 1 and len(mirror.held()) == 23
    old = next(p for p in mirror.page_slots() if b"INS-00004" in p)
    mirror.ingest([inspection(4, "fail")])  # a correction: its old slot is blanked
    for n in (0, 1, 2, 3, 5):  # the rest of the first page withdrawn: the page goes
        mirror.qdm.withdraw("inspection", {"inspection_id": f"INS-{n:05d}"}, T0)
    mirror.pull(since_last=True)
    slots = mirror.page_slots()
    assert old not in slots and not any(b"INS-00000" in p for p in slots)
    assert mirror.page_count() == pages + 1  # one page gone, the correction's page added
    assert len(mirror.held()) == 18
    held = mirror.store.received_rows(AGR)
    assert [r.decode()["verdict"] for r in held if b"INS-00004" in r.payload] == ["fail"]
    mirror.qdm.withdraw("inspection", {"inspection_id": "INS-00007"}, T0)
    mirror.pull(since_last=True)  # a slot blanked in a page that keeps live ones
    assert mirror.page_count() == pages + 1 and len(mirror.held()) == 17


def test_process_data_along_a_genealogy_is_pulled_in_full() -> None:
    """Its scope grows with the genealogy, so a watermark would miss older rows."""
    from dataclasses import replace

    from qdspace.connector.paging import incremental_refusal

    assert incremental_refusal(ASSET) is None
    along = replace(ASSET, kind=AssetKind.PROCESS_ALONG_GENEALOGY)
    assert "pulled in full" in (incremental_refusal(along) or "")
