"""The consumer's mirror keeps only what its agreement lets it receive.

A delivery (a live stream's event or a pull's batch) is refused whole, nothing stored,
when a row carries a field the agreement does not grant (C1: a hostile provider's
``worker_name`` or ``ssn`` is personal data the consumer never agreed to hold), when it
is for an order whose data was deleted and receipted (C2: a tombstone too would fill the
order again, and nothing deletes it a second time), when the agreement expired (C3), or,
for a pull that asked for one order, when a row is of another order. Honest deliveries,
a provider's rows with exactly the granted fields, still store.

Every test runs on SQLite and, with QDSPACE_TEST_PG_URL, PostgreSQL, through the real
`ContractStore`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from nacl.signing import SigningKey
from sqlalchemy import Engine, func, select

from qdspace.connector.agreement import (
    ContractAgreement,
    DeletionReceipt,
    countersign,
    sign_agreement,
    sign_receipt,
)
from qdspace.connector.contract_errors import (
    ContractDenied,
    ForeignRecordError,
    KeyShreddedError,
)
from qdspace.connector.contract_store import (
    ContractStore,
    Deletion,
    IncomingRow,
    IncomingRun,
    received_row_table,
)
from qdspace.connector.contract_store.received_model import change_table
from qdspace.connector.negotiation import Role
from qdspace.connector.transfer import accept_batch, open_transfer
from qdspace.connector.transfer import apply as apply_transfer
from qdspace.connector.transfer_messages import TransferRequest, TransferStart
from qdspace.connector.transfer_wire import BatchRow, Checkpoint, RowBatch, row_bytes
from qdspace.policies.model import (
    Action,
    Constraint,
    LeftOperand,
    OfferTerms,
    Operator,
    Permission,
    Policy,
    PolicyType,
    make_offer,
    to_agreement,
)

T0 = datetime(2026, 6, 1, tzinfo=UTC)
ORDER, OTHER = "PO-1", "PO-2"
KEK = bytes(range(32))
P_KEY, C_KEY = SigningKey(b"p" * 32), SigningKey(b"c" * 32)
GRANTED = frozenset({"verdict", "score"})


def hold(store: ContractStore, agreement_id: str, **terms: Any) -> None:
    """The consumer holds a countersigned agreement of `terms` (qa, 30 days' retention)."""
    terms.setdefault("orders", frozenset({ORDER}))
    offer = make_offer(
        "offer-insp",
        "cellex",
        "inspections",
        OfferTerms(purposes=frozenset({"qa"}), retention_days=30, **terms),
    )
    policy = to_agreement(offer, agreement_id, "sunarc")
    agreement = ContractAgreement(
        agreement_id, f"neg-{agreement_id}", "cellex", "sunarc", "inspections", policy, T0, T0
    )
    store.save_agreement(
        countersign(sign_agreement(agreement, P_KEY), C_KEY, P_KEY.verify_key), Role.CONSUMER
    )


def row(key: str, version: int = 1, **fields: Any) -> bytes:
    return row_bytes({"@key": key, "@v": version, **fields})


def tombstone(key: str, version: int) -> bytes:
    return row_bytes({"@key": key, "@v": version, "@withdrawn": True})


def stream(
    store: ContractStore,
    agreement_id: str,
    payloads: list[bytes],
    at: datetime = T0,
    order: str = ORDER,
    first: int = 1,
) -> Any:
    rows = [IncomingRow(first + i, order, p) for i, p in enumerate(payloads)]
    return store.store_received_rows(agreement_id, "sub-1", rows, at)


def counts(engine: Engine) -> tuple[int, int]:
    """(received rows held, audit-trail rows) in the whole store."""
    with engine.connect() as connection:
        held = connection.execute(select(func.count()).select_from(received_row_table)).scalar()
        trail = connection.execute(select(func.count()).select_from(change_table)).scalar()
    return int(held or 0), int(trail or 0)


@pytest.fixture
def store(contract_engine: Engine) -> ContractStore:
    return ContractStore(contract_engine, KEK)


# C1: fields outside the agreement ---------------------------------------------------------


def test_rows_carrying_fields_the_agreement_does_not_grant_are_refused_whole(
    store: ContractStore,
) -> None:
    hold(store, "agr-f", fields=GRANTED)
    honest = [row(f"k{i}", verdict="pass", score=0.1) for i in range(5)]
    hostile = row("k9", verdict="pass", score=0.1, worker_name="Alice Smith", ssn="123-45-6789")
    for payloads in ([*honest, hostile], [hostile], [hostile, *honest]):
        with pytest.raises(ForeignRecordError, match=r"\['ssn', 'worker_name'\]") as refused:
            stream(store, "agr-f", payloads)
        assert refused.value.grpc_status == "PERMISSION_DENIED"
        assert counts(store.engine) == (0, 0)
    assert store.received_rows("agr-f") == []
    # the same rows without the extra fields store
    assert stream(store, "agr-f", honest).added == 5
    assert stream(store, "agr-f", [row("k1", 2, verdict="fail")]).replaced == 1


def test_a_field_the_agreement_excludes_is_refused(store: ContractStore) -> None:
    """``isNoneOf`` names the fields that may not leave: one of them in a row is refused;
    any other field of the asset is granted."""
    offer = make_offer("offer-x", "cellex", "inspections", OfferTerms(purposes=frozenset({"qa"})))
    permission = Permission(
        Action.USE,
        (
            *offer.permissions[0].constraints,
            Constraint(LeftOperand.FIELDS, Operator.IS_NONE_OF, frozenset({"operator_id"})),
        ),
        offer.permissions[0].duties,
    )
    policy = Policy(
        uid="agr-x",
        type=PolicyType.AGREEMENT,
        assigner="cellex",
        target="inspections",
        permissions=(permission,),
        prohibitions=offer.prohibitions,
        assignee="sunarc",
    )
    agreement = ContractAgreement(
        "agr-x", "neg-x", "cellex", "sunarc", "inspections", policy, T0, T0
    )
    signed = countersign(sign_agreement(agreement, P_KEY), C_KEY, P_KEY.verify_key)
    store.save_agreement(signed, Role.CONSUMER)
    with pytest.raises(ForeignRecordError, match="operator_id"):
        stream(store, "agr-x", [row("k1", verdict="pass", operator_id="OP-7")])
    assert counts(store.engine) == (0, 0)
    assert stream(store, "agr-x", [row("k1", verdict="pass", station="EL-1")]).added == 1


def test_a_row_of_another_shape_later_in_the_delivery_is_checked_too(
    store: ContractStore,
) -> None:
    """The names of every row count, not only the first row's: a later row with an extra
    field (another shape, or a nested value the fast path does not pass) is refused."""
    hold(store, "agr-s", fields=GRANTED)
    first = [row(f"k{i}", verdict="pass", score=0.1) for i in range(20)]
    for extra in (
        row("x", verdict="pass", ssn="123"),
        row_bytes({"@key": "x", "@v": 1, "verdict": "pass", "ssn": {"n": "123"}}),
        row("x", 2, verdict="pass", ssn="123"),
    ):
        with pytest.raises(ForeignRecordError, match="ssn"):
            stream(store, "agr-s", [*first, extra, *first[:2]])
        assert counts(store.engine) == (0, 0)
    # tombstones carry the envelope only, and rows may leave a granted field out
    assert stream(store, "agr-s", [*first, row("k20", score=0.3), tombstone("k3", 2)]).added == 21


def test_an_agreement_without_a_field_constraint_grants_every_field(store: ContractStore) -> None:
    hold(store, "agr-all")
    result = stream(store, "agr-all", [row("k1", verdict="pass", anything="x", station="EL-1")])
    assert result.added == 1


def test_fields_outside_reads_the_constraints_as_the_provider_gate_does() -> None:
    """Only permissions that let rows be read or streamed grant fields; a distribute-only
    permission grants none to the mirror."""
    from qdspace.connector.contract_store.received_write import fields_outside

    read = Permission(
        Action.READ, (Constraint(LeftOperand.FIELDS, Operator.IS_PART_OF, frozenset({"a"})),)
    )
    distribute = Permission(
        Action.DISTRIBUTE, (Constraint(LeftOperand.FIELDS, Operator.IS_PART_OF, frozenset({"b"})),)
    )
    policy = Policy(
        uid="p",
        type=PolicyType.AGREEMENT,
        assigner="x",
        target="t",
        permissions=(read, distribute),
        assignee="y",
    )
    names = frozenset({"@key", "@v", "a", "b"})
    assert fields_outside(policy, names) == frozenset({"b"})
    assert fields_outside(policy, frozenset({"@key", "@v", "@withdrawn"})) == frozenset()


def test_the_delivery_refused_over_the_node_path_too(store: ContractStore) -> None:
    """An `IncomingRun` (how the node hands a pulled batch over) is checked the same."""
    hold(store, "agr-r", fields=GRANTED)
    payloads = [row("k1", verdict="pass"), row("k2", verdict="pass", worker_name="Bob")]
    with pytest.raises(ForeignRecordError, match="worker_name"):
        store.store_received_rows("agr-r", "sub-1", IncomingRun(1, [ORDER, ORDER], payloads), T0)
    assert counts(store.engine) == (0, 0)


# C2: an order deleted and receipted takes nothing again -----------------------------------


def shred(store: ContractStore, agreement_id: str, order: str, at: datetime) -> int:
    store.record_order_closed(agreement_id, order, T0)

    def receipt(deletion: Deletion) -> Any:
        signed = sign_receipt(
            DeletionReceipt(
                agreement_id, "sunarc", deletion.row_count, deletion.content_sha256, T0, order
            ),
            C_KEY,
        )
        return signed, ()

    return store.shred(agreement_id, order, at, receipt).receipt.row_count


def test_tombstones_for_a_deleted_order_are_refused(store: ContractStore) -> None:
    hold(store, "agr-d", orders=frozenset({ORDER, OTHER}))
    stream(store, "agr-d", [row(f"r{i}", score=0.1) for i in range(3)])
    stream(store, "agr-d", [row("o1", score=0.2)], order=OTHER, first=10)
    assert shred(store, "agr-d", ORDER, T0 + timedelta(days=31)) == 3
    held = counts(store.engine)
    later = T0 + timedelta(days=32)
    tombs = [tombstone(f"never-{i}", 5) for i in range(50)]
    for payloads in (tombs, [tombstone("r1", 2)], [row("r9", score=0.3)]):
        with pytest.raises(KeyShreddedError, match="PO-1"):
            stream(store, "agr-d", payloads, later, first=100)
        assert counts(store.engine) == held  # no row, no audit-trail row
    # a delivery mixing the deleted order with a live one is refused whole
    mixed = [IncomingRow(200, OTHER, row("o2", score=0.1)), IncomingRow(201, ORDER, tombs[0])]
    with pytest.raises(KeyShreddedError):
        store.store_received_rows("agr-d", "sub-1", mixed, later)
    assert counts(store.engine) == held
    assert store.expired_closures(later + timedelta(days=365)) == []
    # the order not deleted still takes rows and tombstones
    result = stream(store, "agr-d", [tombstone("o1", 2)], later, order=OTHER, first=300)
    assert result.withdrawn == 1


# C3: expired agreements, and a pull's one order -------------------------------------------


def test_rows_after_the_agreement_expired_are_refused(store: ContractStore) -> None:
    hold(store, "agr-e", not_after=T0 + timedelta(days=1))
    assert stream(store, "agr-e", [row("k1", score=0.2)], T0 + timedelta(hours=1)).added == 1
    for at in (T0 + timedelta(days=1), T0 + timedelta(days=400)):
        for payloads in ([row("k2", score=0.2)], [tombstone("k1", 2)]):
            with pytest.raises(ContractDenied, match="expired"):
                stream(store, "agr-e", payloads, at, first=10)
    assert counts(store.engine) == (1, 0)


def pull_batch(
    store: ContractStore, agreement_id: str, asked: str | None, rows: list[BatchRow]
) -> Any:
    """A pull of `asked` (None: every order) whose first batch holds `rows`, committed."""
    tid = f"tx-{agreement_id}-{asked}"
    request = TransferRequest(
        f"{tid}:req", tid, "sunarc", agreement_id, "cellex", T0, "qa", asked, None, ""
    )
    consumer = open_transfer(request, Role.CONSUMER)
    start = TransferStart(f"{tid}:start", tid, "cellex", Checkpoint.genesis(tid), T0)
    store.save_transfer(None, consumer)
    started = apply_transfer(consumer, start)
    store.save_transfer(consumer, started)
    checkpoint = started.checkpoint.extend(r.payload for r in rows)
    batch = RowBatch.of(tid, rows, checkpoint)
    advanced = accept_batch(started, batch)
    incoming = [
        IncomingRow(batch.first_offset + i, r.order_id, r.payload) for i, r in enumerate(rows)
    ]
    return store.commit_transfer_batch(started, advanced, incoming, T0)


def test_a_pull_of_one_order_refuses_rows_of_another(store: ContractStore) -> None:
    hold(store, "agr-p", orders=frozenset({ORDER, OTHER}))
    foreign = [BatchRow(row("a1", score=0.1), ORDER), BatchRow(row("b1", score=0.1), OTHER)]
    with pytest.raises(ForeignRecordError, match="PO-2"):
        pull_batch(store, "agr-p", ORDER, foreign)
    assert counts(store.engine) == (0, 0)
    assert store.load_transfer(f"tx-agr-p-{ORDER}").offset == 0  # the cursor stayed
    # the pull's own order stores; a pull of every order the agreement covers takes both
    assert pull_batch(store, "agr-p", OTHER, [BatchRow(row("b1", score=0.1), OTHER)]).added == 1
    assert pull_batch(store, "agr-p", None, foreign).added == 1
