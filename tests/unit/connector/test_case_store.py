"""Quality cases in the contract store, on SQLite and PostgreSQL (when QDSPACE_TEST_PG_URL is set):
both logs fold, replays change nothing, a changed replay and an illegal move are refused,
the outbox entry goes in the same commit; a peer's cases are held to its budget (bytes,
cases an hour) and every event to the order of the case in time."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest
from alembic import command
from nacl.signing import SigningKey
from sqlalchemy import Engine, func, inspect, select

from qdspace.connector.contract_errors import (
    CaseReplayError,
    CaseTransitionError,
    MessageOutOfTime,
    NotificationQuotaError,
    UnknownCaseError,
)
from qdspace.connector.contract_store import ContractStore, OutboxMessage
from qdspace.connector.contract_store import cases as case_module
from qdspace.connector.contract_store.cases import (
    CaseBudget,
    case_event_table,
    case_usage_table,
    event_cost,
)
from qdspace.connector.contract_store.outbox import outbox_table
from qdspace.connector.investigation import (
    MAX_TEXT,
    ActionItem,
    ActionKind,
    CaseEvent,
    CaseKind,
    CaseState,
    CaseTerms,
    Severity,
    Step,
    apply,
    next_event,
    opening,
)
from qdspace.connector.investigation_wire import SignedEvent, sign_event
from qdspace.connector.storage import alembic_config, head_revision

OEM, SUP = "sunarc-000000000001", "cellex-000000000002"
T0 = datetime(2026, 12, 1, tzinfo=UTC)
O_KEY, S_KEY = SigningKey(b"o" * 32), SigningKey(b"s" * 32)
#: a budget that never binds (the tests of one bound set the other wide)
WIDE = 2**40
G = "\U0001d11e"  # one printable character, four bytes in UTF-8


@pytest.fixture
def store(contract_engine: Engine) -> ContractStore:
    """The contract store on a SQLite file, or a fresh PostgreSQL schema (conftest)."""
    return ContractStore(contract_engine, bytes(32))


def terms() -> CaseTerms:
    action = ActionItem("A1", ActionKind.CONTAINMENT, SUP, date(2026, 12, 5), "quarantine")
    return CaseTerms(
        CaseKind.INVESTIGATION, OEM, SUP, Severity.MAJOR, "EL cracks", actions=(action,)
    )


def note(event: CaseEvent) -> OutboxMessage:
    return OutboxMessage("cellex", "notification", event.event_id, event.event_id, b"x")


def outbox_count(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(outbox_table)).scalar_one())


def test_a_case_is_kept_as_its_signed_log(store: ContractStore) -> None:
    opened = [sign_event(e, O_KEY) for e in opening("qc-1", terms(), T0)]
    assert store.cases.append(opened, [note(opened[0].event)], T0)
    log = store.cases.case_log(OEM, "qc-1")
    assert log.case.state is CaseState.SENT and len(log.events) == 2
    assert store.cases.find_case("qc-1") == log
    assert [c.case_id for c in store.cases.cases()] == ["qc-1"]
    assert outbox_count(store._outbox.engine) == 1
    # the same events again: acknowledged as not new, nothing queued twice
    assert not store.cases.append(opened, [note(opened[0].event)], T0)
    assert outbox_count(store._outbox.engine) == 1
    with pytest.raises(UnknownCaseError):
        store.cases.case_log(SUP, "qc-1")


def test_a_replay_with_other_content_is_refused(store: ContractStore) -> None:
    opened = [sign_event(e, O_KEY) for e in opening("qc-1", terms(), T0)]
    store.cases.append(opened, [], T0)
    received = next_event(store.cases.case_log(OEM, "qc-1").case, SUP, Step.RECEIVE, T0)
    store.cases.append([sign_event(received, S_KEY)], [], T0)
    changed = CaseEvent(OEM, "qc-1", SUP, 1, Step.RECEIVE, T0, note="other")
    with pytest.raises(CaseReplayError, match="other content"):
        store.cases.append([sign_event(changed, S_KEY)], [note(changed)], T0)
    assert store.cases.case_log(OEM, "qc-1").events[-1].event == received


def test_an_illegal_move_is_refused_and_nothing_is_queued(store: ContractStore) -> None:
    opened = [sign_event(e, O_KEY) for e in opening("qc-1", terms(), T0)]
    store.cases.append(opened, [], T0)
    jump = CaseEvent(OEM, "qc-1", SUP, 1, Step.ACCEPT, T0)
    with pytest.raises(CaseTransitionError, match="is SENT: ACCEPT"):
        store.cases.append([sign_event(jump, S_KEY)], [note(jump)], T0)
    assert outbox_count(store._outbox.engine) == 0
    assert store.cases.case_log(OEM, "qc-1").case.state is CaseState.SENT


def test_cases_a_peer_opens_are_bounded(
    store: ContractStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(case_module, "MAX_RECEIVED_PER_SENDER", 2)
    budget = CaseBudget(OEM, WIDE, WIDE)
    for i in range(2):
        opened = [sign_event(e, O_KEY) for e in opening(f"qc-{i}", terms(), T0)]
        store.cases.append(opened, [], T0, budget)
    third = [sign_event(e, O_KEY) for e in opening("qc-3", terms(), T0)]
    with pytest.raises(NotificationQuotaError, match="2 quality cases"):
        store.cases.append(third, [], T0, budget)
    assert len(store.cases.cases()) == 2


def test_a_case_id_is_used_once_whoever_opens_it(store: ContractStore) -> None:
    opened = [sign_event(e, O_KEY) for e in opening("qc-1", terms(), T0)]
    store.cases.append(opened, [], T0)
    shadow = CaseTerms(CaseKind.ALERT, SUP, OEM, Severity.MINOR, "same id, other opener")
    copied = [sign_event(e, S_KEY) for e in opening("qc-1", shadow, T0)]
    with pytest.raises(CaseReplayError, match="already in use"):
        store.cases.append(copied, [], T0, CaseBudget(SUP, WIDE, WIDE))
    assert store.cases.find_case("qc-1").case.opener_id == OEM


def big_terms(opener: str = OEM, receiver: str = SUP) -> CaseTerms:
    """A case at every bound of its terms, in four-byte characters (~240 KB signed)."""
    return CaseTerms(
        CaseKind.INVESTIGATION,
        opener,
        receiver,
        Severity.CRITICAL,
        subject=G * MAX_TEXT,
        description=G * MAX_TEXT,
        batch_ids=tuple(f"{i:04d}" + G * 124 for i in range(200)),
        part_ids=tuple(f"{i:04d}" + G * 124 for i in range(200)),
        actions=tuple(
            ActionItem(f"A{i}", ActionKind.CONTAINMENT, opener, date(2026, 12, 9), G * 40)
            for i in range(50)
        ),
    )


def kept(store: ContractStore) -> tuple[int, int, int]:
    """Cases, events and outbox entries held: what a refusal must leave as it was."""
    with store.engine.connect() as connection:
        events = connection.execute(select(func.count()).select_from(case_event_table))
        count = int(events.scalar_one())
    return store.cases.count_cases(), count, outbox_count(store.engine)


def test_a_peers_case_bytes_are_bounded_openings_and_moves_alike(store: ContractStore) -> None:
    """One large opening fits the budget; the next opening, and then a move on a case it
    holds, that would pass it are refused and leave nothing; our own moves and another
    member's cases are not counted against it."""
    first = [sign_event(e, O_KEY) for e in opening("qc-1", big_terms(), T0)]
    cost = sum(map(event_cost, first))
    assert 240_000 < cost < 300_000  # what one opening weighs
    budget = CaseBudget(OEM, cost + 20_000, WIDE)
    assert store.cases.append(first, [note(first[0].event)], T0, budget)
    assert store.cases.kept_bytes_of(OEM) == cost
    second = [sign_event(e, O_KEY) for e in opening("qc-2", big_terms(), T0)]
    before = kept(store)
    with pytest.raises(NotificationQuotaError, match=f"case_bytes_per_member {cost + 20_000}"):
        store.cases.append(second, [note(second[0].event)], T0, budget)
    assert kept(store) == before and store.cases.kept_bytes_of(OEM) == cost
    # moves count too: the receiver accepts, the opener marks actions done with long notes
    case = store.cases.case_log(OEM, "qc-1").case
    for step in (Step.RECEIVE, Step.ACKNOWLEDGE, Step.ACCEPT):  # ours: not held to OEM's
        move = next_event(case, SUP, step, T0)
        store.cases.append([sign_event(move, S_KEY)], [], T0)
        case = apply(case, move)
    done = next_event(case, OEM, Step.ACTION_DONE, T0, "A0", G * MAX_TEXT)
    store.cases.append([sign_event(done, O_KEY)], [], T0, budget)  # 17 KB: fits
    case = apply(case, done)
    again = next_event(case, OEM, Step.ACTION_DONE, T0, "A1", G * MAX_TEXT)
    before, used = kept(store), store.cases.kept_bytes_of(OEM)
    with pytest.raises(NotificationQuotaError, match=f"{used} bytes of quality cases"):
        store.cases.append([sign_event(again, O_KEY)], [note(again)], T0, budget)
    assert kept(store) == before and store.cases.kept_bytes_of(OEM) == used
    small = next_event(case, OEM, Step.ACTION_DONE, T0, "A1")  # a plain one still fits
    assert store.cases.append([sign_event(small, O_KEY)], [], T0, budget)
    assert store.cases.kept_bytes_of(SUP) > 0  # our own moves are counted, not refused
    theirs = [sign_event(e, S_KEY) for e in opening("qc-3", big_terms(SUP, OEM), T0)]
    assert store.cases.append(theirs, [], T0, CaseBudget(SUP, WIDE, WIDE))


