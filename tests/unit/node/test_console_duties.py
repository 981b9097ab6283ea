"""The contracts page's deletion duties: a node keeps one per agreement and order, so the
page shows the ones that need someone first and says how many stand in each status."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from qdspace.connector.contract_store import DutyReport
from qdspace.node.api.contracts_models import duty_public
from qdspace.node.cli import contracts as cli
from qdspace.node.console.contract_pages import attention_first, duty_summary
from qdspace.policies.retention import ATTENTION_ORDER, DeletionDuty, DutyStatus

T0 = datetime(2026, 6, 1, tzinfo=UTC)


def _report(n: int, status: DutyStatus, closed: datetime | None) -> DutyReport:
    duty = DeletionDuty(
        agreement_id=f"agr-{n}",
        provider_id="cellex-000000000000",
        consumer_id="sunarc-000000000000",
        retention_days=30,
        receipt_required=True,
        order_closed_at=closed,
        order_id=f"PO-{n}",
    )
    return DutyReport(duty, status, None)


def test_overdue_and_due_come_first_by_deadline_then_what_waits_then_what_is_done() -> None:
    rnd = random.Random(4)
    reports = []
    for n in range(60):
        status = rnd.choice(list(DutyStatus))
        closed = None if status is DutyStatus.PENDING else T0 + timedelta(days=rnd.randrange(90))
        reports.append(_report(n, status, closed))
    ordered = attention_first(reports)
    ranks = [
        [DutyStatus.OVERDUE, DutyStatus.DUE, DutyStatus.PENDING].index(r.status)
        if r.status in (DutyStatus.OVERDUE, DutyStatus.DUE, DutyStatus.PENDING)
        else 3 + (r.status is DutyStatus.FULFILLED)
        for r in ordered
    ]
    assert ranks == sorted(ranks) and sorted(ordered, key=id) == sorted(reports, key=id)
    for status in (DutyStatus.OVERDUE, DutyStatus.DUE):
        deadlines = [r.duty.deadline for r in ordered if r.status is status]
        assert deadlines == sorted(deadlines)  # type: ignore[type-var]
    counts = {s: sum(r.status is s for r in reports) for s in DutyStatus}
    want = [f"{counts[s]} {s.value.replace('_', ' ')}" for s in ATTENTION_ORDER if counts[s]]
    assert duty_summary(reports) == ", ".join(want)
    assert duty_summary([]) == ""
    # `qdspace contracts` orders and counts the API's duties the same way
    public = [duty_public(r).model_dump() for r in reports]
    assert tuple(s.value for s in ATTENTION_ORDER) == cli.DUTY_ATTENTION
    assert cli.attention_first(public) == [duty_public(r).model_dump() for r in ordered]
    assert cli.duty_summary(public) == duty_summary(reports)
    assert cli.duty_summary([]) == "none"
