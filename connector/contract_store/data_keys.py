"""Data keys: the per-(agreement, order) keys the consumer's received rows are
encrypted under, and their destruction (crypto-shredding).

Received rows are stored encrypted (AES-256-GCM) under a data key per agreement and
order; the data key is kept wrapped under the node's key encryption key (KEK), which
lives outside the database (the node's key directory). Deleting an expired order's
rows also destroys its data key: copies of the rows in backups can no longer be
decrypted once the KEK's holder has no copy of the data key either. A row arriving
for a destroyed key is refused (`KeyShreddedError`), so a late delivery cannot
resurrect deleted data.

Why separate from the rows (`received`): what protects a key (the KEK, what the key
is bound to, the in-memory cache, its destruction) does not depend on how the mirror
decides what to keep; the mirror only asks for the key of a row and encrypts.

Invariants: a key is created once per (agreement, order), on first use, race-free
(insert-or-ignore, then read back what won). A destroyed key keeps its row, without
the key, with when it was destroyed. Only keys committed before the current
transaction are cached in memory, so a rolled-back transaction never leaves a key
behind that the database lacks; destroying a key drops it from the cache first.
Every ciphertext is bound (as AAD) to where it belongs: a sealed page of received rows
to its agreement, order and source (`received_pages`, which also seals each slot's
seq), a row stored before pages to its agreement, order, source and seq; moved to
another place, it no longer opens.
"""

from __future__ import annotations

import os
from datetime import datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Column, Connection, Engine, LargeBinary, String, Table, and_, select
from sqlmodel.sql.sqltypes import UTCDateTime

from qdspace.connector.contract_errors import ContractStoreError, KeyShreddedError
from qdspace.connector.contract_store.common import CONTRACT_METADATA, ID_LENGTH, TableStore

data_key_table = Table(
    "contract_data_key",
    CONTRACT_METADATA,
    Column("agreement_id", String(ID_LENGTH), primary_key=True),
    Column("order_id", String(ID_LENGTH), primary_key=True),
    Column("wrapped_key", LargeBinary, nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("destroyed_at", UTCDateTime(), nullable=True),
)
_KEY_CONTEXT = b"qdspace.v1/data-key\x00"
_ROW_CONTEXT = b"qdspace.v1/received-row\x00"


def row_aad(agreement_id: str, order_id: str, source_id: str, seq: int) -> bytes:
    """What a received row's ciphertext is bound to: where it belongs."""
    return _ROW_CONTEXT + f"{agreement_id}\x00{order_id}\x00{source_id}\x00{seq}".encode()


class DataKeys(TableStore):
    """The data keys, wrapped under `key_encryption_key` (32 bytes)."""

    def __init__(self, engine: Engine, key_encryption_key: bytes) -> None:
        if len(key_encryption_key) != 32:
            raise ContractStoreError("the key encryption key must be 32 bytes")
        super().__init__(engine)
        self._kek = AESGCM(key_encryption_key)
        self._keys: dict[tuple[str, str], AESGCM] = {}

    def key_in(
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

    def destroy_in(
        self, connection: Connection, agreement_id: str, order_id: str, at: datetime
    ) -> None:
        """Destroy the key of (agreement, order) within the caller's transaction, keeping
        the record that it was (a key never created is recorded as destroyed too)."""
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
