"""Quality cases listed from their rows: every page, count and overdue list is what folding
every case's log gives, at any day; a store kept before 0020 gets the rows' columns from
its logs at the upgrade (SQLite and PostgreSQL)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from nacl.signing import SigningKey
from sqlalchemy import Engine, create_engine

from qdspace.connector.contract_errors import CaseError
from qdspace.connector.contract_store import CaseRow, ContractStore
from qdspace.connector.investigation import (
    ActionItem,
    ActionKind,
    CaseKind,
    CaseState,
    CaseTerms,
    QualityCase,
    Severity,
    Step,
    apply,
    fold,
    next_event,
    opening,
    overdue,
    overdue_from,
)
from qdspace.connector.investigation_wire import SignedEvent, sign_event
from qdspace.connector.storage import migrate

OEM, SUP = "sunarc-000000000001", "cellex-000000000002"
KEYS = {OEM: SigningKey(b"o" * 32), SUP: SigningKey(b"s" * 32)}
T0 = datetime(2026, 12, 1, tzinfo=UTC)
D0 = T0.date()


@pytest.fixture
def store(contract_engine: Engine) -> ContractStore:
    return ContractStore(contract_engine, bytes(32))


def _walk(rnd: random.Random, n: int) -> list[SignedEvent]:
    """One case's log: opened, then up to eight legal moves drawn at random (some cases
    stay SENT, some are accepted with actions done or not, some close or are declined)."""
    actions = tuple(
        ActionItem(
            f"A{k}",
            rnd.choice(list(ActionKind)),
            rnd.choice((OEM, SUP)),
            D0 + timedelta(days=rnd.randrange(-10, 40)),
            f"step {k}",
        )
        for k in range(rnd.randrange(0, 4))
    )
    opener, receiver = rnd.choice(((OEM, SUP), (SUP, OEM)))
    terms = CaseTerms(
        CaseKind.INVESTIGATION, opener, receiver, rnd.choice(list(Severity)), f"case {n}",
        actions=actions,
    )  # fmt: skip
    at = T0 + timedelta(minutes=n)
    events = list(opening(f"qc-{n:04d}", terms, at))
    case: QualityCase | None = None
    for e in events:
        case = apply(case, e)
    assert case is not None
    for _ in range(rnd.randrange(0, 9)):
        at += timedelta(minutes=1)
        moves: list[tuple[Step, str, str]] = [
            (s, who, "") for s in Step if s is not Step.ACTION_DONE for who in (OEM, SUP)
        ]
        moves += [(Step.ACTION_DONE, a.owner_id, a.action_id) for a in actions]
        rnd.shuffle(moves)
        for step, author, action_id in moves:
            try:
                event = next_event(case, author, step, at, action_id)
            except CaseError:  # not legal now, or not this author's move
                continue
            case = apply(case, event)
            events.append(event)
            break
    return [sign_event(e, KEYS[e.author_id]) for e in events]


def _logs(count: int, seed: int) -> list[list[SignedEvent]]:
    rnd = random.Random(seed)
    return [_walk(rnd, n) for n in range(count)]


def _keep(store: ContractStore, logs: list[list[SignedEvent]]) -> None:
    for log in logs:
        store.cases.append(log, [], T0)


@pytest.mark.parametrize("seed", [1, 2])
def test_rows_and_overdue_cases_are_what_folding_every_log_gives(
    store: ContractStore, seed: int
) -> None:
    _keep(store, _logs(60, seed))
    every = store.cases.cases()  # each log folded, the most recently updated first
    assert len({c.state for c in every}) >= 3 and store.cases.count_cases() == len(every)
    assert any(overdue(c, D0 + timedelta(days=20)) for c in every)
    for today in (D0 - timedelta(days=20), D0, D0 + timedelta(days=5), D0 + timedelta(days=60)):
        rows = store.cases.case_rows(today)
        assert [(r.opener_id, r.case_id) for r in rows] == [(c.opener_id, c.case_id) for c in every]
        for row, case in zip(rows, every, strict=True):
            assert (row.kind, row.severity, row.subject, row.state) == (
                case.terms.kind, case.terms.severity, case.terms.subject, case.state
            )  # fmt: skip
            assert (row.opened_at, row.updated_at) == (case.opened_at, case.updated_at)
            assert row.open_actions == len(case.open_actions())
            assert row.overdue_actions == len(overdue(case, today))
        assert rows == [CaseRow.of(c, today) for c in every]  # as the API's case page says
        pages = [store.cases.case_rows(today, limit=7, offset=o) for o in range(0, len(rows), 7)]
        assert [r for page in pages for r in page] == rows
        late = [c for c in every if overdue(c, today)]
        first_due = {c.case_id: min(a.due for a in overdue(c, today)) for c in late}
        found = store.cases.overdue_cases(today)
        assert sorted(c.case_id for c in found) == sorted(c.case_id for c in late)
        assert [first_due[c.case_id] for c in found] == sorted(first_due.values())


def test_overdue_from_says_exactly_when_a_case_has_an_overdue_action() -> None:
    """``overdue(case, today)`` is empty exactly when ``overdue_from`` is None or not
    before ``today``: over random logs, on every day around each due date."""
    for log in _logs(200, 7):
        case = fold(s.event for s in log)
        first = overdue_from(case)
        if case.state is not CaseState.ACCEPTED:
            assert first is None
        for action in case.terms.actions:
            for today in (action.due - timedelta(days=1), action.due, action.due + timedelta(1)):
                late = bool(overdue(case, today))
                assert late == (first is not None and first < today), (case, today)


def _keep_before_0020(engine: Engine, log: list[SignedEvent]) -> None:
    """A case as a node at 0019 kept it: its events and a row without the new columns."""
    case = fold(s.event for s in log)
    events = sa.table(
        "contract_quality_case_event",
        *(sa.column(n) for n in ("opener_id", "case_id", "author_id", "seq", "position",
                                 "step", "data", "signature", "kept_at")),
    )  # fmt: skip
    cases = sa.table(
        "contract_quality_case",
        *(sa.column(n) for n in ("opener_id", "case_id", "receiver_id", "kind", "severity",
                                 "subject", "state", "event_count", "opened_at", "updated_at")),
    )  # fmt: skip
    with engine.begin() as conn:
        conn.execute(
            events.insert(),
            [
                {
                    "opener_id": s.event.opener_id,
                    "case_id": s.event.case_id,
                    "author_id": s.event.author_id,
                    "seq": s.event.seq,
                    "position": i,
                    "step": s.event.step.value,
                    "data": s.event.canonical_bytes(),
                    "signature": s.signature,
                    "kept_at": T0.isoformat(),
                }
                for i, s in enumerate(log)
            ],
        )
        conn.execute(
            cases.insert().values(
                opener_id=case.opener_id,
                case_id=case.case_id,
                receiver_id=case.receiver_id,
                kind=case.terms.kind.value,
                severity=case.terms.severity.value,
                subject=case.terms.subject,
                state=case.state.value,
                event_count=len(log),
                opened_at=case.opened_at.isoformat(),
                updated_at=case.updated_at.isoformat(),
            )
        )


def test_cases_kept_before_0020_are_listed_as_if_kept_now(tmp_path: Path) -> None:
    logs = _logs(30, 3)
    old = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    migrate(old, "0019_agreement_listing")
    for log in logs:
        _keep_before_0020(old, log)
    migrate(old)
    upgraded = ContractStore(old, bytes(32))
    fresh_engine = create_engine(f"sqlite:///{tmp_path / 'new.db'}")
    migrate(fresh_engine)
    fresh = ContractStore(fresh_engine, bytes(32))
    _keep(fresh, logs)
    for today in (D0, D0 + timedelta(days=30)):
        assert upgraded.cases.case_rows(today) == fresh.cases.case_rows(today)
        assert upgraded.cases.overdue_cases(today) == fresh.cases.overdue_cases(today)
    assert any(r.open_actions for r in fresh.cases.case_rows(D0))
    assert upgraded.cases.overdue_cases(D0 + timedelta(days=30))
    old.dispose()
    fresh_engine.dispose()


def test_a_listing_reads_rows_and_folds_only_the_late(store: ContractStore) -> None:
    """The page reads no log of a case with nothing overdue (counted by the statements
    that read a case's events)."""
    _keep(store, _logs(40, 4))
    today = D0 + timedelta(days=5)
    late = {c.case_id for c in store.cases.cases() if overdue(c, today)}
    reads: list[str] = []

    @sa.event.listens_for(store.engine, "before_cursor_execute")
    def count(conn, cursor, statement, params, context, executemany):  # type: ignore[no-untyped-def]
        if "contract_quality_case_event" in statement:
            reads.append(statement)

    try:
        rows = store.cases.case_rows(today)
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", count)
    assert len(rows) == 40 and len(reads) == len(late) < 40
