"""Durable state of the contract machinery, on SQLite or PostgreSQL.

`ContractStore` keeps negotiations (with the ids of every message applied, so a
retried message is recognised after a restart), signed agreements, transfer
cursors, an outbox of protocol messages, the rows received under agreements,
order closures, deletion receipts and the SPC alerts peers sent. It works over a plain SQLAlchemy
`Engine` passed in; its tables (`CONTRACT_METADATA`) are created by the Alembic
migration ``0002_contracts`` (`ensure_schema` runs the migrations), so it shares
the node's QDM database or lives in its own.

Concurrency: states are saved by compare-and-set on the number of messages
applied (`save_negotiation(before, after)`), so two handlers racing on one
process cannot both win; the loser gets `ConcurrentUpdateError`, reloads and
re-applies, which the idempotent state machines turn into a no-op.

Received rows are the consumer's copy of the provider's records: one row per
(agreement, record key), the highest version seen (see the record envelope in
`connector.transfer`). Pulling the same records again, over several transfers or
the live stream, concurrently or not, stores each once; a later version replaces
the row, a tombstone withdraws it (kept, without content, so a late copy of an
older version cannot bring it back), and every correction and withdrawal is kept
in an audit trail (`received_changes`) with the hash of what arrived. A row, and a
tombstone, is only accepted for an order its agreement covers, and only ever
touches that agreement's rows.

Received rows are stored encrypted (AES-256-GCM) under a data key per
agreement and order; the data key is kept wrapped under the node's key
encryption key. Deleting an expired order's rows also destroys its data key
(crypto-shredding): copies of the rows in backups can no longer be decrypted
once the key-encryption key's holder has no copy of the data key either. A
row arriving for a shredded key is refused, so late deliveries cannot
resurrect deleted data.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Engine,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    bindparam,
    delete,
    false,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlmodel.sql.sqltypes import UTCDateTime

from qdspace.connector.agreement import (
    DeletionReceipt,
    SignedAgreement,
    SignedReceipt,
    agreement_from_bytes,
    deletion_digest_of_bytes,
    receipt_from_bytes,
)
from qdspace.connector.contract_errors import (
    ContractStoreError,
    ForeignRecordError,
    KeyShreddedError,
    NotificationQuotaError,
    UnknownContractError,
)
from qdspace.connector.negotiation import Negotiation, NegotiationState, Role
from qdspace.connector.spc import Investigation, QualityAlert, SpcAlert, SpcPoint
from qdspace.connector.transfer import (
    Checkpoint,
    RecordMeta,
    TransferProcess,
    TransferState,
    record_meta,
)
from qdspace.policies.canonical import format_datetime, parse_datetime
from qdspace.policies.codec import parse_policy, policy_to_json
from qdspace.policies.evaluate import order_in_scope
from qdspace.policies.retention import (
    DeletionDuty,
    DutyStatus,
    check_receipt_claims,
    deletion_duty,
    duty_status,
)

CONTRACT_METADATA = MetaData()
_ID = 128

negotiation_table = Table(
    "contract_negotiation",
    CONTRACT_METADATA,
    Column("negotiation_id", String(_ID), primary_key=True),
    Column("role", String(16), nullable=False),
    Column("provider_id", String(_ID), nullable=False),
    Column("consumer_id", String(_ID), nullable=False),
    Column("asset_id", String(_ID), nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("offer_json", LargeBinary, nullable=False),
    Column("agreement_id", String(_ID), nullable=True),
    Column("reason", Text, nullable=True),
    Column("message_count", Integer, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)
message_table = Table(
    "contract_message",
    CONTRACT_METADATA,
    Column("process_kind", String(16), primary_key=True),
    Column("process_id", String(_ID), primary_key=True),
    Column("message_id", String(_ID), primary_key=True),
    Column("sequence", Integer, nullable=False),
    Column("fingerprint", String(64), nullable=False),
    UniqueConstraint("process_kind", "process_id", "sequence", name="uq_contract_message_seq"),
)
agreement_table = Table(
    "contract_agreement",
    CONTRACT_METADATA,
    Column("agreement_id", String(_ID), primary_key=True),
    Column("negotiation_id", String(_ID), nullable=False),
    Column("role", String(16), nullable=False),
    Column("provider_id", String(_ID), nullable=False),
    Column("consumer_id", String(_ID), nullable=False),
    Column("asset_id", String(_ID), nullable=False),
    Column("canonical", LargeBinary, nullable=False),
    Column("provider_signature", LargeBinary, nullable=False),
    Column("consumer_signature", LargeBinary, nullable=True),
    Column("digest", String(64), nullable=False),
    Column("agreed_at", UTCDateTime(), nullable=False),
    Column("terminated_at", UTCDateTime(), nullable=True),
    Column("termination_reason", Text, nullable=True),
)
transfer_table = Table(
    "contract_transfer",
    CONTRACT_METADATA,
    Column("transfer_id", String(_ID), primary_key=True),
    Column("agreement_id", String(_ID), nullable=False, index=True),
    Column("role", String(16), nullable=False),
    Column("provider_id", String(_ID), nullable=False),
    Column("consumer_id", String(_ID), nullable=False),
    Column("state", String(16), nullable=False),
    Column("scope_json", Text, nullable=False),
    Column("cursor_offset", BigInteger, nullable=False),
    Column("cursor_digest", LargeBinary, nullable=False),
    Column("cursor_position", String(256), nullable=False),
    Column("final_offset", BigInteger, nullable=True),
    Column("final_digest", LargeBinary, nullable=True),
    Column("final_position", String(256), nullable=True),
    Column("reason", Text, nullable=True),
    Column("message_count", Integer, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)
outbox_table = Table(
    "contract_outbox",
    CONTRACT_METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("peer_id", String(_ID), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("process_id", String(_ID), nullable=False),
    Column("message_id", String(_ID), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("next_attempt_at", UTCDateTime(), nullable=False, index=True),
    Column("attempts", Integer, nullable=False),
    Column("sent_at", UTCDateTime(), nullable=True),
    Column("last_error", Text, nullable=True),
    UniqueConstraint("peer_id", "message_id", name="uq_contract_outbox_message"),
)
data_key_table = Table(
    "contract_data_key",
    CONTRACT_METADATA,
    Column("agreement_id", String(_ID), primary_key=True),
    Column("order_id", String(_ID), primary_key=True),
    Column("wrapped_key", LargeBinary, nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("destroyed_at", UTCDateTime(), nullable=True),
)
received_row_table = Table(
    "contract_received_row",
    CONTRACT_METADATA,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("agreement_id", String(_ID), nullable=False),
    Column("order_id", String(_ID), nullable=False),
    Column("source_id", String(_ID), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("nonce", LargeBinary, nullable=False),
    Column("ciphertext", LargeBinary, nullable=False),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("record_key", String(_ID), nullable=False),
    Column("version", BigInteger, nullable=False, server_default="1"),
    Column("withdrawn", Boolean, nullable=False, server_default=false()),
    UniqueConstraint("agreement_id", "record_key", name="uq_contract_received_record"),
    Index("ix_contract_received_row_source", "source_id", "seq"),
)
change_table = Table(
    "contract_received_change",
    CONTRACT_METADATA,
    Column("agreement_id", String(_ID), primary_key=True),
    Column("record_key", String(_ID), primary_key=True),
    Column("version", BigInteger, primary_key=True, autoincrement=False),
    Column("order_id", String(_ID), nullable=False),
    Column("withdrawn", Boolean, nullable=False),
    Column("content_sha256", String(64), nullable=False),
    Column("source_id", String(_ID), nullable=False),
    Column("received_at", UTCDateTime(), nullable=False),
)
closure_table = Table(
    "contract_order_closure",
    CONTRACT_METADATA,
    Column("agreement_id", String(_ID), primary_key=True),
    Column("order_id", String(_ID), primary_key=True),
    Column("closed_at", UTCDateTime(), nullable=False),
    Column("deadline", UTCDateTime(), nullable=True, index=True),
)
receipt_table = Table(
    "contract_deletion_receipt",
    CONTRACT_METADATA,
    Column("receipt_id", String(64), primary_key=True),
    Column("agreement_id", String(_ID), nullable=False),
    Column("order_id", String(_ID), nullable=False),
    Column("consumer_id", String(_ID), nullable=False),
    Column("canonical", LargeBinary, nullable=False),
    Column("signature", LargeBinary, nullable=False),
    Column("row_count", BigInteger, nullable=False),
    Column("content_sha256", String(64), nullable=False),
    Column("deleted_at", UTCDateTime(), nullable=False),
    UniqueConstraint("agreement_id", "order_id", name="uq_contract_receipt_duty"),
)
alert_table = Table(
    "contract_quality_alert",
    CONTRACT_METADATA,
    Column("sender_id", String(_ID), primary_key=True),
    Column("alert_id", String(_ID), primary_key=True),
    Column("agreement_id", String(_ID), nullable=False),
    Column("order_id", String(_ID), nullable=False),
    Column("station", String(_ID), nullable=False),
    Column("characteristic", String(_ID), nullable=False),
    Column("rule", String(16), nullable=False),
    Column("description", Text, nullable=False),
    Column("points_json", Text, nullable=False),
    Column("alert_at", UTCDateTime(), nullable=False),
    Column("received_at", UTCDateTime(), nullable=False, index=True),
)
investigation_table = Table(
    "contract_investigation",
    CONTRACT_METADATA,
    Column("sender_id", String(_ID), primary_key=True),
    Column("investigation_id", String(_ID), primary_key=True),
    Column("subject", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("batch_id", String(_ID), nullable=False),
    Column("order_id", String(_ID), nullable=False),
    Column("status", String(16), nullable=False),
    Column("received_at", UTCDateTime(), nullable=False, index=True),
)
#: What one peer may have kept here of each kind of notice (alerts, investigations):
#: a member flooding us is refused past it instead of filling the database.
MAX_RECEIVED_PER_SENDER = 10_000
_KEY_CONTEXT = b"qdspace.v1/data-key\x00"
_ROW_CONTEXT = b"qdspace.v1/received-row\x00"
_NEGOTIATION = "negotiation"
_TRANSFER = "transfer"


def ensure_schema(engine: Engine) -> None:
    """Bring the database to the newest schema, contract tables included (Alembic
    revision ``0002_contracts``; idempotent). A node's QDM database already is."""
    from qdspace.connector.storage import migrate  # the node's one migration path

    migrate(engine)


