"""Durable state of the contract machinery, on SQLite or PostgreSQL.

`ContractStore` keeps negotiations, signed agreements, transfer cursors, an outbox
of protocol messages, the rows received under agreements (with their data keys),
order closures, deletion receipts and the notices (SPC alerts, investigations) peers
sent. It works over a plain SQLAlchemy `Engine` passed in; its tables
(`CONTRACT_METADATA`) are created by the Alembic migrations (``0002_contracts`` and
later; `ensure_schema` runs them), so it shares the node's QDM database or lives in
its own.

The store is split by aggregate, one module each, owning its tables and explaining
the invariants it keeps:

- `common`: the shared schema, transactions and optimistic locking (compare-and-set
  on the messages a process applied);
- `negotiations`, `agreements`, `transfers`: the contract processes and their result;
- `outbox`: messages to peers, queued in the transaction that owes them;
- `received` and `data_keys`: the consumer's mirror of the provider's records
  (keep-once, highest version wins) and the keys it is encrypted under
  (crypto-shredding);
- `closures` and `receipts`: order closures, the deletion duties they start, and the
  signed receipts that answer them; `duties`: those duties read in SQL, a page at a time;
- `notices`: alerts and investigations peers sent, kept once within a bound;
- `cases`: quality investigations and alerts with a life cycle, each party's copy of
  the signed event log.

`ContractStore` wires them together (which aggregate takes another's step into its
transaction) and delegates each call to the module that owns it, under the name the
method has there; an aggregate whose steps no other aggregate joins (`outbox` for its
reads, `dsp`, `subscriptions`, `notices`, `cases`) is its attribute, used directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime

from sqlalchemy import Engine

from qdspace.connector.agreement import SignedAgreement, SignedReceipt
from qdspace.connector.contract_errors import ContractStoreError
from qdspace.connector.contract_store.agreements import (
    AgreementLink,
    AgreementStore,
    StoredAgreement,
)
from qdspace.connector.contract_store.cases import CaseLog, CaseRow, CaseStore
from qdspace.connector.contract_store.closures import ClosureStore, OrderClosure
from qdspace.connector.contract_store.common import (
    CONTRACT_METADATA,
    ConcurrentUpdateError,
    ensure_schema,
    saving,
)
from qdspace.connector.contract_store.data_keys import DataKeys
from qdspace.connector.contract_store.dsp import DspProcess, DspProcessStore
from qdspace.connector.contract_store.duties import DutyReport, DutyView
from qdspace.connector.contract_store.negotiations import NegotiationStore
from qdspace.connector.contract_store.notices import NoticeStore
from qdspace.connector.contract_store.outbox import OutboxMessage, OutboxStore, PendingMessage
from qdspace.connector.contract_store.receipts import ReceiptStore
from qdspace.connector.contract_store.received import (
    Deletion,
    IncomingRow,
    IncomingRun,
    MirrorResult,
    MirrorVersion,
    ReceivedChange,
    ReceivedRow,
    ReceivedStore,
    received_agreement_table,
    received_row_table,
)
from qdspace.connector.contract_store.subscriptions import StoredSubscription, SubscriptionStore
from qdspace.connector.contract_store.transfer_records import TransferGone
from qdspace.connector.contract_store.transfers import TransferStore
from qdspace.connector.negotiation import Negotiation, NegotiationState, Role
from qdspace.connector.purge import Holding
from qdspace.connector.transfer import TransferProcess, TransferState
from qdspace.policies.retention import DutyStatus

__all__ = [
    "CONTRACT_METADATA",
    "AgreementLink",
    "CaseLog",
    "CaseRow",
    "ConcurrentUpdateError",
    "ContractStore",
    "ContractStoreError",
    "Deletion",
    "DspProcess",
    "DutyReport",
    "IncomingRow",
    "IncomingRun",
    "MirrorResult",
    "MirrorVersion",
    "OrderClosure",
    "OutboxMessage",
    "PendingMessage",
    "ReceivedChange",
    "ReceivedRow",
    "StoredAgreement",
    "StoredSubscription",
    "ensure_schema",
    "received_agreement_table",
    "received_row_table",
]


class ContractStore:
    """Negotiations, agreements, transfers, outbox, received rows and deletion duties.

    `key_encryption_key` (32 bytes) wraps the per-agreement data keys; keep it
    outside the database (for example in the node's key directory).
    """

    def __init__(self, engine: Engine, key_encryption_key: bytes) -> None:
        self.engine = engine
        self._keys = DataKeys(engine, key_encryption_key)
        # the outbox: queued with the steps that decide its messages, read as it is owed
        # (`outbox.owed`) directly
        self._outbox = self.outbox = OutboxStore(engine)
        self._agreements = AgreementStore(engine)
        self._negotiations = NegotiationStore(engine, self._agreements, self._outbox)
        self._transfers = TransferStore(engine, self._outbox)
        self._received = ReceivedStore(engine, self._keys, self._agreements, self._transfers)
        self._receipts = ReceiptStore(engine)
        self._closures = ClosureStore(
            engine, self._agreements, self._received, self._receipts, self._outbox
        )
        self._duties = DutyView(engine)
        # alerts and investigations peers sent (`notices`), and the quality cases with
        # their signed event logs (`cases`): their own aggregates, used directly
        self.notices = NoticeStore(engine)
        self.cases = CaseStore(engine, self._outbox)
        # the DSP binding's pids and callbacks (`dsp`): its own aggregate, used directly
        self.dsp = DspProcessStore(engine)
        # a consumer's live subscriptions (`subscriptions`): their own aggregate, used directly
        self.subscriptions = SubscriptionStore(engine, self._outbox)

    # -------------------------------------------------------- negotiations

    def save_negotiation(
        self,
        before: Negotiation | None,
        after: Negotiation,
        outbox: Iterable[OutboxMessage] = (),
    ) -> None:
        self._negotiations.save_negotiation(before, after, outbox)

    def open_dsp_negotiation(self, negotiation: Negotiation, binding: DspProcess) -> None:
        """A negotiation opened over DSP and its binding, in one commit (the consumer's:
        saved before its request goes out, since the provider's callbacks may come first)."""
        self._negotiations.save_negotiation(
            None, negotiation, also=lambda connection: self.dsp.bind_in(connection, binding)
        )

    def load_negotiation(self, negotiation_id: str) -> Negotiation:
        return self._negotiations.load_negotiation(negotiation_id)

    def find_negotiation(self, negotiation_id: str) -> Negotiation | None:
        return self._negotiations.find_negotiation(negotiation_id)

    def negotiations_opened_by(self, consumer_id: str, since: datetime) -> int:
        return self._negotiations.opened_by(consumer_id, since)

    def prune_ended_negotiations(self, before: datetime, limit: int = 1000) -> int:
        return self._negotiations.prune_ended(before, limit)

    def prune_ended_negotiations_beyond(
        self, per_member: int, opened_before: datetime, limit: int = 1000
    ) -> int:
        return self._negotiations.prune_ended_beyond(per_member, opened_before, limit)

    def transfers_opened_by(self, consumer_id: str, since: datetime) -> int:
        return self._transfers.opened_by(consumer_id, since)

    def update_negotiation(
        self,
        negotiation_id: str,
        step: Callable[[Negotiation], tuple[Negotiation, Sequence[OutboxMessage]]],
        opening: Callable[[], tuple[Negotiation, Sequence[OutboxMessage]]] | None = None,
        *,
        attempts: int = 3,
    ) -> Negotiation:
        return self._negotiations.update_negotiation(
            negotiation_id, step, opening, attempts=attempts
        )

    def negotiations(
        self,
        state: NegotiationState | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
        newest_first: bool = False,
    ) -> list[Negotiation]:
        return self._negotiations.negotiations(
            state, limit=limit, offset=offset, newest_first=newest_first
        )

    def count_negotiations(self) -> int:
        return self._negotiations.count_negotiations()

    # ---------------------------------------------------------- agreements

    def save_agreement(self, signed: SignedAgreement, role: Role) -> None:
        self._agreements.save_agreement(signed, role)

    def agreement(self, agreement_id: str) -> StoredAgreement:
        return self._agreements.agreement(agreement_id)

    def agreements(
        self,
        role: Role | None = None,
        *,
        asset_id: str | None = None,
        provider_id: str | None = None,
        consumer_id: str | None = None,
        limit: int | None = None,
        offset: int = 0,
        newest_first: bool = False,
    ) -> list[StoredAgreement]:
        return self._agreements.agreements(
            role,
            asset_id=asset_id,
            provider_id=provider_id,
            consumer_id=consumer_id,
            limit=limit,
            offset=offset,
            newest_first=newest_first,
        )

    def count_agreements(self, role: Role | None = None) -> int:
        return self._agreements.count_agreements(role)

    def agreement_links(self) -> list[AgreementLink]:
        return self._agreements.agreement_links()

    def concerning_order(self, provider_id: str, order_id: str) -> list[StoredAgreement]:
        return self._agreements.concerning_order(provider_id, order_id)

    def terminate_agreement(self, agreement_id: str, reason: str, at: datetime) -> StoredAgreement:
        return self._agreements.terminate_agreement(agreement_id, reason, at)

    @property
    def terminations(self) -> int:
        """Agreements this process terminated (`AgreementStore`): a releasing stream
        that sees the count move checks its agreement again before the next batch."""
        return self._agreements.terminations

    # ----------------------------------------------------------- transfers

    def save_transfer(
        self,
        before: TransferProcess | None,
        after: TransferProcess,
        outbox: Iterable[OutboxMessage] = (),
    ) -> None:
        self._transfers.save_transfer(before, after, outbox)

    def receiving(self) -> list[tuple[TransferProcess, DspProcess | None]]:
        """The transfers this node was receiving (consumer side, STARTED), each with its
        DSP binding (None: one over the gRPC wire): what a restarted node takes up again."""
        started = self.transfers(role=Role.CONSUMER, state=TransferState.STARTED)
        bound = self.dsp.by_locals("transfer", (t.transfer_id for t in started))
        return [(t, bound.get(t.transfer_id)) for t in started]

    def open_dsp_transfer(
        self,
        process: TransferProcess | None,
        binding: DspProcess,
        outbox: Iterable[OutboxMessage],
        at: datetime,
    ) -> None:
        """A transfer opened over DSP (`process`; None: saved before), its DSP binding and
        (a provider's) its start message, in one commit: a failure in between would leave
        a transfer no pid reaches, which the consumer's retry could not take up."""
        with saving(self.engine, f"transfer {binding.local_id}") as connection:
            if process is not None:
                self._transfers.save_transfer_in(connection, None, process)
            self.dsp.bind_in(connection, binding)
            self._outbox.enqueue_in(connection, outbox, at)

    def load_transfer(self, transfer_id: str) -> TransferProcess:
        return self._transfers.load_transfer(transfer_id)

    def find_transfer(self, transfer_id: str) -> TransferProcess | None:
        return self._transfers.find_transfer(transfer_id)

    def find_transfer_or_gone(self, transfer_id: str) -> TransferProcess | TransferGone | None:
        return self._transfers.find_transfer_or_gone(transfer_id)

    def transfers(
        self,
        agreement_id: str | None = None,
        *,
        role: Role | None = None,
        state: TransferState | None = None,
        limit: int | None = None,
        offset: int = 0,
        newest_first: bool = False,
    ) -> list[TransferProcess]:
        return self._transfers.transfers(
            agreement_id,
            role=role,
            state=state,
            limit=limit,
            offset=offset,
            newest_first=newest_first,
        )

    def count_transfers(self, agreement_id: str | None = None) -> int:
        return self._transfers.count_transfers(agreement_id)

    def last_completed_pull(
        self,
        agreement_id: str,
        order_id: str | None,
        fields: frozenset[str] | None,
        purpose: str | None,
    ) -> TransferProcess | None:
        return self._transfers.last_completed_pull(agreement_id, order_id, fields, purpose)

    # -------------------------------------------------------------- outbox

    def enqueue(self, messages: Iterable[OutboxMessage], at: datetime) -> None:
        self._outbox.enqueue(messages, at)

    def due_messages(
        self, now: datetime, limit: int = 100, exclude: frozenset[str] = frozenset()
    ) -> list[PendingMessage]:
        return self._outbox.due_messages(now, limit, exclude)

    def outbox_backlog(self) -> int:
        return self._outbox.backlog()

    def mark_sent(self, message_id: int, at: datetime) -> None:
        self._outbox.mark_sent(message_id, at)

    def mark_failed(
        self, message_id: int, error: str, retry_at: datetime, *, refused: bool = False
    ) -> None:
        self._outbox.mark_failed(message_id, error, retry_at, refused=refused)

    # -------------------------------------------------------- received rows

    def store_received_rows(
        self,
        agreement_id: str,
        source_id: str,
        rows: Iterable[IncomingRow] | IncomingRun,
        at: datetime,
    ) -> MirrorResult:
        return self._received.store_received_rows(agreement_id, source_id, rows, at)

    def commit_transfer_batch(
        self,
        before: TransferProcess,
        after: TransferProcess,
        rows: Sequence[IncomingRow] | IncomingRun,
        at: datetime,
    ) -> MirrorResult:
        return self._received.commit_transfer_batch(before, after, rows, at)

    def received_changes(
        self,
        agreement_id: str | None = None,
        record_key: str | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[ReceivedChange]:
        return self._received.received_changes(agreement_id, record_key, limit=limit, offset=offset)

    def last_received_seq(self, source_id: str) -> int | None:
        return self._received.last_received_seq(source_id)

    def delivered(self, source_id: str) -> int:
        return self._received.delivered(source_id)

    def received_source(self, source_id: str) -> tuple[int | None, int]:
        return self._received.received_source(source_id)

    def received_rows(
        self,
        agreement_id: str,
        order_id: str | None = None,
        *,
        after_id: int = 0,
        limit: int | None = None,
    ) -> list[ReceivedRow]:
        return self._received.received_rows(agreement_id, order_id, after_id=after_id, limit=limit)

    def received_newest(self, agreement_id: str, count: int) -> list[ReceivedRow]:
        return self._received.received_newest(agreement_id, count)

    def received_since(self, agreement_id: str, after_id: int) -> list[ReceivedRow]:
        return self._received.received_since(agreement_id, after_id)

    def mirror_version(self, agreement_id: str) -> MirrorVersion | None:
        return self._received.mirror_version(agreement_id)

    def count_received(self, agreement_id: str | None = None) -> int:
        return self._received.count_received(agreement_id)

    def stored_rows(self) -> int:
        return self._received.stored_rows()

    def key_destroyed(self, agreement_id: str, order_id: str) -> bool:
        return self._keys.key_destroyed(agreement_id, order_id)

    # ------------------------------------------------- closures and deletion

    def record_order_closed(
        self,
        agreement_id: str,
        order_id: str,
        closed_at: datetime,
        *,
        now: datetime | None = None,
    ) -> OrderClosure:
        return self._closures.record_order_closed(agreement_id, order_id, closed_at, now=now)

    def close_order(self, provider_id: str, order_id: str, closed_at: datetime) -> list[str]:
        return self._closures.close_order(provider_id, order_id, closed_at)

    def closure(self, agreement_id: str, order_id: str) -> OrderClosure | None:
        return self._closures.closure(agreement_id, order_id)

    def closures(
        self, agreement_id: str | None = None, *, limit: int | None = None, offset: int = 0
    ) -> list[OrderClosure]:
        return self._closures.closures(agreement_id, limit=limit, offset=offset)

    def closed_orders(self, agreement_id: str) -> dict[str, datetime]:
        return self._closures.closed_orders(agreement_id)

    def expired_closures(self, now: datetime) -> list[OrderClosure]:
        return self._closures.expired_closures(now)

    def shred(
        self,
        agreement_id: str,
        order_id: str,
        at: datetime,
        make_receipt: Callable[[Deletion], tuple[SignedReceipt, Sequence[OutboxMessage]]],
    ) -> SignedReceipt | None:
        return self._closures.shred(agreement_id, order_id, at, make_receipt)

    def holdings(self) -> list[Holding]:
        return self._closures.holdings()

    def record_receipt(self, signed: SignedReceipt) -> bool:
        return self._closures.record_receipt(signed)

    def deletion_duties(
        self,
        now: datetime,
        *,
        limit: int | None = None,
        offset: int = 0,
        attention_first: bool = False,
        status: DutyStatus | None = None,
    ) -> list[DutyReport]:
        return self._duties.deletion_duties(
            now, limit=limit, offset=offset, attention_first=attention_first, status=status
        )

    def count_duties(self, now: datetime) -> dict[DutyStatus, int]:
        return self._duties.count_duties(now)

    def receipts(
        self,
        agreement_id: str | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
        newest_first: bool = False,
    ) -> list[SignedReceipt]:
        return self._receipts.receipts(
            agreement_id, limit=limit, offset=offset, newest_first=newest_first
        )

    def count_receipts(self) -> int:
        return self._receipts.count_receipts()

    def receipt(self, receipt_id: str) -> SignedReceipt | None:
        return self._receipts.receipt(receipt_id)
