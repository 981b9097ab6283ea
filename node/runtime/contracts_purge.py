"""Leaving the data space: delete everything held as consumer now, and prove it.

A member that leaves (a hosted tenant being removed, or any node whose operator asks)
must not keep what providers shared with it until the retention deadlines come. `purge`
carries out the plan `connector.purge` decides: it ends every agreement this node holds
as consumer (the provider is told, and rows still arriving are refused), then deletes
each (agreement, order) it holds (rows, tombstones, audit trail) and destroys its data
key, storing the signed deletion receipt and the message that carries it to the
provider in the same transaction, exactly as the retention sweep does; the receipt
says why (`REASON_LEAVING`). The receipts are then queued for anchoring.

Crash safety and repeats come from that shape: a crash leaves each pair either wholly
deleted and answered or untouched, a second purge plans only what is still held and
unanswered (so it issues no second receipt) and queues every receipt of an earlier
purge for anchoring again (a no-op when it was queued). A failure on one pair is
reported and does not stop the others.

The receipts leave through the outbox; a caller about to delete the node's database (a
host removing a tenant) must first see the outbox drained (`ContractStore.outbox_backlog`
is 0), or the providers never get them.
"""

from __future__ import annotations

import logging

from sqlalchemy.exc import SQLAlchemyError

from qdspace.connector.agreement import REASON_LEAVING, SignedReceipt
from qdspace.connector.contract_store import OutboxMessage
from qdspace.connector.errors import ConnectorError
from qdspace.connector.negotiation import Role
from qdspace.connector.purge import (
    TERMINATION_REASON,
    ConsumerAgreement,
    PurgeFailure,
    PurgeReport,
    agreements_to_end,
    plan_purge,
)
from qdspace.connector.retention_sweep import shred_and_sign
from qdspace.node.runtime.contracts_notices import ContractNotices
from qdspace.policies.errors import PolicyError

logger = logging.getLogger("node.contracts")


class ContractPurge(ContractNotices):
    """`purge` (a mixin of `ContractRuntime`)."""

    def consumer_agreements(self) -> list[ConsumerAgreement]:
        return [
            ConsumerAgreement(
                s.agreement_id,
                s.signed.agreement.provider_id,
                s.signed.agreement.consumer_id,
                s.terminated_at is not None,
            )
            for s in self.store.agreements(Role.CONSUMER)
        ]

    def purge(self) -> PurgeReport:
        """Consumer: end every agreement, delete everything received under them now,
        sign one receipt per (agreement, order), queue them to the providers and for
        anchoring. Idempotent; see the module docstring."""
        agreements = self.consumer_agreements()
        ended = agreements_to_end(agreements)
        for agreement_id in ended:  # first: what is read below can no longer grow
            self.terminate(agreement_id, TERMINATION_REASON)
        plan = plan_purge(agreements, self.store.holdings())
        now = self.clock.now()

        def outbox(signed: SignedReceipt, provider_id: str) -> list[OutboxMessage]:
            rid = signed.receipt.receipt_id
            return [self.notification(provider_id, signed, f"receipt:{rid}")]

        issued: list[SignedReceipt] = []
        failures: list[PurgeFailure] = []
        for step in plan.steps:
            where = (step.agreement_id, step.order_id)
            try:
                signed = shred_and_sign(
                    self.store, *where, self.signing_key, now, outbox, reason=REASON_LEAVING
                )
            except (ConnectorError, PolicyError, SQLAlchemyError) as exc:  # this pair only
                logger.warning("purge: agreement %s order %r: %s", *where, exc)
                failures.append(PurgeFailure(*where, str(exc)))
                continue
            if signed is not None:
                issued.append(signed)
        self._anchor_leaving_receipts()
        report = PurgeReport(
            agreements=tuple(a.agreement_id for a in agreements),
            terminated=ended,
            receipts=tuple(issued),
            already_answered=len(plan.answered),
            failures=tuple(failures),
        )
        logger.info(
            "purge: %d agreements ended, %d receipts issued (%d rows), %d failed",
            len(ended),
            len(issued),
            report.rows_deleted,
            len(failures),
        )
        return report

    def _anchor_leaving_receipts(self) -> None:
        """Queue every receipt of a purge for anchoring (again: a no-op once queued, and
        what a crash right after a deletion lost is queued now)."""
        for signed in self.store.receipts():
            receipt = signed.receipt
            if receipt.consumer_id == self.me.member_id and receipt.reason == REASON_LEAVING:
                self.record("deletion_receipt", receipt.receipt_id, receipt.canonical_bytes())
