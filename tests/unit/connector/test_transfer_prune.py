"""The retention sweep prunes finished transfers of no more use, keeps the evidence and
everything a running or resumable transfer needs (SQLite, and PostgreSQL when
QDSPACE_TEST_PG_URL is set)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import SigningKey
from sqlalchemy import Engine, func, select

from qdspace.connector.agreement import ContractAgreement, countersign, sign_agreement
from qdspace.connector.contract_errors import UnknownContractError
from qdspace.connector.contract_store import ContractStore, DspProcess, IncomingRow, transfer_prune
from qdspace.connector.contract_store.common import message_table
from qdspace.connector.contract_store.transfer_acts import TransferActs
from qdspace.connector.contract_store.transfer_prune import TransferPruner
from qdspace.connector.contract_store.transfer_records import transfer_act_table
from qdspace.connector.negotiation import Role
from qdspace.connector.retention_sweep import sweep
from qdspace.connector.transfer import TransferProcess, TransferState
from qdspace.connector.transfer_retention import grants_nothing_after
from qdspace.connector.transfer_wire import Checkpoint
from qdspace.policies.canonical import canonical_json
from qdspace.policies.evaluate import Request, evaluate
from qdspace.policies.model import (
    Action,
    LeftOperand,
    OfferTerms,
    Operator,
    Policy,
    make_offer,
    to_agreement,
)

T0 = datetime(2026, 5, 1, tzinfo=UTC)
NOW = T0 + timedelta(days=200)
P_KEY, C_KEY = SigningKey(b"p" * 32), SigningKey(b"c" * 32)


@pytest.fixture
def store(contract_engine: Engine) -> ContractStore:
    return ContractStore(contract_engine, b"k" * 32)


def agreement(
    store: ContractStore, agreement_id: str, role: Role, not_after: datetime | None = None
) -> None:
    terms = OfferTerms(purposes=frozenset({"qa"}), not_after=not_after)
    offer = make_offer(f"offer-{agreement_id}", "cellex", "inspections", terms)
    contract = ContractAgreement(
        agreement_id, f"neg-{agreement_id}", "cellex", "sunarc", "inspections",
        to_agreement(offer, agreement_id, "sunarc"), T0, T0,
    )  # fmt: skip
    signed = countersign(sign_agreement(contract, P_KEY), C_KEY, P_KEY.verify_key)
    store.save_agreement(signed, role)


def transfer(
    store: ContractStore,
    tid: str,
    agreement_id: str,
    role: Role,
    state: TransferState,
    at: datetime,
    *,
    order: str = "ORD-1",
    position: str = "10",
) -> TransferProcess:
    """A transfer as the machine leaves it in `state`, last changed at `at`, with the
    history of its messages."""
    final = Checkpoint(10, b"d" * 32, position) if state is TransferState.COMPLETED else None
    process = TransferProcess(
        tid, agreement_id, role, "cellex", "sunarc", state,
        Checkpoint(10, b"d" * 32, position), at, at, final=final,
        seen=((f"{tid}:req", "f0"), (f"{tid}:start", "f1")), purpose="qa", order_id=order,
    )  # fmt: skip
    store.save_transfer(None, process)
    return process


def received(store: ContractStore, agreement_id: str, source: str, order: str) -> None:
    """A row delivered under `agreement_id` by the transfer `source` (its cursor kept)."""
    row = canonical_json({"@key": f"k-{source}", "@v": 1, "order_id": order})
    store.store_received_rows(agreement_id, source, [IncomingRow(0, order, row)], T0)


def messages(store: ContractStore, tid: str) -> int:
    m = message_table
    with store.engine.connect() as connection:
        statement = select(func.count()).where(
            m.c.process_kind == "transfer", m.c.process_id == tid
        )
        return int(connection.execute(statement).scalar_one())


#: (transfer, agreement, role, state, days after T0 it last changed, order, position)
P, C = Role.PROVIDER, Role.CONSUMER
DONE, RUNNING, ENDED = TransferState.COMPLETED, TransferState.STARTED, TransferState.TERMINATED
TRANSFERS = [
    ("p-ended-done", "agr-ended", P, DONE, 5, "ORD-1", "10"),  # pruned: agreement terminated
    ("p-ended-started", "agr-ended", P, RUNNING, 5, "ORD-1", "10"),  # kept: under way
    ("p-ended-recent", "agr-ended", P, DONE, 199, "ORD-1", "10"),  # kept: within its keep
    ("p-live-done", "agr-live", P, DONE, 5, "ORD-1", "10"),  # pruned: re-read in the keep only
    ("p-live-recent", "agr-live", P, DONE, 199, "ORD-1", "10"),  # kept: re-readable
    ("p-live-ended", "agr-live", P, ENDED, 5, "ORD-1", "10"),  # pruned: terminated transfer
    ("p-expired-done", "agr-expired", P, DONE, 5, "ORD-1", "10"),  # pruned: expired
    ("c-ord1-done", "agr-mine", C, DONE, 5, "ORD-1", "10"),  # pruned: ORD-1 receipted
    ("c-ord2-old", "agr-mine", C, DONE, 5, "ORD-2", "10"),  # pruned: superseded
    ("c-ord2-new", "agr-mine", C, DONE, 5, "ORD-2", "20"),  # kept: the watermark
    ("c-ord2-running", "agr-mine", C, RUNNING, 5, "ORD-2", "10"),  # kept: under way
]
PRUNED = {
    "p-ended-done", "p-live-done", "p-live-ended", "p-expired-done", "c-ord1-done", "c-ord2-old"
}  # fmt: skip


def test_the_sweep_prunes_finished_transfers_of_no_more_use_and_keeps_the_evidence(
    store: ContractStore,
) -> None:
    """Past the keep (30 days), the sweep prunes: a completed transfer of a terminated or
    expired agreement, a terminated transfer, a completed pull of an order deleted with
    a receipt (deleted by this very sweep), a consumer's pull superseded by a later one of
    its scope; each with its messages, DSP binding and delivery cursor. It keeps every
    agreement and receipt, anything under way, anything within its keep, a completed
    transfer a consumer may still re-read, and the pull whose watermark the next
    incremental pull continues from. (Nothing was pruned before: every transfer stayed.)"""
    agreement(store, "agr-ended", Role.PROVIDER)
    store.terminate_agreement("agr-ended", "breach", T0 + timedelta(days=10))
    agreement(store, "agr-live", Role.PROVIDER)
    agreement(store, "agr-expired", Role.PROVIDER, not_after=T0 + timedelta(days=50))
    agreement(store, "agr-mine", Role.CONSUMER)
    for tid, agreement_id, role, state, day, order, position in TRANSFERS:
        at = T0 + timedelta(days=day)
        transfer(store, tid, agreement_id, role, state, at, order=order, position=position)
    store.dsp.bind(DspProcess("transfer", "p-ended-done", "provider", "sunarc", "urn:1", "x"))
    received(store, "agr-mine", "c-ord1-done", "ORD-1")
    received(store, "agr-mine", "c-ord2-running", "ORD-2")
    store.record_order_closed("agr-mine", "ORD-1", T0 + timedelta(days=1))  # due at day 181
    agreements = store.agreements()

    report = sweep(store, C_KEY, NOW)

    kept = {t[0] for t in TRANSFERS} - PRUNED
    assert {t.transfer_id for t in store.transfers()} == kept
    assert store.agreements() == agreements  # the evidence, as it was
    (receipt,) = store.receipts()
    assert report.receipts == (receipt,) and receipt.receipt.order_id == "ORD-1"
    for tid in PRUNED:
        assert store.find_transfer(tid) is None and messages(store, tid) == 0
        with pytest.raises(UnknownContractError, match="no longer held"):
            store.load_transfer(tid)
    assert all(messages(store, tid) == 2 for tid in kept)
    assert store.dsp.by_local("transfer", "p-ended-done") is None
    assert store.last_received_seq("c-ord1-done") is None  # the cursor of a pruned pull
    assert store.last_received_seq("c-ord2-running") == 0  # a running one's is kept
    assert store.count_received("agr-mine") == 1  # the rows of ORD-2 are held still
    last = store.last_completed_pull("agr-mine", "ORD-2", None, "qa")
    assert last is not None and last.transfer_id == "c-ord2-new"
    pruned = report.pruned
    assert pruned is not None and pruned.transfers == len(PRUNED) and not pruned.more
    assert (pruned.messages, pruned.bindings, pruned.cursors) == (2 * len(PRUNED), 1, 1)

    # within the hour the sweep does not read them all again; later it finds nothing new
    assert sweep(store, C_KEY, NOW + timedelta(minutes=1)).pruned is None
    again = sweep(store, C_KEY, NOW + timedelta(hours=2)).pruned
    assert again is not None and again.transfers == 0
    assert {t.transfer_id for t in store.transfers()} == kept


def test_a_transfer_that_moved_on_since_it_was_chosen_is_kept_whole(
    store: ContractStore,
) -> None:
    """The delete repeats the conditions a transfer was chosen by: one a consumer's
    re-read rewound (STARTED again) after the prune chose it is kept, with its history."""
    agreement(store, "agr-ended", Role.PROVIDER)
    store.terminate_agreement("agr-ended", "breach", T0)
    done = transfer(store, "p-1", "agr-ended", Role.PROVIDER, TransferState.COMPLETED, T0)
    before = NOW - timedelta(days=30)
    with store.engine.connect() as connection:
        assert transfer_prune._chosen(connection, before, NOW) == ["p-1"]
    rewound = TransferProcess(
        "p-1", "agr-ended", Role.PROVIDER, "cellex", "sunarc", TransferState.STARTED,
        Checkpoint(0, b"d" * 32, ""), T0, NOW, seen=(*done.seen, ("p-1:again", "f2")),
        purpose="qa", order_id="ORD-1",
    )  # fmt: skip
    store.save_transfer(done, rewound)
    pruner = TransferPruner(store.engine)
    with store.engine.begin() as connection:
        went = transfer_prune._delete(connection, pruner._upsert, ["p-1"], before, NOW)
    assert went == (0, 0, 0, 0)
    assert store.load_transfer("p-1") == rewound and messages(store, "p-1") == 3


def test_a_transfer_a_message_is_still_owed_for_is_kept(store: ContractStore) -> None:
    """A terminated transfer whose termination the outbox still owes a peer away for a
    month: its delivery may need the binding and the process, so it is kept until sent."""
    from qdspace.connector.contract_store import OutboxMessage

    agreement(store, "agr-ended", Role.PROVIDER)
    store.terminate_agreement("agr-ended", "breach", T0)
    transfer(store, "p-1", "agr-ended", Role.PROVIDER, TransferState.TERMINATED, T0)
    store.enqueue([OutboxMessage("sunarc", "dsp-transfer", "p-1", "p-1:end", b"{}")], T0)
    before = NOW - timedelta(days=30)
    pruner = TransferPruner(store.engine)
    with store.engine.begin() as connection:
        went = transfer_prune._delete(connection, pruner._upsert, ["p-1"], before, NOW)
    assert went == (0, 0, 0, 0) and store.find_transfer("p-1") is not None


def test_a_run_prunes_a_batch_and_the_next_goes_on_until_none_is_due(
    store: ContractStore,
) -> None:
    agreement(store, "agr-ended", Role.PROVIDER)
    store.terminate_agreement("agr-ended", "breach", T0)
    for n in range(5):
        transfer(store, f"p-{n}", "agr-ended", Role.PROVIDER, TransferState.COMPLETED, T0)
    pruner = TransferPruner(store.engine)
    first = pruner.prune(NOW, limit=3)
    assert first is not None and (first.transfers, first.more) == (3, True)
    second = pruner.prune(NOW + timedelta(seconds=30), limit=3)  # due at once: more were
    assert second is not None and (second.transfers, second.more) == (2, False)
    assert pruner.prune(NOW + timedelta(seconds=60), limit=3) is None
    assert store.count_transfers() == 0


def test_re_reads_are_counted_in_the_window_and_expire(store: ContractStore) -> None:
    acts = TransferActs(store.engine, timedelta(hours=1))
    for minutes in (0, 30, 70):
        acts.add("m-1", T0 + timedelta(minutes=minutes), lambda n: None)
    acts.add("m-2", T0, lambda n: None)
    assert acts.count("m-1", T0 + timedelta(minutes=70)) == 2  # the one at 0 aged out
    seen: list[int] = []

    def refuse(n: int) -> None:
        seen.append(n)
        raise RuntimeError("over")

    with pytest.raises(RuntimeError):
        acts.add("m-1", T0 + timedelta(minutes=75), refuse)
    assert seen == [2] and acts.count("m-1", T0 + timedelta(minutes=75)) == 2  # not counted
    with store.engine.connect() as connection:
        left = connection.execute(select(transfer_act_table.c.member_id)).scalars().all()
    assert sorted(left) == ["m-1", "m-1", "m-2"]  # m-1's past the window went with its act
    made = TransferPruner(store.engine).prune(T0 + timedelta(days=2))
    assert made is not None and made.acts_expired == 3


def test_re_reads_made_while_the_clock_was_moved_forward_do_not_count_after(
    store: ContractStore,
) -> None:
    """The demo moves the node's clock 180 days on and back: re-reads made meanwhile are
    dated then, and counted for 180 days against a quota of one hour."""
    acts = TransferActs(store.engine, timedelta(hours=1))
    for minutes in range(3):
        acts.add("m-1", T0 + timedelta(days=180, minutes=minutes), lambda n: None)
    assert acts.count("m-1", T0) == 0
    assert acts.count("m-1", T0 + timedelta(days=180, minutes=3)) == 3


def _until(end: datetime, operator: Operator) -> Policy:
    """An agreement whose one permission lasts until `end` (`operator`: lt or lteq)."""
    terms = OfferTerms(purposes=frozenset({"qa"}), not_after=end)
    policy = to_agreement(make_offer("o", "cellex", "inspections", terms), "a", "sunarc")
    (permission,) = policy.permissions
    constraints = tuple(
        replace(c, operator=operator) if c.left_operand is LeftOperand.DATETIME else c
        for c in permission.constraints
    )
    return replace(policy, permissions=(replace(permission, constraints=constraints),))


@given(st.integers(-3, 3), st.sampled_from([Operator.LT, Operator.LTEQ]), st.integers(0, 400))
def test_an_agreement_grants_nothing_once_its_gate_refuses_it_for_good(
    shift: int, operator: Operator, later: int
) -> None:
    """`grants_nothing_after` says an agreement ended exactly when the gate refuses a read
    under it as expired, then and at every later time (a minute apart around its end)."""
    end = T0 + timedelta(days=50)
    policy = _until(end, operator)

    def refused(at: datetime) -> bool:
        read = Request(Action.READ, at, frozenset({"verdict"}), purpose="qa")
        return not evaluate(policy, read).allowed

    at = end + timedelta(minutes=shift)
    assert grants_nothing_after(policy, at) == refused(at)
    if grants_nothing_after(policy, at):
        assert refused(at + timedelta(days=later))
    open_ended = make_offer("o", "cellex", "inspections", OfferTerms(frozenset({"qa"})))
    assert not grants_nothing_after(to_agreement(open_ended, "a", "sunarc"), at)
