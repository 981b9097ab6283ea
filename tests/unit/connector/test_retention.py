"""The retention sweeper on a real SQLite file, with a clock that jumps 181 days."""

from __future__ import annotations

import functools
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey
from sqlalchemy import Connection, create_engine, text

from qdspace.connector.agreement import (
    ContractAgreement,
    SignedAgreement,
    SignedReceipt,
    countersign,
    deletion_digest,
    open_signed_receipt,
    sign_agreement,
)
from qdspace.connector.contract_store import (
    ContractStore,
    IncomingRow,
    OutboxMessage,
    ensure_schema,
)
from qdspace.connector.negotiation import Role
from qdspace.connector.retention_sweep import RetentionSweeper, sweep
from qdspace.policies.canonical import canonical_json
from qdspace.policies.model import OfferTerms, make_offer, to_agreement
from qdspace.policies.retention import DutyStatus

T0 = datetime(2026, 5, 1, tzinfo=UTC)
P_KEY, C_KEY = SigningKey(b"p" * 32), SigningKey(b"c" * 32)


@functools.cache
def _migrated_template() -> bytes:
    """The bytes of a SQLite file brought to the newest schema by ``ensure_schema`` once:
    the property test below makes a store per example (40), and the migrations were
    most of its time. A copy is that same file (one transaction, rollback journal)."""
    with tempfile.TemporaryDirectory(prefix="qdspace-retention-") as tmp:
        path = Path(tmp) / "template.db"
        engine = create_engine(f"sqlite:///{path}")
        ensure_schema(engine)
        engine.dispose()
        return path.read_bytes()


def make_store(directory: Path) -> ContractStore:
    """A contract store on a new SQLite file of the newest schema (a copy of the
    template; ``ensure_schema`` finds it at the head and leaves it alone)."""
    path = directory / f"{uuid.uuid4().hex}.db"
    path.write_bytes(_migrated_template())
    engine = create_engine(f"sqlite:///{path}")
    ensure_schema(engine)
    return ContractStore(engine, b"k" * 32)


def give_agreement(store: ContractStore, agreement_id: str, days: int | None, role: Role) -> None:
    store.save_agreement(signed_agreement(agreement_id, days), role)


#: the columns an agreement's row had before 0019_agreement_listing
COLUMNS_BEFORE_0019 = (
    "agreement_id", "negotiation_id", "role", "provider_id", "consumer_id", "asset_id",
    "canonical", "provider_signature", "consumer_signature", "digest", "agreed_at", "signed",
)  # fmt: skip


def give_agreement_before_0019(connection: Connection, signed: SignedAgreement, role: Role) -> None:
    """An agreement stored as a node before 0019 stored it (a test of an older schema;
    `save_agreement` writes the columns 0019 added)."""
    terms = signed.agreement
    agreed = terms.agreed_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    values = (
        terms.agreement_id, terms.negotiation_id, role.value, terms.provider_id,
        terms.consumer_id, terms.asset_id, signed.canonical_bytes, signed.provider_signature,
        signed.consumer_signature, terms.digest().hex(), agreed, True,
    )  # fmt: skip
    names = ", ".join(COLUMNS_BEFORE_0019)
    marks = ", ".join(f":{n}" for n in COLUMNS_BEFORE_0019)
    statement = text(f"INSERT INTO contract_agreement ({names}) VALUES ({marks})")
    connection.execute(statement, dict(zip(COLUMNS_BEFORE_0019, values, strict=True)))


def signed_agreement(agreement_id: str, days: int | None) -> SignedAgreement:
    """cellex's countersigned agreement with sunarc (180 days' retention unless given)."""
    terms = OfferTerms(purposes=frozenset({"qa"}), retention_days=180 if days is None else days)
    offer = make_offer(f"offer-{agreement_id}", "cellex", "inspections", terms)
    terms_signed = ContractAgreement(
        agreement_id=agreement_id,
        negotiation_id=f"neg-{agreement_id}",
        provider_id="cellex",
        consumer_id="sunarc",
        asset_id="inspections",
        policy=to_agreement(offer, agreement_id, "sunarc"),
        requested_at=T0,
        agreed_at=T0,
    )
    return countersign(sign_agreement(terms_signed, P_KEY), C_KEY, P_KEY.verify_key)


