"""The consumer's retention sweeper: delete what has expired, and prove it.

For every order closure whose deadline (close time + the agreement's retention
days) has passed and that has no receipt yet, `sweep` deletes the rows received
under that agreement for that order, destroys their data key, and stores a
deletion receipt signed with the consumer's Ed25519 key, all in one
transaction; an optional `outbox` callback turns the receipt into protocol
messages queued in that same transaction, so the provider is told even if the
node crashes right after. The clock is a parameter, so tests can jump 181 days.

The sweep also prunes the finished transfers that are of no more use (an ended
agreement's, a receipted order's, a consumer's pull superseded by a later one of its
scope: `connector.transfer_retention`), with their messages, DSP bindings and cursors,
in one transaction, once an hour (`contract_store.transfer_prune`); agreements and
receipts, the evidence, are never pruned. A failure to prune is logged and does not
stop the deletions the sweep owes (the next run tries again).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from nacl.signing import SigningKey
from sqlalchemy.exc import SQLAlchemyError

from qdspace.connector.agreement import DeletionReceipt, SignedReceipt, sign_receipt
from qdspace.connector.contract_store import ContractStore, Deletion, OutboxMessage
from qdspace.connector.contract_store.transfer_prune import TransferPruner, TransferPruning
from qdspace.connector.errors import ConnectorError
from qdspace.connector.transfer_retention import TRANSFER_KEEP
from qdspace.policies.errors import PolicyError

log = logging.getLogger(__name__)

ReceiptOutbox = Callable[[SignedReceipt, str], Sequence[OutboxMessage]]


@dataclass(frozen=True)
class SweepFailure:
    agreement_id: str
    order_id: str
    error: str


@dataclass(frozen=True)
class SweepReport:
    receipts: tuple[SignedReceipt, ...]
    failures: tuple[SweepFailure, ...]
    # the finished transfers pruned by this run (None: not due this run, or it failed)
    pruned: TransferPruning | None = None

    @property
    def rows_deleted(self) -> int:
        return sum(s.receipt.row_count for s in self.receipts)


def shred_and_sign(
    store: ContractStore,
    agreement_id: str,
    order_id: str,
    signing_key: SigningKey,
    now: datetime,
    outbox: ReceiptOutbox | None,
    *,
    reason: str = "",
) -> SignedReceipt | None:
    """Delete one (agreement, order) this node holds as consumer and store the signed
    receipt for it (and its outbox messages), in one transaction (`ContractStore.shred`).

    The receipt is the sweep's for a deadline come due (no `reason`), and the same with
    a reason for an early deletion (a member leaving, `connector.purge`). None when a
    receipt for the pair was stored meanwhile by another deletion."""
    terms = store.agreement(agreement_id).signed.agreement

    def make_receipt(deletion: Deletion) -> tuple[SignedReceipt, Sequence[OutboxMessage]]:
        receipt = DeletionReceipt(
            agreement_id=deletion.agreement_id,
            consumer_id=terms.consumer_id,
            row_count=deletion.row_count,
            content_sha256=deletion.content_sha256,
            deleted_at=now,
            order_id=deletion.order_id,
            reason=reason,
        )
        signed = sign_receipt(receipt, signing_key)
        return signed, () if outbox is None else outbox(signed, terms.provider_id)

    return store.shred(agreement_id, order_id, now, make_receipt)


def sweep(
    store: ContractStore,
    signing_key: SigningKey,
    now: datetime,
    *,
    outbox: ReceiptOutbox | None = None,
    horizon: timedelta = timedelta(0),
    transfer_keep: timedelta = TRANSFER_KEEP,
) -> SweepReport:
    """Delete every (agreement, order) whose deadline is at or before ``now + horizon`` and
    sign a receipt for each, stamped ``now``; then prune the finished transfers of no
    more use that changed last before ``now - transfer_keep`` (`prune_transfers`).

    A sweeper that runs every H hours passes ``horizon=H``, so what would expire before
    its next run goes now, and no deletion is ever late. A failure on one (for example
    a row that no longer decrypts) is reported and does not stop the others; the next
    sweep tries it again.
    """
    if horizon < timedelta(0):
        raise ValueError("the sweep horizon cannot be negative")
    receipts: list[SignedReceipt] = []
    failures: list[SweepFailure] = []
    for closure in store.expired_closures(now + horizon):
        try:
            signed = shred_and_sign(
                store, closure.agreement_id, closure.order_id, signing_key, now, outbox
            )
        except (ConnectorError, PolicyError, SQLAlchemyError) as exc:  # one bad duty only
            log.warning(
                "retention sweep: agreement %s order %s: %s",
                closure.agreement_id,
                closure.order_id,
                exc,
            )
            failures.append(SweepFailure(closure.agreement_id, closure.order_id, str(exc)))
            continue
        if signed is None:  # a concurrent deletion (a purge) answered it first
            continue
        log.info(
            "retention sweep: agreement %s order %s: %d rows deleted, receipt %s",
            closure.agreement_id,
            closure.order_id,
            signed.receipt.row_count,
            signed.receipt.receipt_id,
        )
        receipts.append(signed)
    pruned = prune_transfers(store, now, transfer_keep)
    return SweepReport(tuple(receipts), tuple(failures), pruned)


def prune_transfers(
    store: ContractStore, now: datetime, keep: timedelta = TRANSFER_KEEP
) -> TransferPruning | None:
    """Prune the finished transfers of no more use (`TransferPruner.prune`: once an hour,
    one transaction), logged with what went; None when not due, or when it failed (logged:
    the deletions of the sweep come first, and the next run tries again)."""
    try:
        pruned = TransferPruner(store.engine).prune(now, keep=keep)
    except (ConnectorError, PolicyError, SQLAlchemyError) as exc:
        log.warning("retention sweep: pruning finished transfers failed: %s", exc)
        return None
    if pruned is not None and (pruned.transfers or pruned.notes_expired or pruned.acts_expired):
        log.info(
            "retention sweep: %d finished transfers pruned (%d messages, %d DSP bindings, "
            "%d delivery cursors), %d notes of pruned transfers and %d re-reads expired%s",
            pruned.transfers,
            pruned.messages,
            pruned.bindings,
            pruned.cursors,
            pruned.notes_expired,
            pruned.acts_expired,
            "; more are due" if pruned.more else "",
        )
    return pruned


class RetentionSweeper:
    """`sweep` bound to a store, a key and a clock, for the node's background job."""

    def __init__(
        self,
        store: ContractStore,
        signing_key: SigningKey,
        clock: Callable[[], datetime],
        *,
        outbox: ReceiptOutbox | None = None,
    ) -> None:
        self.store = store
        self._key = signing_key
        self._clock = clock
        self._outbox = outbox

    def run_once(self, horizon: timedelta = timedelta(0)) -> SweepReport:
        return sweep(self.store, self._key, self._clock(), outbox=self._outbox, horizon=horizon)
