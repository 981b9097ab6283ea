"""Agreements: the signed contracts, as this node holds them (as provider or consumer).

Why separate: nearly every other aggregate hangs off an agreement (a transfer runs
under one, received rows are kept under one, an order closure starts one's deletion
duty) but none of them changes it. They read it, within their own transaction when
what they write depends on it (`agreement_in`); only a negotiation writes one, in the
transaction that finalises it (`save_agreement_in`).

Invariants: the terms are written once. Storing an agreement again with other
canonical bytes under the same id is an error (`AgreementIdTaken`), never an overwrite;
the same terms again are a no-op, except that the consumer's signature, once it
arrives, is added (and never removed). Termination is idempotent: the first
termination, with its time and reason, stands.
"""

from __future__ import annotations

import threading
from collections import namedtuple
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    ColumnElement,
    Connection,
    Engine,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    and_,
    bindparam,
    case,
    false,
    func,
    select,
    true,
    update,
)
from sqlmodel.sql.sqltypes import UTCDateTime

from qdspace.connector import held_connection
from qdspace.connector.agreement import SignedAgreement, agreement_from_bytes
from qdspace.connector.contract_errors import (
    ContractStoreError,
    OfferMismatchError,
    UnknownContractError,
)
from qdspace.connector.contract_store.common import (
    CONTRACT_METADATA,
    ID_LENGTH,
    DriverStatement,
    TableStore,
    column_types,
    count_rows,
    listing,
    select_by_key,
)
from qdspace.connector.negotiation import Role
from qdspace.policies.evaluate import single_order
from qdspace.policies.model import Policy
from qdspace.policies.retention import receipt_required, retention_days

agreement_table = Table(
    "contract_agreement",
    CONTRACT_METADATA,
    Column("agreement_id", String(ID_LENGTH), primary_key=True),
    Column("negotiation_id", String(ID_LENGTH), nullable=False),
    Column("role", String(16), nullable=False),
    Column("provider_id", String(ID_LENGTH), nullable=False),
    Column("consumer_id", String(ID_LENGTH), nullable=False),
    Column("asset_id", String(ID_LENGTH), nullable=False),
    Column("canonical", LargeBinary, nullable=False),
    Column("provider_signature", LargeBinary, nullable=False),
    Column("consumer_signature", LargeBinary, nullable=True),
    Column("digest", String(64), nullable=False),
    Column("agreed_at", UTCDateTime(), nullable=False),
    Column("terminated_at", UTCDateTime(), nullable=True),
    Column("termination_reason", Text, nullable=True),
    # False: reached with a peer that does not sign (revision 0008_dsp)
    Column("signed", Boolean, nullable=False, server_default=true()),
    # read from the terms when they are stored (revision 0019_agreement_listing), so that
    # the readers below need not parse every agreement: the one order the scope names
    # (`policies.evaluate.single_order`; NULL: several, any, or none), and the delete
    # duty's days after the order closes (NULL: no duty) and whether it asks a receipt
    Column("scope_order", String(ID_LENGTH), nullable=True),
    Column("retention_days", Integer, nullable=True),
    Column("receipt_required", Boolean, nullable=False, server_default=false()),
    # listings in the order agreements were made (pages, the newest), and the look-ups
    # of one asset's agreements (a federation job's member, a trace's producer)
    Index("ix_contract_agreement_agreed", "agreed_at", "agreement_id"),
    Index("ix_contract_agreement_asset", "asset_id", "role", "consumer_id"),
    Index("ix_contract_agreement_order", "scope_order", "role"),
)

#: handed to the driver, built once (see `common.DriverStatement`)
_T = agreement_table
_EXISTING = DriverStatement(
    "SELECT canonical, consumer_signature FROM contract_agreement WHERE agreement_id = ?",
    [_T.c.agreement_id.type],
)
_INSERTED = (
    "agreement_id",
    "negotiation_id",
    "role",
    "provider_id",
    "consumer_id",
    "asset_id",
    "canonical",
    "provider_signature",
    "consumer_signature",
    "digest",
    "agreed_at",
    "signed",
    "scope_order",
    "retention_days",
    "receipt_required",
)
_INSERT = DriverStatement(
    f"INSERT INTO contract_agreement ({', '.join(_INSERTED)}) "
    f"VALUES ({', '.join('?' * len(_INSERTED))}) ON CONFLICT (agreement_id) DO NOTHING",
    column_types(_T, _INSERTED),
)
_COUNTERSIGN = DriverStatement(
    "UPDATE contract_agreement SET consumer_signature = ? WHERE agreement_id = ?",
    [_T.c.consumer_signature.type, _T.c.agreement_id.type],
)
_LOAD, _COLUMNS = select_by_key(agreement_table, "agreement_id")
_Row = namedtuple("_Row", _COLUMNS)  # type: ignore[misc]
#: the load under a shared row lock (PostgreSQL; see `agreement_in`)
_LOAD_HELD = (
    select(agreement_table)
    .where(agreement_table.c.agreement_id == bindparam("aid"))
    .with_for_update(read=True)
)


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
class AgreementLink:
    """How many agreements are held between one provider and one consumer, and how many
    of them are active (countersigned, not terminated)."""

    provider_id: str
    consumer_id: str
    total: int
    active: int


