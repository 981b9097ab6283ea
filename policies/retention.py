"""Retention deadlines and the deletion duty.

Data received under an agreement must be gone N days after the provider closes
the order (N from the policy's ``delete`` duty, 180 by default). The consumer
proves it with a signed deletion receipt; the provider tracks, per agreement,
whether that duty is still pending (order open), due, overdue or fulfilled.
These functions are pure; the clock is always a parameter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from qdspace.policies.errors import PolicyError
from qdspace.policies.model import Policy, PolicyType

# What a deletion receipt must state, besides the consumer's signature over it.
RECEIPT_CONTENT = (
    "agreement_id",
    "consumer_id",
    "row_count",
    "content_sha256",
    "deleted_at",
    "order_id",
)
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
#: the latest instant a deadline names: one that would lie past the year 9999 (a close
#: time near its end, or thousands of years' retention) is this, "never" in practice,
#: instead of an OverflowError in whoever asks for it
LATEST_DEADLINE = datetime.max.replace(tzinfo=UTC)


class ReceiptMismatchError(PolicyError, ValueError):
    """A receipt does not belong to the duty it is offered for."""


def retention_days(policy: Policy) -> int | None:
    """The shortest retention among the policy's delete duties; None when nothing must go."""
    days = [duty.retention_days for duty in policy.delete_duties()]
    return min(days) if days else None


def deadline_after(closed_at: datetime, days: int) -> datetime:
    """`closed_at` + `days` (a retention: not negative), or `LATEST_DEADLINE` where
    that is past the year 9999."""
    try:
        return closed_at + timedelta(days=days)
    except OverflowError:
        return LATEST_DEADLINE


def retention_deadline(policy: Policy, order_closed_at: datetime | None) -> datetime | None:
    """When the data must be gone: order close + retention; None while the order is open."""
    days = retention_days(policy)
    if days is None or order_closed_at is None:
        return None
    return deadline_after(order_closed_at, days)


def is_expired(policy: Policy, order_closed_at: datetime | None, now: datetime) -> bool:
    """True once the retention deadline has passed (the data may no longer be kept)."""
    deadline = retention_deadline(policy, order_closed_at)
    return deadline is not None and now >= deadline


def receipt_required(policy: Policy) -> bool:
    return any(duty.receipt for duty in policy.delete_duties())


class DutyStatus(StrEnum):
    PENDING = "pending"  # the order is still open: no deadline yet
    DUE = "due"  # deadline set, not yet passed, no receipt
    OVERDUE = "overdue"  # deadline passed, no receipt
    FULFILLED = "fulfilled"  # receipt says deleted on or before the deadline
    FULFILLED_LATE = "fulfilled_late"  # receipt says deleted, but after the deadline


#: the order duties need someone in: late or due first, then waiting, then done (the
#: console and ``qdspace contracts`` list them so)
ATTENTION_ORDER = (
    DutyStatus.OVERDUE,
    DutyStatus.DUE,
    DutyStatus.PENDING,
    DutyStatus.FULFILLED_LATE,
    DutyStatus.FULFILLED,
)


@dataclass(frozen=True)
class DeletionDuty:
    """One consumer's duty to delete what it received under one agreement."""

    agreement_id: str
    provider_id: str
    consumer_id: str
    retention_days: int
    receipt_required: bool
    order_closed_at: datetime | None = None
    order_id: str = ""

    @property
    def deadline(self) -> datetime | None:
        if self.order_closed_at is None:
            return None
        return deadline_after(self.order_closed_at, self.retention_days)


def deletion_duty(
    agreement: Policy, order_closed_at: datetime | None, order_id: str = ""
) -> DeletionDuty | None:
    """The duty an Agreement imposes (for one order of its scope), or None when it has none."""
    if agreement.type is not PolicyType.AGREEMENT or agreement.assignee is None:
        raise PolicyError(f"policy {agreement.uid} is not an Agreement with an assignee")
    days = retention_days(agreement)
    if days is None:
        return None
    return DeletionDuty(
        agreement_id=agreement.uid,
        provider_id=agreement.assigner,
        consumer_id=agreement.assignee,
        retention_days=days,
        receipt_required=receipt_required(agreement),
        order_closed_at=order_closed_at,
        order_id=order_id,
    )


def duty_status(duty: DeletionDuty, now: datetime, deleted_at: datetime | None) -> DutyStatus:
    """Where the duty stands at `now`, given the deletion time of a verified receipt (if any)."""
    deadline = duty.deadline
    if deleted_at is not None:
        return (
            DutyStatus.FULFILLED_LATE
            if deadline is not None and deleted_at > deadline
            else DutyStatus.FULFILLED
        )
    if deadline is None:
        return DutyStatus.PENDING
    return DutyStatus.OVERDUE if now >= deadline else DutyStatus.DUE


def check_receipt_claims(
    duty: DeletionDuty,
    *,
    agreement_id: str,
    consumer_id: str,
    row_count: int,
    content_sha256: str,
    order_id: str = "",
) -> None:
    """Refuse a receipt that names another agreement or consumer, or states nonsense.

    The signature is checked elsewhere (`connector.agreement`); this is the
    policy side: is this receipt an answer to *this* duty at all?
    """
    if agreement_id != duty.agreement_id:
        raise ReceiptMismatchError(
            f"receipt is for agreement {agreement_id}, the duty is for {duty.agreement_id}"
        )
    if consumer_id != duty.consumer_id:
        raise ReceiptMismatchError(
            f"receipt is from {consumer_id}, the duty binds {duty.consumer_id}"
        )
    if order_id != duty.order_id:
        raise ReceiptMismatchError(
            f"receipt is for order {order_id!r}, the duty is for order {duty.order_id!r}"
        )
    if row_count < 0:
        raise ReceiptMismatchError(f"receipt row_count {row_count} is negative")
    if not _SHA256_HEX.fullmatch(content_sha256):
        raise ReceiptMismatchError("receipt content_sha256 is not 64 lowercase hex digits")