def test_cases_a_peer_opens_within_an_hour_are_bounded(store: ContractStore) -> None:
    """Counted by this node's clock (when kept), not by the dates the opener wrote; a
    move on a case held passes; an hour later it may open again."""
    budget = CaseBudget(OEM, WIDE, 2)
    for i, kept_at in enumerate((T0, T0 + timedelta(minutes=30))):
        opened = [sign_event(e, O_KEY) for e in opening(f"qc-{i}", terms(), T0)]
        assert store.cases.append(opened, [], kept_at, budget)
    late = T0 + timedelta(minutes=59)
    third = [sign_event(e, O_KEY) for e in opening("qc-2", terms(), late)]
    before = kept(store)
    with pytest.raises(NotificationQuotaError, match="cases_per_member_hour 2"):
        store.cases.append(third, [], late, budget)
    assert kept(store) == before
    other = [sign_event(e, S_KEY) for e in opening("qc-9", terms_of(SUP, OEM), late)]
    assert store.cases.append(other, [], late, CaseBudget(SUP, WIDE, 2))  # its own count
    case = store.cases.case_log(OEM, "qc-0").case
    move = sign_event(next_event(case, SUP, Step.RECEIVE, late), S_KEY)
    assert store.cases.append([move], [], late)
    assert store.cases.append(third, [], T0 + timedelta(hours=1, seconds=1), budget)


