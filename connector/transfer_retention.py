"""When a finished transfer's record is of no more use, and may be pruned.

Why: a consumer that pulls every few minutes leaves a transfer process per pull on both
sides (its row, the messages it applied, over DSP its binding, on the consumer the cursor
of its deliveries), tens of thousands a month, and nothing took them away again. They
are not evidence: what a regulator verifies through the ledger is the signed agreement
and the consumer's signed deletion receipts, and both are kept as they were. A transfer
process is the working state of one delivery, kept for what can still be done with it:

- one under way (REQUESTED, STARTED, SUSPENDED) is resumed: never pruned;
- a TERMINATED one takes nothing more (no resume, no re-read): pruned after the keep;
- a COMPLETED one is re-read by its consumer (one that lost its copy, or a consumer cut
  off before it stored the end, whose re-read rewinds it: `connector.transfer.reread`)
  within the keep: on the provider it is pruned after the keep whatever its agreement
  (a consumer pulling every few minutes under an agreement of years left the provider
  a row per pull for years; past the keep, a new pull brings the rows as they are now,
  which a re-read of a month-old delivery would not). The consumer's copy holds the
  watermark its next incremental pull of the same scope continues from
  (`last_completed_pull`; the provider checks no watermark against its records): there
  it is pruned after the keep once its agreement ended (terminated, or expired: no
  permission of it grants anything any more, so the gate refuses every read), or the
  order it carried was deleted and answered with a receipt (the rows are gone; the order
  is closed, past its retention), or a later completed pull of the same scope holds the
  watermark instead;
- a transfer under an agreement not held here (nothing can be read under it) is pruned
  after the keep like one whose agreement ended.

The keep (`TRANSFER_KEEP` after its last change) leaves an operator time to read what
happened, and is far longer than the hour in which a member's new transfers count
against its quota. What stays of a pruned transfer is a note (`contract_store.
transfer_records`), so a consumer asking for it again is told it is no longer held.

Pure: the facts come from the store (`contract_store.transfer_prune`), the clock is a
parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from qdspace.connector.negotiation import Role
from qdspace.connector.transfer import TransferState
from qdspace.policies.model import Constraint, LeftOperand, Operator, Policy

#: how long a finished transfer is kept after its last change, at least
TRANSFER_KEEP = timedelta(days=30)
#: the states in which nothing more is sent, received or resumed
FINISHED = (TransferState.COMPLETED, TransferState.TERMINATED)


@dataclass(frozen=True)
class FinishedTransfer:
    """A finished transfer as far as pruning asks: whose side, which order it carried
    (None: every order of its agreement), and, for a consumer's completed pull, whether a
    later completed pull of the same scope holds its watermark now."""

    transfer_id: str
    agreement_id: str
    role: Role
    state: TransferState
    order_id: str | None
    superseded: bool = False


@dataclass(frozen=True)
class AgreementStanding:
    """What pruning asks of an agreement held here: whether it ended (terminated, or no
    permission of it grants anything any more), the one order its scope names (None:
    several, any), and the orders whose deletion was answered with a receipt."""

    ended: bool
    scope_order: str | None = None
    receipted: frozenset[str] = frozenset()


def grants_nothing_after(policy: Policy, at: datetime) -> bool:
    """True when every permission of `policy` ends at or before `at` (a date-time bound
    ``lt``/``lteq`` that no later request meets): no read is granted under it again. An
    open-ended permission, or a bound still ahead, keeps it granting."""
    return all(_ended(p.constraints, at) for p in policy.permissions)


def _ended(constraints: tuple[Constraint, ...], at: datetime) -> bool:
    for c in constraints:
        right = c.right_operand
        if c.left_operand is not LeftOperand.DATETIME or not isinstance(right, datetime):
            continue
        if (c.operator is Operator.LT and right <= at) or (
            c.operator is Operator.LTEQ and right < at
        ):
            return True
    return False


def agreement_standing(
    policy: Policy | None,
    terminated_at: datetime | None,
    scope_order: str | None,
    receipted: frozenset[str],
    now: datetime,
) -> AgreementStanding:
    """An agreement's `AgreementStanding` at `now` (`policy` None: its terms could not be
    read, so it ends only by a termination)."""
    expired = policy is not None and grants_nothing_after(policy, now)
    ended = terminated_at is not None or expired
    return AgreementStanding(ended, scope_order, receipted)


def of_no_more_use(transfer: FinishedTransfer, agreement: AgreementStanding | None) -> bool:
    """Whether a finished transfer, past its keep, may be pruned (the module docstring's
    rules); `agreement` None: its agreement is not held here."""
    if transfer.state not in FINISHED:
        return False
    if transfer.state is TransferState.TERMINATED or agreement is None or agreement.ended:
        return True
    if transfer.role is Role.PROVIDER:  # re-read within the keep only
        return True
    order = transfer.order_id or agreement.scope_order
    if order is not None and order in agreement.receipted:
        return True
    return transfer.role is Role.CONSUMER and transfer.superseded