def derived_terms(policy: Policy) -> tuple[str | None, int | None, bool]:
    """What a row keeps beside an agreement's terms, read from them: the one order of its
    scope, its delete duty's retention days, whether that duty asks a receipt."""
    order = single_order(policy)
    if order is not None and len(order) > ID_LENGTH:
        order = None  # longer than the column: read and checked with the scopes of many
    return order, retention_days(policy), receipt_required(policy)


def _stored(row: Any) -> StoredAgreement:
    """The agreement a row of `agreement_table` holds (its terms parsed)."""
    consumer_signature = None if row.consumer_signature is None else bytes(row.consumer_signature)
    signed = SignedAgreement(
        agreement_from_bytes(bytes(row.canonical)),
        bytes(row.provider_signature),
        consumer_signature,
        signed=bool(row.signed),
    )
    return StoredAgreement(signed, Role(row.role), row.terminated_at, row.termination_reason)


def held_as(agreement_id: ColumnElement[str], role: Role) -> ColumnElement[bool]:
    """An SQL condition: the agreement `agreement_id` names is held here in `role`
    (for another aggregate's query over its own rows)."""
    table = agreement_table
    return (
        select(table.c.agreement_id)
        .where(table.c.agreement_id == agreement_id, table.c.role == role.value)
        .exists()
    )


class AgreementIdTaken(OfferMismatchError, ContractStoreError):
    """An agreement whose id this store holds for other terms (another negotiation's,
    ours as provider or consumer, with whichever member).

    A peer chooses the id of an agreement it provides (a DSP provider's ``@id``, a gRPC
    provider's agreement id), so this is that peer's agreement refused: answered as any
    agreement that does not fit its negotiation is (`OfferMismatchError`: 400,
    INVALID_ARGUMENT), with no traceback, in the same words wherever and by whom the id
    is held. It was a 500 and a logged traceback, and our negotiation stayed stuck. That
    a held id is refused where a fresh one is taken cannot be hidden; which of our
    agreements holds it is. The transaction that met it is rolled back: the negotiation
    stays as it was, and takes an agreement under another id."""