def terms_of(opener: str, receiver: str) -> CaseTerms:
    return CaseTerms(CaseKind.ALERT, opener, receiver, Severity.MINOR, "suspect cells")


def received(store: ContractStore, at: datetime) -> SignedEvent:
    """The receiver's RECEIVE of qc-1 dated `at`."""
    case = store.cases.case_log(OEM, "qc-1").case
    return sign_event(next_event(case, SUP, Step.RECEIVE, at), S_KEY)


def test_an_event_dated_before_what_it_follows_is_refused(store: ContractStore) -> None:
    """A receiver cannot date its moves before the case's opening (nor a SEND before its
    OPEN); a late delivery in order is kept, whenever it comes."""
    opened, sent = opening("qc-1", terms(), T0)
    early_send = replace(sent, at=T0 - timedelta(seconds=1))
    with pytest.raises(MessageOutOfTime, match="before the event it follows"):
        store.cases.append([sign_event(opened, O_KEY), sign_event(early_send, O_KEY)], [], T0)
    assert store.cases.count_cases() == 0
    store.cases.append([sign_event(e, O_KEY) for e in (opened, sent)], [], T0)
    backdated = received(store, datetime(2020, 1, 1, tzinfo=UTC))
    with pytest.raises(MessageOutOfTime, match=r"dated 2020-01-01T00:00:00\+00:00, before"):
        store.cases.append([backdated], [note(backdated.event)], T0 + timedelta(days=3))
    assert store.cases.case_log(OEM, "qc-1").case.state is CaseState.SENT
    assert outbox_count(store.engine) == 0
    on_time = received(store, T0)  # the same instant as the SEND: in order
    assert store.cases.append([on_time], [], T0 + timedelta(days=3))  # kept three days on
    assert store.cases.case_log(OEM, "qc-1").case.state is CaseState.RECEIVED


