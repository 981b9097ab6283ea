"""The demo's line of a provider's deletion duties: by order, not the order once per
agreement (``PO-2026-0042: fulfilled`` four times read as a fault)."""

from __future__ import annotations

from qdspace.node.demo.contracts import duty_states


def _duty(order: str | None, status: str) -> dict[str, object]:
    return {"order_id": order, "status": status, "agreement_id": "agr-x"}


def test_duties_are_counted_by_order_and_state() -> None:
    four = [_duty("PO-2026-0042", "fulfilled")] * 4
    assert duty_states(four) == "PO-2026-0042: 4 agreements, all fulfilled"
    mixed = [
        *four[:2],
        _duty("PO-2026-0042", "pending"),
        _duty("PO-2026-0043", "overdue"),
        _duty(None, "pending"),
    ]
    assert duty_states(mixed) == (
        "PO-2026-0042: 3 agreements, 2 fulfilled, 1 pending; PO-2026-0043: overdue; -: pending"
    )
    assert duty_states([]) == ""
