"""The quality case state machine: every legal and illegal move, signatures, closure."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest
from nacl.signing import SigningKey

from qdspace.connector.contract_errors import (
    CaseDenied,
    CaseFormatError,
    CaseOrderError,
    CaseSignatureError,
    CaseTransitionError,
)
from qdspace.connector.investigation import (
    STEPS,
    ActionItem,
    ActionKind,
    ActionState,
    CaseEvent,
    CaseKind,
    CaseState,
    CaseTerms,
    Party,
    QualityCase,
    Severity,
    Step,
    apply,
    closure_record,
    fold,
    next_event,
    opening,
    overdue,
)
from qdspace.connector.investigation_wire import (
    event_from_bytes,
    open_signed_event,
    sign_event,
)

OEM, SUP, MAL = "sunarc-000000000001", "cellex-000000000002", "mallory-000000000003"
T0 = datetime(2026, 12, 1, 8, tzinfo=UTC)


def terms(actions: tuple[ActionItem, ...] | None = None) -> CaseTerms:
    if actions is None:
        actions = (
            ActionItem("A1", ActionKind.CONTAINMENT, SUP, date(2026, 12, 5), "quarantine"),
            ActionItem("A2", ActionKind.VERIFICATION, OEM, date(2026, 12, 20), "re-inspect"),
        )
    return CaseTerms(
        CaseKind.INVESTIGATION,
        OEM,
        SUP,
        Severity.CRITICAL,
        "EL microcracks",
        "cluster in module batch MB-7",
        batch_ids=("CX-CB-260003",),
        part_ids=("M-1", "M-2"),
        trace_report_id="tr-1",
        actions=actions,
    )


def opened(t: CaseTerms | None = None) -> QualityCase:
    return fold(opening("qc-1", t or terms(), T0))


def walk(*steps: tuple[str, Step, str]) -> QualityCase:
    """Open and send, then apply (author, step, action id) in turn."""
    case = opened()
    for i, (author, step, action) in enumerate(steps):
        case = apply(case, next_event(case, author, step, T0 + timedelta(minutes=i + 1), action))
    return case


RECEIVED = ((SUP, Step.RECEIVE, ""),)
ACKED = (*RECEIVED, (SUP, Step.ACKNOWLEDGE, ""))
ACCEPTED = (*ACKED, (SUP, Step.ACCEPT, ""))
DONE = (*ACCEPTED, (SUP, Step.ACTION_DONE, "A1"), (OEM, Step.ACTION_DONE, "A2"))


def test_the_whole_life_of_an_investigation() -> None:
    case = opened()
    assert case.state is CaseState.SENT and case.opener_seq == 2
    assert walk(*RECEIVED).state is CaseState.RECEIVED
    assert walk(*ACKED).state is CaseState.ACKNOWLEDGED
    accepted = walk(*ACCEPTED)
    assert accepted.state is CaseState.ACCEPTED and accepted.open_actions() == ["A1", "A2"]
    done = walk(*DONE)
    assert done.action_state("A1") is ActionState.DONE and not done.open_actions()
    closed = walk(*DONE, (OEM, Step.CLOSE, ""))
    assert closed.state is CaseState.CLOSED
    assert (closed.opener_seq, closed.receiver_seq) == (4, 4)


def test_declined_then_closed_without_the_actions() -> None:
    case = walk(*ACKED, (SUP, Step.DECLINE, ""), (OEM, Step.CLOSE, ""))
    assert case.state is CaseState.CLOSED and case.open_actions() == ["A1", "A2"]


def test_an_alert_goes_the_same_way() -> None:
    alert = replace(terms(()), kind=CaseKind.ALERT, opener_id=SUP, receiver_id=OEM)
    case = fold(opening("qc-2", alert, T0))
    for author, step in ((OEM, Step.RECEIVE), (OEM, Step.ACKNOWLEDGE), (OEM, Step.ACCEPT)):
        case = apply(case, next_event(case, author, step, T0))
    case = apply(case, next_event(case, SUP, Step.CLOSE, T0))
    assert case.state is CaseState.CLOSED


# every state reachable, with the case in it
STATES: dict[CaseState, QualityCase] = {
    CaseState.CREATED: apply(None, opening("qc-1", terms(), T0)[0]),
    CaseState.SENT: opened(),
    CaseState.RECEIVED: walk(*RECEIVED),
    CaseState.ACKNOWLEDGED: walk(*ACKED),
    CaseState.ACCEPTED: walk(*DONE),
    CaseState.DECLINED: walk(*ACKED, (SUP, Step.DECLINE, "")),
    CaseState.CLOSED: walk(*DONE, (OEM, Step.CLOSE, "")),
}


def _author(rule_by: Party) -> str:
    return {Party.OPENER: OEM, Party.RECEIVER: SUP, Party.OWNER: SUP}[rule_by]


@pytest.mark.parametrize(
    ("state", "step"),
    [(s, st) for s, st in itertools.product(CaseState, Step) if st is not Step.OPEN],
)
def test_every_step_from_every_state(state: CaseState, step: Step) -> None:
    """Legal where the table says so (by the right party), refused with a 409 otherwise."""
    case = STATES[state]
    if state is CaseState.ACCEPTED and step is Step.ACTION_DONE:
        case = walk(*ACCEPTED)  # an action still open
    rule = STEPS[step]
    action = "A1" if step is Step.ACTION_DONE else ""
    event = CaseEvent(
        OEM, "qc-1", _author(rule.by), case.seq_of(_author(rule.by)) + 1, step, T0, None, action
    )
    if state in rule.sources:
        after = apply(case, event)
        assert after.state is (rule.target or state)
    else:
        with pytest.raises(CaseTransitionError, match=f"is {state.value}: {step.value}"):
            apply(case, event)


def test_a_state_jump_names_both_states() -> None:
    closed = STATES[CaseState.CLOSED]
    with pytest.raises(CaseTransitionError, match="is CLOSED: ACKNOWLEDGE is not allowed"):
        next_event(closed, SUP, Step.ACKNOWLEDGE, T0)


@pytest.mark.parametrize(
    ("state", "step", "wrong"),
    [
        (CaseState.CREATED, Step.SEND, SUP),
        (CaseState.SENT, Step.RECEIVE, OEM),
        (CaseState.RECEIVED, Step.ACKNOWLEDGE, OEM),
        (CaseState.ACKNOWLEDGED, Step.ACCEPT, OEM),
        (CaseState.ACKNOWLEDGED, Step.DECLINE, OEM),
        (CaseState.DECLINED, Step.CLOSE, SUP),
    ],
)
def test_the_other_party_may_not_make_the_move(state: CaseState, step: Step, wrong: str) -> None:
    with pytest.raises(CaseDenied, match="only the"):
        next_event(STATES[state], wrong, step, T0)


@pytest.mark.parametrize("step", [s for s in Step if s is not Step.OPEN])
def test_a_non_party_may_make_no_move(step: Step) -> None:
    case = walk(*ACCEPTED)
    action = "A1" if step is Step.ACTION_DONE else ""
    with pytest.raises(CaseDenied, match="is not a party"):
        apply(case, CaseEvent(OEM, "qc-1", MAL, 1, step, T0, None, action))


def test_only_the_owner_marks_an_action_done_and_only_once() -> None:
    case = walk(*ACCEPTED)
    with pytest.raises(CaseDenied, match="A2 of case qc-1 is owned by sunarc"):
        next_event(case, SUP, Step.ACTION_DONE, T0, "A2")
    with pytest.raises(CaseTransitionError, match="no action 'A9'"):
        next_event(case, SUP, Step.ACTION_DONE, T0, "A9")
    case = apply(case, next_event(case, SUP, Step.ACTION_DONE, T0, "A1"))
    with pytest.raises(CaseTransitionError, match="already done"):
        next_event(case, SUP, Step.ACTION_DONE, T0, "A1")


def test_closing_needs_every_action_done() -> None:
    case = walk(*ACCEPTED, (SUP, Step.ACTION_DONE, "A1"))
    with pytest.raises(CaseTransitionError, match="actions A2 are not done"):
        next_event(case, OEM, Step.CLOSE, T0)


def test_events_apply_in_each_authors_order_only() -> None:
    case = walk(*RECEIVED)
    ahead = CaseEvent(OEM, "qc-1", SUP, 3, Step.ACKNOWLEDGE, T0)
    with pytest.raises(CaseOrderError, match="expected number 2"):
        apply(case, ahead)
    again = CaseEvent(OEM, "qc-1", SUP, 1, Step.ACKNOWLEDGE, T0)
    with pytest.raises(CaseOrderError, match="expected number 2"):
        apply(case, again)


def test_both_sides_may_mark_their_own_actions_concurrently() -> None:
    case = walk(*ACCEPTED)
    theirs = next_event(case, SUP, Step.ACTION_DONE, T0, "A1")
    ours = next_event(case, OEM, Step.ACTION_DONE, T0, "A2")
    one = apply(apply(case, theirs), ours)
    other = apply(apply(case, ours), theirs)
    assert one == other and not one.open_actions()


def test_terms_refuse_what_does_not_fit() -> None:
    with pytest.raises(CaseFormatError, match="same member"):
        replace(terms(), receiver_id=OEM)
    with pytest.raises(CaseFormatError, match="is not a party"):
        terms((ActionItem("A1", ActionKind.CONTAINMENT, MAL, date(2026, 12, 5)),))
    with pytest.raises(CaseFormatError, match="share an id"):
        a = ActionItem("A1", ActionKind.CONTAINMENT, SUP, date(2026, 12, 5))
        terms((a, a))
    with pytest.raises(CaseFormatError, match="subject"):
        replace(terms(), subject="")
    with pytest.raises(CaseFormatError, match="control characters"):
        replace(terms(), subject="bell\x07")


def test_signed_events_verify_and_round_trip() -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    for event in (
        *opening("qc-1", terms(), T0),
        CaseEvent(OEM, "qc-1", SUP, 4, Step.ACTION_DONE, T0, None, "A1", "ok"),
    ):
        signed = sign_event(event, key)
        data = event.canonical_bytes()
        assert open_signed_event(data, signed.signature, key.verify_key).event == event
        assert event_from_bytes(data) == event
        with pytest.raises(CaseSignatureError):
            open_signed_event(data, signed.signature, other.verify_key)
        tampered = data.replace(b'"seq":', b'"seq": ')
        with pytest.raises(CaseSignatureError):
            open_signed_event(tampered, signed.signature, key.verify_key)


def test_parsing_insists_on_the_canonical_form() -> None:
    data = opening("qc-1", terms(), T0)[0].canonical_bytes()
    with pytest.raises(CaseFormatError, match="canonical"):
        event_from_bytes(data + b" ")
    with pytest.raises(CaseFormatError, match="severity"):
        event_from_bytes(data.replace(b'"CRITICAL"', b'"SEVERE"'))
    with pytest.raises(CaseFormatError, match="due"):
        event_from_bytes(data.replace(b'"2026-12-05"', b'"NaN"'))


def test_the_closure_record_is_the_same_whatever_order_the_logs_hold() -> None:
    case = walk(*ACCEPTED)
    theirs = next_event(case, SUP, Step.ACTION_DONE, T0, "A1")
    ours = next_event(case, OEM, Step.ACTION_DONE, T0, "A2")
    base = list(opening("qc-1", terms(), T0))
    c1 = apply(apply(case, theirs), ours)
    close = next_event(c1, OEM, Step.CLOSE, T0)
    closed = apply(c1, close)
    one = closure_record(closed, [*base, theirs, ours, close])
    two = closure_record(closed, [*base, ours, theirs, close])
    assert one == two and b"quality-case-closure" in one
    with pytest.raises(CaseTransitionError, match="not CLOSED"):
        closure_record(c1, base)


def test_overdue_actions_are_those_in_force_past_due_and_not_done() -> None:
    after_both = date(2026, 12, 21)
    assert overdue(walk(*ACKED), after_both) == []  # not in force before ACCEPT
    accepted = walk(*ACCEPTED)
    assert [a.action_id for a in overdue(accepted, date(2026, 12, 6))] == ["A1"]
    assert overdue(accepted, date(2026, 12, 5)) == []  # due today is not late
    assert [a.action_id for a in overdue(accepted, after_both)] == ["A1", "A2"]
    assert overdue(walk(*DONE), after_both) == []
    assert overdue(walk(*ACKED, (SUP, Step.DECLINE, "")), after_both) == []