def rows_of(order: str, count: int) -> list[dict[str, object]]:
    return [
        {
            "@key": f"rec-{order}-{n}",
            "@v": 1,
            "order_id": order,
            "inspection_id": f"{order}-{n}",
            "score": n / 7,
        }
        for n in range(count)
    ]


@pytest.fixture
def consumer(tmp_path: Path) -> Iterator[ContractStore]:
    store = make_store(tmp_path)
    yield store
    store.engine.dispose()


def test_a_jump_of_181_days_deletes_the_data_and_signs_a_receipt(consumer: ContractStore) -> None:
    give_agreement(consumer, "agr-1", None, Role.CONSUMER)  # default retention: 180 days
    rows = rows_of("ORD-1", 5)
    consumer.store_received_rows(
        "agr-1",
        "tx-1",
        [IncomingRow(i, "ORD-1", canonical_json(r)) for i, r in enumerate(rows)],
        T0,
    )
    closed = T0 + timedelta(days=3)
    consumer.record_order_closed("agr-1", "ORD-1", closed)
    now = [closed]

    def outbox(signed: SignedReceipt, provider: str) -> list[OutboxMessage]:
        receipt = signed.receipt
        return [OutboxMessage(provider, "receipt", receipt.agreement_id, receipt.receipt_id, b"x")]

    sweeper = RetentionSweeper(consumer, C_KEY, lambda: now[0], outbox=outbox)
    assert sweeper.run_once().receipts == ()
    now[0] = closed + timedelta(days=179)
    assert sweeper.run_once().receipts == () and consumer.count_received() == 5
    now[0] = closed + timedelta(days=181)
    report = sweeper.run_once()
    (signed,) = report.receipts
    assert report.rows_deleted == 5 and report.failures == ()
    assert consumer.count_received() == 0 and consumer.key_destroyed("agr-1", "ORD-1")
    receipt = signed.receipt
    assert (receipt.agreement_id, receipt.order_id, receipt.consumer_id) == (
        "agr-1",
        "ORD-1",
        "sunarc",
    )
    assert receipt.deleted_at == now[0]
    assert receipt.content_sha256 == deletion_digest(rows)[1]
    # The provider can check the signature and the claims from the bytes alone.
    opened = open_signed_receipt(receipt.canonical_bytes(), signed.signature, C_KEY.verify_key)
    assert opened == signed
    (message,) = consumer.due_messages(now[0])
    assert (message.message.peer_id, message.message.message_id) == ("cellex", receipt.receipt_id)
    assert sweeper.run_once().receipts == ()  # nothing twice


def test_a_sweep_horizon_deletes_what_would_expire_before_the_next_run(
    consumer: ContractStore,
) -> None:
    give_agreement(consumer, "agr-h", 180, Role.CONSUMER)
    consumer.store_received_rows(
        "agr-h",
        "tx-h",
        [IncomingRow(0, "ORD-1", canonical_json({"@key": "k0", "@v": 1, "order_id": "ORD-1"}))],
        T0,
    )
    consumer.record_order_closed("agr-h", "ORD-1", T0)
    deadline = T0 + timedelta(days=180)
    early = deadline - timedelta(hours=2)
    assert sweep(consumer, C_KEY, early).receipts == ()  # no horizon: not yet
    with pytest.raises(ValueError, match="negative"):
        sweep(consumer, C_KEY, early, horizon=timedelta(hours=-1))
    (signed,) = sweep(consumer, C_KEY, early, horizon=timedelta(hours=3)).receipts
    assert signed.receipt.deleted_at == early < deadline  # on time, stamped when it happened
    assert consumer.count_received("agr-h") == 0