def test_the_parties_actions_done_at_once_cross_in_time(store: ContractStore) -> None:
    """Each party marks its own action done unseen by the other: each log keeps the other's
    ACTION-DONE after its own, though dated before it. A CLOSE follows both."""
    opened = [sign_event(e, O_KEY) for e in opening("qc-1", terms_with_both(), T0)]
    store.cases.append(opened, [], T0)
    case = store.cases.case_log(OEM, "qc-1").case
    for minute, step in enumerate((Step.RECEIVE, Step.ACKNOWLEDGE, Step.ACCEPT), 1):
        move = next_event(case, SUP, step, T0 + timedelta(minutes=minute))
        store.cases.append([sign_event(move, S_KEY)], [], T0)
        case = apply(case, move)
    mine = next_event(case, OEM, Step.ACTION_DONE, T0 + timedelta(minutes=9), "A2")
    theirs = next_event(case, SUP, Step.ACTION_DONE, T0 + timedelta(minutes=8), "A1")
    store.cases.append([sign_event(mine, O_KEY)], [], T0)
    assert store.cases.append([sign_event(theirs, S_KEY)], [], T0)  # dated before mine
    case = store.cases.case_log(OEM, "qc-1").case
    early_close = next_event(case, OEM, Step.CLOSE, T0 + timedelta(minutes=8, seconds=30))
    with pytest.raises(MessageOutOfTime, match="before the event it follows"):
        store.cases.append([sign_event(early_close, O_KEY)], [], T0)


def terms_with_both() -> CaseTerms:
    return replace(
        terms(),
        actions=(
            ActionItem("A1", ActionKind.CONTAINMENT, SUP, date(2026, 12, 5)),
            ActionItem("A2", ActionKind.VERIFICATION, OEM, date(2026, 12, 9)),
        ),
    )


def test_0028_counts_what_was_kept_before_it(store: ContractStore) -> None:
    """Downgraded to 0027 and upgraded again, each member's running total is what the
    appends had counted, and the hourly count's index is back."""
    for i in range(3):
        logs = opening(f"qc-{i}", big_terms() if i == 0 else terms(), T0)
        store.cases.append([sign_event(e, O_KEY) for e in logs], [], T0)
    case = store.cases.case_log(OEM, "qc-1").case
    store.cases.append([sign_event(next_event(case, SUP, Step.RECEIVE, T0), S_KEY)], [], T0)
    theirs = [sign_event(e, S_KEY) for e in opening("qc-9", terms_of(SUP, OEM), T0)]
    store.cases.append(theirs, [], T0)
    counted = {m: store.cases.kept_bytes_of(m) for m in (OEM, SUP)}
    with store.engine.begin() as connection:
        command.downgrade(alembic_config(connection), "0027_outbox_unsent")
    assert case_usage_table.name not in inspect(store.engine).get_table_names()
    with store.engine.begin() as connection:
        command.upgrade(alembic_config(connection), head_revision())
    assert {m: store.cases.kept_bytes_of(m) for m in (OEM, SUP)} == counted
    indexes = {i["name"] for i in inspect(store.engine).get_indexes(case_event_table.name)}
    assert "ix_contract_quality_case_event_opened" in indexes