def utc_now() -> datetime:
    return datetime.now(UTC)


class ConcurrentUpdateError(ContractStoreError):
    """Someone else saved this process since it was loaded: reload and apply again."""

    grpc_status = "ABORTED"


@dataclass(frozen=True)
class OutboxMessage:
    """A protocol message to send to `peer_id`; `payload` is the node's wire encoding."""

    peer_id: str
    kind: str
    process_id: str
    message_id: str
    payload: bytes


@dataclass(frozen=True)
class PendingMessage:
    id: int
    message: OutboxMessage
    attempts: int
    created_at: datetime
    last_error: str | None


@dataclass(frozen=True)
class StoredAgreement:
    signed: SignedAgreement
    role: Role
    terminated_at: datetime | None
    termination_reason: str | None

    @property
    def agreement_id(self) -> str:
        return self.signed.agreement.agreement_id

    @property
    def active(self) -> bool:
        return self.terminated_at is None and self.signed.complete


@dataclass(frozen=True)
class IncomingRow:
    """One row received under an agreement: its canonical JSON bytes, as the chain covered."""

    seq: int
    order_id: str
    payload: bytes


@dataclass(frozen=True)
class ReceivedRow:
    """The current version of one record received under an agreement."""

    id: int
    agreement_id: str
    order_id: str
    source_id: str
    seq: int
    payload: bytes
    received_at: datetime
    record_key: str = ""
    version: int = 1

    def decode(self) -> dict[str, Any]:
        value = json.loads(self.payload)
        assert isinstance(value, dict)
        return value


@dataclass(frozen=True)
class ReceivedChange:
    """One correction (version > 1) or withdrawal of a received record: the audit trail.

    `content_sha256` is the SHA-256 of the row's bytes as they arrived (a tombstone's
    for a withdrawal); the provider's ledger anchors its own records' versions."""

    agreement_id: str
    record_key: str
    version: int
    order_id: str
    withdrawn: bool
    content_sha256: str
    source_id: str
    received_at: datetime


@dataclass(frozen=True)
class MirrorResult:
    """What one delivery did to the consumer's copy."""

    added: int = 0
    replaced: int = 0
    withdrawn: int = 0
    unchanged: int = 0

    @property
    def changed(self) -> int:
        return self.added + self.replaced + self.withdrawn


@dataclass(frozen=True)
class OrderClosure:
    agreement_id: str
    order_id: str
    closed_at: datetime
    deadline: datetime | None


@dataclass(frozen=True)
class DutyReport:
    """A provider's view of one deletion duty, with the verified receipt if any."""

    duty: DeletionDuty
    status: DutyStatus
    receipt: DeletionReceipt | None


@dataclass(frozen=True)
class Deletion:
    """What `delete_order_rows` removed: the rows' canonical bytes, for the receipt."""

    agreement_id: str
    order_id: str
    row_count: int
    content_sha256: str


def _scope_json(process: TransferProcess) -> str:
    fields = None if process.fields is None else sorted(process.fields)
    scope: dict[str, Any] = {
        "purpose": process.purpose,
        "order_id": process.order_id,
        "fields": fields,
    }
    if process.since:
        scope["since"] = process.since
    return json.dumps(scope, sort_keys=True)