class AgreementStore(TableStore):
    """Save, read, list and terminate agreements.

    `terminations` counts the agreements this process terminated (its own party's
    termination, the other party's notice, a purge): a stream that releases rows under
    an agreement builds its gate again every second (the expiry, an order no longer
    the consumer's), and one that sees the count move rebuilds it before its next batch,
    so what leaves after a termination here is at most the batch being sent, not a
    second of them."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.terminations = 0
        self._terminations_lock = threading.Lock()

    def save_agreement_in(
        self,
        connection: Connection,
        signed: SignedAgreement,
        role: Role,
        *,
        stored: SignedAgreement | None = None,
    ) -> None:
        """`save_agreement` within the caller's transaction.

        `stored`: the agreement as the caller read it from this store, in a transaction
        whose compare-and-set guarantees nobody wrote it since (a negotiation's `before`);
        its row is then not read again. Otherwise a new agreement is inserted at once and
        only an id already taken is read back (each a statement fewer than reading first;
        bench/PROFILE-negotiation.md, round 3)."""
        terms = signed.agreement
        if stored is not None and stored.canonical_bytes == signed.canonical_bytes:
            existing: tuple[Any, ...] = (stored.canonical_bytes, stored.consumer_signature)
        else:
            inserted = _INSERT.execute(
                connection,
                (
                    terms.agreement_id,
                    terms.negotiation_id,
                    role.value,
                    terms.provider_id,
                    terms.consumer_id,
                    terms.asset_id,
                    signed.canonical_bytes,
                    signed.provider_signature,
                    signed.consumer_signature,
                    terms.digest().hex(),
                    terms.agreed_at,
                    signed.signed,
                    *derived_terms(terms.policy),
                ),
            )
            if inserted:
                return
            found = _EXISTING.first(connection, (terms.agreement_id,))
            assert found is not None  # the insert met its id (rows are never deleted)
            existing = found
        canonical, consumer_signature = existing
        if bytes(canonical) != signed.canonical_bytes:
            raise AgreementIdTaken(
                f"agreement {terms.agreement_id} is refused: its id is taken for other terms"
            )
        if consumer_signature is None and signed.consumer_signature is not None:
            _COUNTERSIGN.execute(connection, (signed.consumer_signature, terms.agreement_id))

    def save_agreement(self, signed: SignedAgreement, role: Role) -> None:
        """Store a (verified) agreement; a later call may add the consumer's signature."""
        with self.engine.begin() as connection:
            self.save_agreement_in(connection, signed, role)

    def agreement_in(
        self, connection: Connection, agreement_id: str, *, hold: bool = False
    ) -> StoredAgreement:
        """`agreement` within the caller's transaction; with `hold`, its row stays
        share-locked until the transaction ends (PostgreSQL; SQLite transactions are
        serialisable anyway), so a termination waits for a write that read it live."""
        row: Any
        if hold:
            row = connection.execute(_LOAD_HELD, {"aid": agreement_id}).first()
        else:
            found = _LOAD.first(connection, (agreement_id,))
            row = None if found is None else _Row._make(found)
        if row is None:
            raise UnknownContractError(f"no agreement {agreement_id} here")
        return _stored(row)

    def agreement(self, agreement_id: str) -> StoredAgreement:
        with held_connection.connect(self.engine) as connection:
            return self.agreement_in(connection, agreement_id)

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
        """The agreements held (in ``role``, of ``asset_id``, with that provider or
        consumer) in the order they were agreed (``newest_first``: the reverse), ``limit``
        from ``offset``: read in one statement and only those parsed (parsing an
        agreement's terms is most of its cost, ~0.3 ms; a listing that read every one,
        a statement each, took seconds at a few thousand)."""
        table = agreement_table
        statement = select(table)
        for column, value in (
            (table.c.role, None if role is None else role.value),
            (table.c.asset_id, asset_id),
            (table.c.provider_id, provider_id),
            (table.c.consumer_id, consumer_id),
        ):
            if value is not None:
                statement = statement.where(column == value)
        statement = listing(
            statement,
            (table.c.agreed_at, table.c.agreement_id),
            limit=limit,
            offset=offset,
            newest_first=newest_first,
        )
        with self.engine.connect() as connection:
            return [_stored(row) for row in connection.execute(statement)]

    def concerning_order(self, provider_id: str, order_id: str) -> list[StoredAgreement]:
        """The countersigned agreements ``provider_id`` gave whose scope may cover
        ``order_id``: those whose one order it is and those that name no single order,
        read by ``ix_contract_agreement_order`` (an order closure's candidates; the caller
        checks each scope: `policies.evaluate.order_in_scope`)."""
        table = agreement_table
        found = []
        with self.engine.connect() as connection:
            for scope in (table.c.scope_order == order_id, table.c.scope_order.is_(None)):
                statement = select(table).where(
                    scope,
                    table.c.role == Role.PROVIDER.value,
                    table.c.provider_id == provider_id,
                    table.c.consumer_signature.is_not(None),
                )
                found += [_stored(row) for row in connection.execute(statement)]
        return sorted(found, key=lambda a: (a.signed.agreement.agreed_at, a.agreement_id))

    def count_agreements(self, role: Role | None = None) -> int:
        """How many agreements are held (in ``role``)."""
        table = agreement_table
        where = [] if role is None else [table.c.role == role.value]
        return count_rows(self.engine, table, *where)

    def agreement_links(self) -> list[AgreementLink]:
        """The agreements held, counted by provider and consumer (and how many of those
        are active): what the overview's network picture draws, without parsing one."""
        table = agreement_table
        active = and_(table.c.terminated_at.is_(None), table.c.consumer_signature.is_not(None))
        statement = (
            select(
                table.c.provider_id,
                table.c.consumer_id,
                func.count(),
                func.sum(case((active, 1), else_=0)),
            )
            .group_by(table.c.provider_id, table.c.consumer_id)
            .order_by(table.c.provider_id, table.c.consumer_id)
        )
        with self.engine.connect() as connection:
            return [
                AgreementLink(provider, consumer, int(total), int(live or 0))
                for provider, consumer, total, live in connection.execute(statement)
            ]

    def terminate_agreement(self, agreement_id: str, reason: str, at: datetime) -> StoredAgreement:
        """Mark an agreement terminated (idempotent: the first termination stands)."""
        table = agreement_table
        with self.engine.begin() as connection:
            self.agreement_in(connection, agreement_id)
            connection.execute(
                update(table)
                .where(table.c.agreement_id == agreement_id, table.c.terminated_at.is_(None))
                .values(terminated_at=at, termination_reason=reason)
            )
            ended = self.agreement_in(connection, agreement_id)
        with self._terminations_lock:
            self.terminations += 1
        return ended