def test_provider_sees_the_duty_fulfilled_once_the_receipt_arrives(tmp_path: Path) -> None:
    provider, consumer = make_store(tmp_path), make_store(tmp_path)
    give_agreement(provider, "agr-1", 30, Role.PROVIDER)
    give_agreement(consumer, "agr-1", 30, Role.CONSUMER)
    consumer.store_received_rows(
        "agr-1", "s", [IncomingRow(1, "ORD-1", b'{"@key":"k1","@v":1,"a":1}')], T0
    )
    closed = T0 + timedelta(days=1)
    assert provider.close_order("cellex", "ORD-1", closed) == ["agr-1"]
    consumer.record_order_closed("agr-1", "ORD-1", closed)
    late = closed + timedelta(days=31)
    assert [d.status for d in provider.deletion_duties(late)] == [DutyStatus.OVERDUE]
    (signed,) = sweep(consumer, C_KEY, closed + timedelta(days=30)).receipts
    provider.record_receipt(signed)
    (duty,) = provider.deletion_duties(late)
    assert duty.status is DutyStatus.FULFILLED and duty.receipt == signed.receipt


orders = st.sampled_from(["ORD-1", "ORD-2", "ORD-3", "ORD-4"])
plans = st.lists(
    st.tuples(
        st.sampled_from(["agr-a", "agr-b"]),
        orders,
        st.integers(0, 6),  # rows
        st.none() | st.integers(0, 400),  # closed at day (None: still open)
    ),
    min_size=1,
    max_size=6,
    unique_by=lambda plan: (plan[0], plan[1]),
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    plan=plans,
    retention=st.tuples(st.integers(0, 200), st.integers(0, 200)),
    sweeps=st.lists(st.integers(0, 700), min_size=1, max_size=4).map(sorted),
)
def test_after_a_sweep_no_row_is_kept_past_its_deadline(
    tmp_path: Path,
    plan: list[tuple[str, str, int, int | None]],
    retention: tuple[int, int],
    sweeps: list[int],
) -> None:
    store = make_store(tmp_path)
    days = {"agr-a": retention[0], "agr-b": retention[1]}
    for agreement_id, retention_days in days.items():
        give_agreement(store, agreement_id, retention_days, Role.CONSUMER)
    expected_rows: dict[tuple[str, str], list[dict[str, object]]] = {}
    for index, (agreement_id, order, count, _) in enumerate(plan):
        rows = rows_of(order, count)
        expected_rows[(agreement_id, order)] = rows
        incoming = [IncomingRow(i, order, canonical_json(r)) for i, r in enumerate(rows)]
        store.store_received_rows(agreement_id, f"src-{index}", incoming, T0)
    for agreement_id, order, _, closed_day in plan:
        if closed_day is not None:
            store.record_order_closed(agreement_id, order, T0 + timedelta(days=closed_day))
    receipts: dict[tuple[str, str], SignedReceipt] = {}
    for day in sweeps:
        now = T0 + timedelta(days=day)
        report = sweep(store, C_KEY, now)
        assert report.failures == ()
        for signed in report.receipts:
            key = (signed.receipt.agreement_id, signed.receipt.order_id)
            assert key not in receipts  # one receipt per duty
            receipts[key] = signed
        for agreement_id, order, _, closed_day in plan:
            kept = store.received_rows(agreement_id, order)
            expired = closed_day is not None and closed_day + days[agreement_id] <= day
            wanted = expected_rows[(agreement_id, order)]
            if expired and not wanted:
                # the agreement names no order and none of this one was held: the closure
                # lapses, no receipt is signed for an order never received (`closures`)
                assert kept == [] and (agreement_id, order) not in receipts
            elif expired:
                assert kept == []  # nothing kept past its deadline
                receipt = receipts[(agreement_id, order)].receipt
                assert receipt.row_count == len(wanted)
                assert receipt.content_sha256 == deletion_digest(wanted)[1]
            else:
                assert [r.decode() for r in kept] == expected_rows[(agreement_id, order)]
    store.engine.dispose()