def _position(process: TransferProcess) -> int:
    final = process.final
    return int(final.position) if final is not None and final.position.isdigit() else 0


class ContractStore:
    """Negotiations, agreements, transfers, outbox, received rows and deletion duties.

    `key_encryption_key` (32 bytes) wraps the per-agreement data keys; keep it
    outside the database (for example in the node's key directory).
    """

    def __init__(self, engine: Engine, key_encryption_key: bytes) -> None:
        if len(key_encryption_key) != 32:
            raise ContractStoreError("the key encryption key must be 32 bytes")
        self.engine = engine
        self._kek = AESGCM(key_encryption_key)
        self._keys: dict[tuple[str, str], AESGCM] = {}
        dialect = sqlite if engine.dialect.name == "sqlite" else postgresql
        self._upsert = dialect.insert
        self._row_sql: tuple[str, tuple[str, ...] | None] | None = None

    # ----------------------------------------------------------- messages

    def _seen(self, connection: Connection, kind: str, process_id: str) -> tuple[Any, ...]:
        rows = connection.execute(
            select(message_table.c.message_id, message_table.c.fingerprint)
            .where(message_table.c.process_kind == kind, message_table.c.process_id == process_id)
            .order_by(message_table.c.sequence)
        )
        return tuple((row.message_id, row.fingerprint) for row in rows)

    def _append_seen(
        self,
        connection: Connection,
        kind: str,
        process_id: str,
        before: Sequence[tuple[str, str]],
        after: Sequence[tuple[str, str]],
    ) -> None:
        if tuple(after[: len(before)]) != tuple(before):
            raise ContractStoreError(f"{kind} {process_id}: message history was rewritten")
        fresh = [
            {
                "process_kind": kind,
                "process_id": process_id,
                "message_id": message_id,
                "sequence": index,
                "fingerprint": fingerprint,
            }
            for index, (message_id, fingerprint) in enumerate(after)
            if index >= len(before)
        ]
        if fresh:
            connection.execute(insert(message_table), fresh)

    # -------------------------------------------------------- negotiations

    def save_negotiation(
        self,
        before: Negotiation | None,
        after: Negotiation,
        outbox: Iterable[OutboxMessage] = (),
    ) -> None:
        """Persist `after` (loaded as `before`, None when new) and queue `outbox`, atomically."""
        values = {
            "role": after.role.value,
            "provider_id": after.provider_id,
            "consumer_id": after.consumer_id,
            "asset_id": after.asset_id,
            "state": after.state.value,
            "offer_json": policy_to_json(after.offer),
            "agreement_id": None
            if after.agreement is None
            else after.agreement.agreement.agreement_id,
            "reason": after.reason,
            "message_count": len(after.seen),
            "created_at": after.created_at,
            "updated_at": after.updated_at,
        }
        table = negotiation_table
        try:
            with self.engine.begin() as connection:
                if before is None:
                    connection.execute(
                        insert(table).values(negotiation_id=after.negotiation_id, **values)
                    )
                else:
                    result = connection.execute(
                        update(table)
                        .where(
                            table.c.negotiation_id == after.negotiation_id,
                            table.c.message_count == len(before.seen),
                        )
                        .values(**values)
                    )
                    if result.rowcount != 1:
                        raise ConcurrentUpdateError(
                            f"negotiation {after.negotiation_id} changed since it was loaded"
                        )
                seen = () if before is None else before.seen
                self._append_seen(connection, _NEGOTIATION, after.negotiation_id, seen, after.seen)
                if after.agreement is not None:
                    self._put_agreement(connection, after.agreement, after.role)
                self._enqueue(connection, outbox, after.updated_at)
        except IntegrityError:
            raise ConcurrentUpdateError(
                f"negotiation {after.negotiation_id} was saved concurrently"
            ) from None

    def load_negotiation(self, negotiation_id: str) -> Negotiation:
        table = negotiation_table
        with self.engine.connect() as connection:
            row = connection.execute(
                select(table).where(table.c.negotiation_id == negotiation_id)
            ).first()
            if row is None:
                raise UnknownContractError(f"no negotiation {negotiation_id} here")
            seen = self._seen(connection, _NEGOTIATION, negotiation_id)
            signed = None
            if row.agreement_id is not None:
                signed = self._get_agreement(connection, row.agreement_id).signed
        return Negotiation(
            negotiation_id=row.negotiation_id,
            role=Role(row.role),
            provider_id=row.provider_id,
            consumer_id=row.consumer_id,
            asset_id=row.asset_id,
            state=NegotiationState(row.state),
            offer=parse_policy(row.offer_json),
            created_at=row.created_at,
            updated_at=row.updated_at,
            agreement=signed,
            reason=row.reason,
            seen=seen,
        )

    def find_negotiation(self, negotiation_id: str) -> Negotiation | None:
        try:
            return self.load_negotiation(negotiation_id)
        except UnknownContractError:
            return None

    def update_negotiation(
        self,
        negotiation_id: str,
        step: Callable[[Negotiation], tuple[Negotiation, Sequence[OutboxMessage]]],
        *,
        attempts: int = 3,
    ) -> Negotiation:
        """Load, apply `step`, save by compare-and-set; retried on a concurrent update."""
        for attempt in range(attempts):
            before = self.load_negotiation(negotiation_id)
            after, outbox = step(before)
            if after == before and not outbox:
                return after
            try:
                self.save_negotiation(before, after, outbox)
                return after
            except ConcurrentUpdateError:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def negotiations(self, state: NegotiationState | None = None) -> list[Negotiation]:
        table = negotiation_table
        statement = select(table.c.negotiation_id).order_by(table.c.created_at)
        if state is not None:
            statement = statement.where(table.c.state == state.value)
        with self.engine.connect() as connection:
            ids = list(connection.execute(statement).scalars())
        return [self.load_negotiation(i) for i in ids]

    # ---------------------------------------------------------- agreements

    def _put_agreement(self, connection: Connection, signed: SignedAgreement, role: Role) -> None:
        terms = signed.agreement
        table = agreement_table
        existing = connection.execute(
            select(table.c.canonical, table.c.consumer_signature).where(
                table.c.agreement_id == terms.agreement_id
            )
        ).first()
        if existing is None:
            connection.execute(
                insert(table).values(
                    agreement_id=terms.agreement_id,
                    negotiation_id=terms.negotiation_id,
                    role=role.value,
                    provider_id=terms.provider_id,
                    consumer_id=terms.consumer_id,
                    asset_id=terms.asset_id,
                    canonical=signed.canonical_bytes,
                    provider_signature=signed.provider_signature,
                    consumer_signature=signed.consumer_signature,
                    digest=terms.digest().hex(),
                    agreed_at=terms.agreed_at,
                )
            )
            return
        if bytes(existing.canonical) != signed.canonical_bytes:
            raise ContractStoreError(f"agreement {terms.agreement_id} exists with other terms")
        if existing.consumer_signature is None and signed.consumer_signature is not None:
            connection.execute(
                update(table)
                .where(table.c.agreement_id == terms.agreement_id)
                .values(consumer_signature=signed.consumer_signature)
            )

    def save_agreement(self, signed: SignedAgreement, role: Role) -> None:
        """Store a (verified) agreement; a later call may add the consumer's signature."""
        with self.engine.begin() as connection:
            self._put_agreement(connection, signed, role)

    def _get_agreement(self, connection: Connection, agreement_id: str) -> StoredAgreement:
        row = connection.execute(
            select(agreement_table).where(agreement_table.c.agreement_id == agreement_id)
        ).first()
        if row is None:
            raise UnknownContractError(f"no agreement {agreement_id} here")
        consumer_signature = (
            None if row.consumer_signature is None else bytes(row.consumer_signature)
        )
        signed = SignedAgreement(
            agreement_from_bytes(bytes(row.canonical)),
            bytes(row.provider_signature),
            consumer_signature,
        )
        return StoredAgreement(signed, Role(row.role), row.terminated_at, row.termination_reason)

    def agreement(self, agreement_id: str) -> StoredAgreement:
        with self.engine.connect() as connection:
            return self._get_agreement(connection, agreement_id)

    def agreements(self, role: Role | None = None) -> list[StoredAgreement]:
        table = agreement_table
        statement = select(table.c.agreement_id).order_by(table.c.agreed_at, table.c.agreement_id)
        if role is not None:
            statement = statement.where(table.c.role == role.value)
        with self.engine.connect() as connection:
            ids = list(connection.execute(statement).scalars())
            return [self._get_agreement(connection, i) for i in ids]

    def terminate_agreement(self, agreement_id: str, reason: str, at: datetime) -> StoredAgreement:
        """Mark an agreement terminated (idempotent: the first termination stands)."""
        table = agreement_table
        with self.engine.begin() as connection:
            self._get_agreement(connection, agreement_id)
            connection.execute(
                update(table)
                .where(table.c.agreement_id == agreement_id, table.c.terminated_at.is_(None))
                .values(terminated_at=at, termination_reason=reason)
            )
            return self._get_agreement(connection, agreement_id)

    # ----------------------------------------------------------- transfers

    def _transfer_values(self, process: TransferProcess) -> dict[str, Any]:
        final = process.final
        return {
            "agreement_id": process.agreement_id,
            "role": process.role.value,
            "provider_id": process.provider_id,
            "consumer_id": process.consumer_id,
            "state": process.state.value,
            "scope_json": _scope_json(process),
            "cursor_offset": process.checkpoint.offset,
            "cursor_digest": process.checkpoint.digest,
            "cursor_position": process.checkpoint.position,
            "final_offset": None if final is None else final.offset,
            "final_digest": None if final is None else final.digest,
            "final_position": None if final is None else final.position,
            "reason": process.reason,
            "message_count": len(process.seen),
            "created_at": process.created_at,
            "updated_at": process.updated_at,
        }

    def _save_transfer(
        self, connection: Connection, before: TransferProcess | None, after: TransferProcess
    ) -> None:
        table = transfer_table
        values = self._transfer_values(after)
        if before is None:
            connection.execute(insert(table).values(transfer_id=after.transfer_id, **values))
        else:
            result = connection.execute(
                update(table)
                .where(
                    table.c.transfer_id == after.transfer_id,
                    table.c.message_count == len(before.seen),
                    table.c.cursor_offset == before.checkpoint.offset,
                )
                .values(**values)
            )
            if result.rowcount != 1:
                raise ConcurrentUpdateError(
                    f"transfer {after.transfer_id} changed since it was loaded"
                )
        seen = () if before is None else before.seen
        self._append_seen(connection, _TRANSFER, after.transfer_id, seen, after.seen)

    def save_transfer(
        self,
        before: TransferProcess | None,
        after: TransferProcess,
        outbox: Iterable[OutboxMessage] = (),
    ) -> None:
        """Persist `after` (loaded as `before`, None when new) and queue `outbox`, atomically."""
        try:
            with self.engine.begin() as connection:
                self._save_transfer(connection, before, after)
                self._enqueue(connection, outbox, after.updated_at)
        except IntegrityError:
            raise ConcurrentUpdateError(
                f"transfer {after.transfer_id} was saved concurrently"
            ) from None

    def load_transfer(self, transfer_id: str) -> TransferProcess:
        table = transfer_table
        with self.engine.connect() as connection:
            row = connection.execute(
                select(table).where(table.c.transfer_id == transfer_id)
            ).first()
            if row is None:
                raise UnknownContractError(f"no transfer {transfer_id} here")
            seen = self._seen(connection, _TRANSFER, transfer_id)
        scope = json.loads(row.scope_json)
        final = None
        if row.final_offset is not None:
            final = Checkpoint(row.final_offset, bytes(row.final_digest), row.final_position)
        return TransferProcess(
            transfer_id=row.transfer_id,
            agreement_id=row.agreement_id,
            role=Role(row.role),
            provider_id=row.provider_id,
            consumer_id=row.consumer_id,
            state=TransferState(row.state),
            checkpoint=Checkpoint(row.cursor_offset, bytes(row.cursor_digest), row.cursor_position),
            created_at=row.created_at,
            updated_at=row.updated_at,
            final=final,
            reason=row.reason,
            seen=seen,
            purpose=scope["purpose"],
            order_id=scope["order_id"],
            fields=None if scope["fields"] is None else frozenset(scope["fields"]),
            since=scope.get("since", ""),
        )

    def find_transfer(self, transfer_id: str) -> TransferProcess | None:
        try:
            return self.load_transfer(transfer_id)
        except UnknownContractError:
            return None

    def transfers(self, agreement_id: str | None = None) -> list[TransferProcess]:
        table = transfer_table
        statement = select(table.c.transfer_id).order_by(table.c.created_at)
        if agreement_id is not None:
            statement = statement.where(table.c.agreement_id == agreement_id)
        with self.engine.connect() as connection:
            ids = list(connection.execute(statement).scalars())
        return [self.load_transfer(i) for i in ids]

    # -------------------------------------------------------------- outbox

    def _enqueue(
        self, connection: Connection, messages: Iterable[OutboxMessage], at: datetime
    ) -> None:
        rows = [
            {
                "peer_id": m.peer_id,
                "kind": m.kind,
                "process_id": m.process_id,
                "message_id": m.message_id,
                "payload": m.payload,
                "created_at": at,
                "next_attempt_at": at,
                "attempts": 0,
            }
            for m in messages
        ]
        if rows:
            statement = self._upsert(outbox_table).on_conflict_do_nothing(
                index_elements=["peer_id", "message_id"]
            )
            connection.execute(statement, rows)

    def enqueue(self, messages: Iterable[OutboxMessage], at: datetime) -> None:
        """Queue messages (a message id already queued for that peer is ignored)."""
        with self.engine.begin() as connection:
            self._enqueue(connection, messages, at)

    def due_messages(self, now: datetime, limit: int = 100) -> list[PendingMessage]:
        """Unsent messages whose next attempt is due, oldest first."""
        table = outbox_table
        statement = (
            select(table)
            .where(table.c.sent_at.is_(None), table.c.next_attempt_at <= now)
            .order_by(table.c.id)
            .limit(limit)
        )
        with self.engine.connect() as connection:
            rows = connection.execute(statement).all()
        return [
            PendingMessage(
                id=row.id,
                message=OutboxMessage(
                    row.peer_id, row.kind, row.process_id, row.message_id, bytes(row.payload)
                ),
                attempts=row.attempts,
                created_at=row.created_at,
                last_error=row.last_error,
            )
            for row in rows
        ]

    def mark_sent(self, message_id: int, at: datetime) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(outbox_table)
                .where(outbox_table.c.id == message_id)
                .values(sent_at=at, attempts=outbox_table.c.attempts + 1)
            )

    def mark_failed(self, message_id: int, error: str, retry_at: datetime) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(outbox_table)
                .where(outbox_table.c.id == message_id)
                .values(
                    last_error=error[:2000],
                    next_attempt_at=retry_at,
                    attempts=outbox_table.c.attempts + 1,
                )
            )

    # -------------------------------------------------------- received rows

    def _data_key(
        self, connection: Connection, agreement_id: str, order_id: str, create: bool, at: datetime
    ) -> AESGCM:
        """The data key of (agreement, order), created on first use when `create`.

        Only keys that were committed before this transaction are cached, so a
        rolled-back transaction never leaves a key behind that the database lacks.
        """
        cached = self._keys.get((agreement_id, order_id))
        if cached is not None:
            return cached
        table = data_key_table
        where = and_(table.c.agreement_id == agreement_id, table.c.order_id == order_id)
        row = connection.execute(select(table).where(where)).first()
        aad = _KEY_CONTEXT + f"{agreement_id}\x00{order_id}".encode()
        committed = row is not None
        if row is None:
            if not create:
                raise KeyShreddedError(f"no data key for agreement {agreement_id}, {order_id!r}")
            nonce = os.urandom(12)
            wrapped = nonce + self._kek.encrypt(nonce, AESGCM.generate_key(bit_length=256), aad)
            values = {"agreement_id": agreement_id, "order_id": order_id, "created_at": at}
            connection.execute(
                self._upsert(table)
                .values(wrapped_key=wrapped, **values)
                .on_conflict_do_nothing(index_elements=["agreement_id", "order_id"])
            )
            row = connection.execute(select(table).where(where)).one()
        if row.wrapped_key is None:
            raise KeyShreddedError(
                f"the data of agreement {agreement_id}, order {order_id!r} was deleted "
                f"at {row.destroyed_at.isoformat()}; its key is destroyed"
            )
        stored = bytes(row.wrapped_key)
        try:
            cipher = AESGCM(self._kek.decrypt(stored[:12], stored[12:], aad))
        except InvalidTag:
            raise ContractStoreError(
                f"data key of agreement {agreement_id} does not open with this node's key"
            ) from None
        if committed:
            self._keys[(agreement_id, order_id)] = cipher
        return cipher

    @staticmethod
    def _row_aad(agreement_id: str, order_id: str, source_id: str, seq: int) -> bytes:
        return _ROW_CONTEXT + f"{agreement_id}\x00{order_id}\x00{source_id}\x00{seq}".encode()

    _ROW_COLUMNS = (
        "agreement_id",
        "order_id",
        "source_id",
        "seq",
        "nonce",
        "ciphertext",
        "received_at",
        "record_key",
        "version",
        "withdrawn",
    )
    _REPLACED_COLUMNS = _ROW_COLUMNS[1:]

    def _row_upsert(self) -> tuple[str, tuple[str, ...] | None]:
        """The driver SQL of the received-row upsert and, for a positional driver, the
        order of its parameters (compiled once; a page is one executemany): a record
        not held is inserted, one held is replaced only by a higher version."""
        if self._row_sql is None:
            table = received_row_table
            statement = self._upsert(table).values(
                {name: bindparam(name) for name in self._ROW_COLUMNS}
            )
            excluded = statement.excluded
            statement = statement.on_conflict_do_update(
                index_elements=["agreement_id", "record_key"],
                set_={name: excluded[name] for name in self._REPLACED_COLUMNS},
                where=table.c.version < excluded.version,
            )
            compiled = statement.compile(dialect=self.engine.dialect)
            order = tuple(compiled.positiontup or ()) if compiled.positional else None
            self._row_sql = (compiled.string, order)
        return self._row_sql

    def _check_orders(
        self, connection: Connection, agreement_id: str, rows: Sequence[IncomingRow]
    ) -> None:
        """Every row, and every tombstone, must be of an order the agreement covers."""
        stored = self._get_agreement(connection, agreement_id)
        if stored.role is not Role.CONSUMER:
            raise ForeignRecordError(f"agreement {agreement_id}: we are not its consumer")
        policy = stored.signed.agreement.policy
        for order in {row.order_id for row in rows}:
            if not order_in_scope(policy, order):
                raise ForeignRecordError(
                    f"agreement {agreement_id} does not cover order {order!r}: its rows are refused"
                )

    def _held(
        self, connection: Connection, agreement_id: str, keys: Sequence[str]
    ) -> dict[str, tuple[int, bool]]:
        """record key -> (version, withdrawn) of the records of `keys` held now (one
        indexed lookup per chunk, in the driver's SQL: this runs for every batch)."""
        mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        held: dict[str, tuple[int, bool]] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            sql = (
                "SELECT record_key, version, withdrawn FROM contract_received_row "
                f"WHERE agreement_id = {mark} AND record_key IN ({', '.join([mark] * len(chunk))})"
            )
            for key, version, withdrawn in connection.exec_driver_sql(sql, (agreement_id, *chunk)):
                held[key] = (int(version), bool(withdrawn))
        return held

    def _store_rows(
        self,
        connection: Connection,
        agreement_id: str,
        source_id: str,
        rows: Sequence[IncomingRow],
        at: datetime,
    ) -> MirrorResult:
        if not rows:
            return MirrorResult()
        metas = [record_meta(row.payload) for row in rows]
        self._check_orders(connection, agreement_id, rows)
        held = self._held(connection, agreement_id, [m.key for m in metas])
        dialect = self.engine.dialect
        stamp = received_row_table.c.received_at.type.dialect_impl(dialect).bind_processor(dialect)
        received_at: Any = stamp(at) if stamp is not None else at
        nonces = os.urandom(12 * len(rows))
        records, changes = [], []
        added = replaced = withdrawn = unchanged = 0
        for index, (row, meta) in enumerate(zip(rows, metas, strict=True)):
            before = held.get(meta.key)
            if before is not None and before[0] >= meta.version:
                unchanged += 1  # a copy of what is held, or older
                continue
            held[meta.key] = (meta.version, meta.withdrawn)
            if meta.withdrawn:
                withdrawn += before is not None and not before[1]
                unchanged += before is None or before[1]
                nonce, ciphertext = b"", b""  # a tombstone holds nothing to encrypt
            else:
                cipher = self._data_key(connection, agreement_id, row.order_id, True, at)
                nonce = nonces[12 * index : 12 * index + 12]
                aad = self._row_aad(agreement_id, row.order_id, source_id, row.seq)
                ciphertext = cipher.encrypt(nonce, row.payload, aad)
                if before is None or before[1]:
                    added += 1
                else:
                    replaced += 1
            records.append(
                {
                    "agreement_id": agreement_id,
                    "order_id": row.order_id,
                    "source_id": source_id,
                    "seq": row.seq,
                    "nonce": nonce,
                    "ciphertext": ciphertext,
                    "received_at": received_at,
                    "record_key": meta.key,
                    "version": meta.version,
                    "withdrawn": meta.withdrawn,
                }
            )
            if meta.version > 1 or meta.withdrawn:
                changes.append(self._change(agreement_id, source_id, row, meta, at))
        if records:
            sql, order = self._row_upsert()
            params: list[Any] = records if order is None else list(map(itemgetter(*order), records))
            connection.exec_driver_sql(sql, params)
        if changes:
            connection.execute(
                self._upsert(change_table)
                .values(changes)
                .on_conflict_do_nothing(index_elements=["agreement_id", "record_key", "version"])
            )
        return MirrorResult(added, replaced, withdrawn, unchanged)

    @staticmethod
    def _change(
        agreement_id: str, source_id: str, row: IncomingRow, meta: RecordMeta, at: datetime
    ) -> dict[str, Any]:
        return {
            "agreement_id": agreement_id,
            "record_key": meta.key,
            "version": meta.version,
            "order_id": row.order_id,
            "withdrawn": meta.withdrawn,
            "content_sha256": hashlib.sha256(row.payload).hexdigest(),
            "source_id": source_id,
            "received_at": at,
        }

    def store_received_rows(
        self, agreement_id: str, source_id: str, rows: Iterable[IncomingRow], at: datetime
    ) -> MirrorResult:
        """Mirror rows of a live stream (seq = provider cursor) into the copy held under
        the agreement: new records are added, later versions replace, tombstones
        withdraw; anything already held (a re-delivery, a record seen on a pull) is not
        stored again."""
        with self.engine.begin() as connection:
            return self._store_rows(connection, agreement_id, source_id, list(rows), at)

    def commit_transfer_batch(
        self,
        before: TransferProcess,
        after: TransferProcess,
        rows: Sequence[IncomingRow],
        at: datetime,
    ) -> MirrorResult:
        """Mirror a verified batch and save the consumer's advanced cursor in one transaction.

        The seq of each row must be its offset in the transfer. A batch committed twice
        (a crash between commit and acknowledgement) changes nothing the second time, and
        a crash before commit leaves the cursor where the rows stop.
        """
        expected = range(before.checkpoint.offset, after.checkpoint.offset)
        if [row.seq for row in rows] != list(expected):
            raise ContractStoreError(
                f"transfer {after.transfer_id}: batch rows must have seq "
                f"{before.checkpoint.offset}..{after.checkpoint.offset - 1}"
            )
        try:
            with self.engine.begin() as connection:
                result = self._store_rows(
                    connection, after.agreement_id, after.transfer_id, rows, at
                )
                self._save_transfer(connection, before, after)
        except IntegrityError:
            raise ConcurrentUpdateError(
                f"transfer {after.transfer_id} was saved concurrently"
            ) from None
        return result

    def last_completed_pull(
        self,
        agreement_id: str,
        order_id: str | None,
        fields: frozenset[str] | None,
        purpose: str | None,
    ) -> TransferProcess | None:
        """The consumer's latest completed pull of exactly this scope (its final position is
        the watermark an incremental pull continues from), None when there is none."""
        latest: TransferProcess | None = None
        for process in self.transfers(agreement_id):
            if (
                process.role is Role.CONSUMER
                and process.state is TransferState.COMPLETED
                and process.final is not None
                and (process.order_id, process.fields, process.purpose)
                == (order_id, fields, purpose)
                and (latest is None or _position(process) >= _position(latest))
            ):
                latest = process
        return latest

    def received_changes(
        self, agreement_id: str | None = None, record_key: str | None = None
    ) -> list[ReceivedChange]:
        """The audit trail of corrections and withdrawals received, oldest first."""
        table = change_table
        statement = select(table).order_by(table.c.received_at, table.c.version)
        if agreement_id is not None:
            statement = statement.where(table.c.agreement_id == agreement_id)
        if record_key is not None:
            statement = statement.where(table.c.record_key == record_key)
        with self.engine.connect() as connection:
            found = connection.execute(statement).all()
        return [
            ReceivedChange(
                r.agreement_id,
                r.record_key,
                int(r.version),
                r.order_id,
                bool(r.withdrawn),
                r.content_sha256,
                r.source_id,
                r.received_at,
            )
            for r in found
        ]

    def last_received_seq(self, source_id: str) -> int | None:
        """The highest seq stored for a stream (its resume cursor), None when nothing yet."""
        with self.engine.connect() as connection:
            value = connection.execute(
                select(func.max(received_row_table.c.seq)).where(
                    received_row_table.c.source_id == source_id
                )
            ).scalar_one()
        return None if value is None else int(value)

    def _decrypt(self, connection: Connection, row: Any, at: datetime) -> ReceivedRow:
        cipher = self._data_key(connection, row.agreement_id, row.order_id, False, at)
        aad = self._row_aad(row.agreement_id, row.order_id, row.source_id, row.seq)
        try:
            payload = cipher.decrypt(bytes(row.nonce), bytes(row.ciphertext), aad)
        except InvalidTag:
            raise ContractStoreError(
                f"received row {row.source_id}#{row.seq} fails its integrity check"
            ) from None
        return ReceivedRow(
            int(row.id),
            row.agreement_id,
            row.order_id,
            row.source_id,
            int(row.seq),
            payload,
            row.received_at,
            row.record_key,
            int(row.version),
        )

    def received_rows(
        self,
        agreement_id: str,
        order_id: str | None = None,
        *,
        after_id: int = 0,
        limit: int | None = None,
    ) -> list[ReceivedRow]:
        """The records held under an agreement (of one order), decrypted, each once in its
        current version (withdrawn ones are not held); page with `after_id` (the `id` of
        the last row seen) and `limit`."""
        table = received_row_table
        statement = select(table).where(
            table.c.agreement_id == agreement_id,
            table.c.id > after_id,
            table.c.withdrawn == false(),
        )
        if order_id is not None:
            statement = statement.where(table.c.order_id == order_id)
        with self.engine.connect() as connection:
            records = connection.execute(statement.order_by(table.c.id).limit(limit)).all()
            now = utc_now()
            return [self._decrypt(connection, record, now) for record in records]

    def count_received(self, agreement_id: str | None = None) -> int:
        """How many records are held (each once, withdrawn ones not)."""
        statement = (
            select(func.count())
            .select_from(received_row_table)
            .where(received_row_table.c.withdrawn == false())
        )
        if agreement_id is not None:
            statement = statement.where(received_row_table.c.agreement_id == agreement_id)
        with self.engine.connect() as connection:
            return int(connection.execute(statement).scalar_one())

    # ------------------------------------------------- closures and deletion

    def record_order_closed(
        self, agreement_id: str, order_id: str, closed_at: datetime
    ) -> OrderClosure:
        """Record that the provider closed `order_id` (idempotent: the first time stands)."""
        with self.engine.begin() as connection:
            stored = self._get_agreement(connection, agreement_id)
            duty = deletion_duty(stored.signed.agreement.policy, closed_at, order_id)
            deadline = None if duty is None else duty.deadline
            statement = self._upsert(closure_table).on_conflict_do_nothing(
                index_elements=["agreement_id", "order_id"]
            )
            connection.execute(
                statement.values(
                    agreement_id=agreement_id,
                    order_id=order_id,
                    closed_at=closed_at,
                    deadline=deadline,
                )
            )
        closure = self.closure(agreement_id, order_id)
        assert closure is not None
        return closure

    def close_order(self, provider_id: str, order_id: str, closed_at: datetime) -> list[str]:
        """Provider side: record the closure for every agreement it gave whose scope covers
        the order; returns those agreement ids (their consumers must be told)."""
        concerned = [
            stored.agreement_id
            for stored in self.agreements(Role.PROVIDER)
            if stored.signed.agreement.provider_id == provider_id
            and stored.signed.complete
            and order_in_scope(stored.signed.agreement.policy, order_id)
        ]
        for agreement_id in concerned:
            self.record_order_closed(agreement_id, order_id, closed_at)
        return concerned

    def closure(self, agreement_id: str, order_id: str) -> OrderClosure | None:
        table = closure_table
        with self.engine.connect() as connection:
            row = connection.execute(
                select(table).where(
                    table.c.agreement_id == agreement_id, table.c.order_id == order_id
                )
            ).first()
        if row is None:
            return None
        return OrderClosure(row.agreement_id, row.order_id, row.closed_at, row.deadline)

    def closures(self, agreement_id: str | None = None) -> list[OrderClosure]:
        table = closure_table
        statement = select(table).order_by(table.c.agreement_id, table.c.order_id)
        if agreement_id is not None:
            statement = statement.where(table.c.agreement_id == agreement_id)
        with self.engine.connect() as connection:
            rows = connection.execute(statement).all()
        return [OrderClosure(r.agreement_id, r.order_id, r.closed_at, r.deadline) for r in rows]

    def closed_orders(self, agreement_id: str) -> dict[str, datetime]:
        """order id -> close time, for the policy gate (`closed_orders=`)."""
        return {c.order_id: c.closed_at for c in self.closures(agreement_id)}

    def expired_closures(self, now: datetime) -> list[OrderClosure]:
        """Consumer side: closures past their deadline that have no receipt yet."""
        table = closure_table
        receipts = select(receipt_table.c.agreement_id, receipt_table.c.order_id).where(
            receipt_table.c.agreement_id == table.c.agreement_id,
            receipt_table.c.order_id == table.c.order_id,
        )
        statement = (
            select(table)
            .join(agreement_table, agreement_table.c.agreement_id == table.c.agreement_id)
            .where(
                agreement_table.c.role == Role.CONSUMER.value,
                table.c.deadline.is_not(None),
                table.c.deadline <= now,
                ~receipts.exists(),
            )
            .order_by(table.c.deadline, table.c.agreement_id, table.c.order_id)
        )
        with self.engine.connect() as connection:
            rows = connection.execute(statement).all()
        return [OrderClosure(r.agreement_id, r.order_id, r.closed_at, r.deadline) for r in rows]

    def shred(
        self,
        agreement_id: str,
        order_id: str,
        at: datetime,
        make_receipt: Callable[[Deletion], tuple[SignedReceipt, Sequence[OutboxMessage]]],
    ) -> SignedReceipt:
        """Delete the rows of one order under one agreement, destroy their data key, and
        store the signed receipt `make_receipt` builds, all in one transaction.

        The receipt covers exactly the records held (current versions; tombstones hold
        nothing); tombstones and the audit trail of the order go with them."""
        table = received_row_table
        where = and_(table.c.agreement_id == agreement_id, table.c.order_id == order_id)
        with self.engine.begin() as connection:
            held = and_(where, table.c.withdrawn == false())
            records = connection.execute(select(table).where(held).order_by(table.c.id)).all()
            payloads = []
            if records:
                payloads = [self._decrypt(connection, r, at).payload for r in records]
            count, digest = deletion_digest_of_bytes(payloads)
            connection.execute(delete(table).where(where))
            connection.execute(
                delete(change_table).where(
                    change_table.c.agreement_id == agreement_id,
                    change_table.c.order_id == order_id,
                )
            )
            self._destroy_key(connection, agreement_id, order_id, at)
            signed, outbox = make_receipt(Deletion(agreement_id, order_id, count, digest))
            receipt = signed.receipt
            if (receipt.agreement_id, receipt.order_id, receipt.row_count) != (
                agreement_id,
                order_id,
                count,
            ) or receipt.content_sha256 != digest:
                raise ContractStoreError("the receipt does not describe what was deleted")
            self._put_receipt(connection, signed)
            self._enqueue(connection, outbox, at)
        return signed

    def _destroy_key(
        self, connection: Connection, agreement_id: str, order_id: str, at: datetime
    ) -> None:
        self._keys.pop((agreement_id, order_id), None)
        table = data_key_table
        values = {"wrapped_key": None, "destroyed_at": at}
        statement = self._upsert(table).values(
            agreement_id=agreement_id, order_id=order_id, created_at=at, **values
        )
        connection.execute(
            statement.on_conflict_do_update(
                index_elements=["agreement_id", "order_id"], set_=values
            )
        )

    def key_destroyed(self, agreement_id: str, order_id: str) -> bool:
        table = data_key_table
        with self.engine.connect() as connection:
            row = connection.execute(
                select(table.c.wrapped_key).where(
                    table.c.agreement_id == agreement_id, table.c.order_id == order_id
                )
            ).first()
        return row is not None and row.wrapped_key is None

    # ------------------------------------------------------ received alerts

    def record_alert(self, sender_id: str, notice: QualityAlert, at: datetime) -> bool:
        """Keep an SPC alert a peer sent us; False when it was kept before (a retry)."""
        alert = notice.alert
        points = [
            {"index": p.index, "value": p.value, "at": format_datetime(p.at)} for p in alert.points
        ]
        return self._keep_once(
            alert_table,
            sender_id,
            alert_table.c.alert_id == notice.alert_id,
            {
                "alert_id": notice.alert_id,
                "agreement_id": notice.agreement_id,
                "order_id": notice.order_id,
                "station": notice.station,
                "characteristic": notice.characteristic,
                "rule": alert.rule,
                "description": alert.description,
                "points_json": json.dumps(points),
                "alert_at": alert.at,
                "received_at": at,
            },
        )

    def _keep_once(self, table: Table, sender_id: str, same: Any, values: dict[str, Any]) -> bool:
        """Insert one entry a peer sent, unless kept before (`same` names it among the
        sender's); each sender may keep at most `MAX_RECEIVED_PER_SENDER` in `table`."""
        mine = table.c.sender_id == sender_id
        with self.engine.begin() as connection:
            if connection.execute(select(func.count()).where(mine, same)).scalar_one():
                return False
            held = connection.execute(select(func.count()).where(mine)).scalar_one()
            if held >= MAX_RECEIVED_PER_SENDER:
                raise NotificationQuotaError(
                    f"{sender_id} already has {held} {table.name} entries kept here "
                    f"(limit {MAX_RECEIVED_PER_SENDER})"
                )
            connection.execute(
                self._upsert(table).values(sender_id=sender_id, **values).on_conflict_do_nothing()
            )
        return True

    def record_investigation(self, sender_id: str, case: Investigation, at: datetime) -> bool:
        """Keep an investigation a peer opened with us; False when kept before (a retry)."""
        table = investigation_table
        return self._keep_once(
            table,
            sender_id,
            table.c.investigation_id == case.investigation_id,
            {
                "investigation_id": case.investigation_id,
                "subject": case.subject,
                "description": case.description,
                "batch_id": case.batch_id,
                "order_id": case.order_id,
                "status": case.status,
                "received_at": at,
            },
        )

    def received_investigations(self, sender_id: str | None = None) -> list[Investigation]:
        """The investigations peers opened with us (of one sender), in the order they came."""
        table = investigation_table
        statement = select(table).order_by(table.c.received_at, table.c.investigation_id)
        if sender_id is not None:
            statement = statement.where(table.c.sender_id == sender_id)
        with self.engine.connect() as connection:
            rows = connection.execute(statement).all()
        return [
            Investigation(
                row.investigation_id,
                row.subject,
                row.description,
                row.batch_id,
                row.order_id,
                row.status,
            )
            for row in rows
        ]

    def received_alerts(self, sender_id: str | None = None) -> list[QualityAlert]:
        """The SPC alerts peers sent us (of one sender), in the order they arrived."""
        table = alert_table
        statement = select(table).order_by(table.c.received_at, table.c.alert_id)
        if sender_id is not None:
            statement = statement.where(table.c.sender_id == sender_id)
        with self.engine.connect() as connection:
            rows = connection.execute(statement).all()
        return [
            QualityAlert(
                alert_id=row.alert_id,
                alert=SpcAlert(
                    row.rule,
                    row.description,
                    tuple(
                        SpcPoint(p["index"], p["value"], parse_datetime(p["at"]))
                        for p in json.loads(row.points_json)
                    ),
                    row.alert_at,
                ),
                agreement_id=row.agreement_id,
                order_id=row.order_id,
                station=row.station,
                characteristic=row.characteristic,
            )
            for row in rows
        ]

    # --------------------------------------------------------------- receipts

    def _put_receipt(self, connection: Connection, signed: SignedReceipt) -> None:
        receipt = signed.receipt
        statement = self._upsert(receipt_table).on_conflict_do_nothing()
        connection.execute(
            statement.values(
                receipt_id=receipt.receipt_id,
                agreement_id=receipt.agreement_id,
                order_id=receipt.order_id,
                consumer_id=receipt.consumer_id,
                canonical=receipt.canonical_bytes(),
                signature=signed.signature,
                row_count=receipt.row_count,
                content_sha256=receipt.content_sha256,
                deleted_at=receipt.deleted_at,
            )
        )

    def record_receipt(self, signed: SignedReceipt) -> None:
        """Provider side: store a receipt whose signature the caller verified; it must
        answer a recorded duty (an agreement given, an order closed)."""
        receipt = signed.receipt
        with self.engine.begin() as connection:
            stored = self._get_agreement(connection, receipt.agreement_id)
            closure = connection.execute(
                select(closure_table).where(
                    closure_table.c.agreement_id == receipt.agreement_id,
                    closure_table.c.order_id == receipt.order_id,
                )
            ).first()
            duty = deletion_duty(
                stored.signed.agreement.policy,
                None if closure is None else closure.closed_at,
                receipt.order_id,
            )
            if duty is None:
                raise ContractStoreError(f"agreement {receipt.agreement_id} has no delete duty")
            check_receipt_claims(
                duty,
                agreement_id=receipt.agreement_id,
                consumer_id=receipt.consumer_id,
                row_count=receipt.row_count,
                content_sha256=receipt.content_sha256,
                order_id=receipt.order_id,
            )
            self._put_receipt(connection, signed)

    def receipts(self, agreement_id: str | None = None) -> list[SignedReceipt]:
        table = receipt_table
        statement = select(table).order_by(table.c.deleted_at, table.c.receipt_id)
        if agreement_id is not None:
            statement = statement.where(table.c.agreement_id == agreement_id)
        with self.engine.connect() as connection:
            rows = connection.execute(statement).all()
        return [
            SignedReceipt(receipt_from_bytes(bytes(r.canonical)), bytes(r.signature)) for r in rows
        ]

    def deletion_duties(self, now: datetime) -> list[DutyReport]:
        """Provider side: every deletion duty of the agreements it gave, with its status.

        An agreement none of whose orders has closed yet shows as one PENDING duty.
        """
        receipts = {
            (s.receipt.agreement_id, s.receipt.order_id): s.receipt for s in self.receipts()
        }
        closures: dict[str, list[OrderClosure]] = {}
        for closure in self.closures():
            closures.setdefault(closure.agreement_id, []).append(closure)
        reports = []
        for stored in self.agreements(Role.PROVIDER):
            policy = stored.signed.agreement.policy
            closed: list[tuple[str, datetime | None]] = [
                (c.order_id, c.closed_at) for c in closures.get(stored.agreement_id, [])
            ]
            for order_id, closed_at in closed or [("", None)]:
                duty = deletion_duty(policy, closed_at, order_id)
                if duty is None:
                    continue
                receipt = receipts.get((stored.agreement_id, order_id))
                deleted_at = None if receipt is None else receipt.deleted_at
                reports.append(DutyReport(duty, duty_status(duty, now, deleted_at), receipt))
        return reports
