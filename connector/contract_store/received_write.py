"""Writing the consumer's mirror: keep-once, highest version wins, tombstones, scope.

A delivery (a group of transfer batches, or a stream event) is mirrored in the caller's
transaction. Each row's envelope is read (`read_envelopes`: a row without one is refused),
and the delivery must be within its agreement, checked before anything is written
(`_check_terms`): the agreement in force (not terminated, not expired), every order one
it covers (for a pull of one order, that order) and not one whose data was deleted (a
tombstone for it would fill the deleted order again, and nothing would delete it a
second time), and no member a row carries outside the fields it grants (a provider's
extra field is personal data the consumer never agreed to hold; decided once per row
shape, from the member names `read_envelopes` gives). Then:

* a first version (not a tombstone) whose key nothing else in the delivery touches is
  written by the upsert alone, which stores it only when the record is not held; the
  statement's row count tells how many were new. Looking every key up first cost as
  much as the write it spared;
* every other row (a correction, a tombstone, any row sharing their key), and every row
  of a delivery in which a sample of first versions is already held (a re-delivery,
  where a look-up is cheaper than a write that is undone), is decided against what is
  held: a copy or an older version changes nothing, a later one replaces, a tombstone
  withdraws and is kept without content;
* the content of each order goes into one sealed page (`received_pages`) under the
  order's data key, and its row index (record, version, page, slot) is one statement;
  slots a re-delivered copy, a replacement or a withdrawal leaves without a live record
  are blanked, or their page deleted, in the same transaction.

The row index is keyed by (agreement number, record key): the agreement's number in
`contract_received_agreement`, read once per delivery (0012_received_agreement_no: a
smaller index entry per record than the agreement id's). Its row is locked for the
delivery, which serialises the deliveries under one agreement, and counts what each
changed (`count_change`): readers that follow the copy (the SPC page's chart of a
subscription) read only the rows added since, unless a held record was rewritten
(`MirrorVersion`).

Both routes are exact: the counts returned (`MirrorResult`) and what is held are the
same as if every row had been looked up.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import datetime
from operator import itemgetter
from typing import Any, NamedTuple

from sqlalchemy import Connection, Engine, bindparam

from qdspace.connector.contract_errors import (
    ContractDenied,
    ContractStoreError,
    ForeignRecordError,
    KeyShreddedError,
)
from qdspace.connector.contract_store.agreements import AgreementStore
from qdspace.connector.contract_store.common import ID_LENGTH, DriverStatement, TableStore
from qdspace.connector.contract_store.data_keys import DataKeys, data_key_table
from qdspace.connector.contract_store.received_model import (
    ROW_COLUMNS,
    IncomingRow,
    IncomingRun,
    MirrorResult,
    change_table,
    received_agreement_table,
    received_row_table,
)
from qdspace.connector.contract_store.received_pages import Pages, index_page
from qdspace.connector.negotiation import Role
from qdspace.connector.transfer_retention import grants_nothing_after
from qdspace.connector.transfer_wire import ENVELOPE_FIELDS, Envelopes, RecordMeta, read_envelopes
from qdspace.policies.canonical import format_datetime
from qdspace.policies.evaluate import covers, granted_fields, order_in_scope
from qdspace.policies.model import Action, Policy

_REPLACED_COLUMNS = ROW_COLUMNS[2:]  # all but the agreement (number and id)
_Held = tuple[int, bool, tuple[int, int] | None]  # version, withdrawn, (page, slot)
# columns of a delivery, read in C (a named tuple)
_SEQ, _ORDER, _PAYLOAD = itemgetter(0), itemgetter(1), itemgetter(2)  # of an IncomingRow
assert IncomingRow._fields == ("seq", "order_id", "payload")


#: handed to the driver, built once (see `common.DriverStatement`): the agreement's
#: number (locked for the delivery on PostgreSQL), and the count of a change
_A = received_agreement_table
_NUMBER_SQL = "SELECT agreement_no FROM contract_received_agreement WHERE agreement_id = ?"
_NUMBER = DriverStatement(_NUMBER_SQL, [_A.c.agreement_id.type])
_NUMBER_LOCKED = DriverStatement(f"{_NUMBER_SQL} FOR UPDATE", [_A.c.agreement_id.type])
#: the orders of a delivery whose data key is destroyed (`_refuse_deleted`)
_DELETED_SQL = (
    "SELECT order_id, destroyed_at FROM contract_data_key "
    "WHERE agreement_id = ? AND wrapped_key IS NULL"
)
_K = data_key_table
_DELETED = DriverStatement(
    f"{_DELETED_SQL} AND order_id = ?",
    [_K.c.agreement_id.type, _K.c.order_id.type],
    [_K.c.order_id.type, _K.c.destroyed_at.type],
)
_COUNT_CHANGE = DriverStatement(
    "UPDATE contract_received_agreement SET revision = revision + 1, "
    "rewrites = rewrites + ? WHERE agreement_id = ?",
    [_A.c.rewrites.type, _A.c.agreement_id.type],
)


def fields_outside(policy: Policy, names: frozenset[str]) -> frozenset[str]:
    """The members of received rows (`names`, their envelope aside) that no permission
    of `policy` letting rows be read or streamed grants. The provider's gate sends the
    asset's fields narrowed by each permission's ``fields`` constraints
    (`policies.evaluate`); the consumer does not know the asset's fields, so the rows'
    own names stand in for them: a name the constraints keep is one an honest provider
    may send, any other is data the consumer never agreed to receive."""
    fields = names - ENVELOPE_FIELDS
    granted: frozenset[str] = frozenset()
    for permission in policy.permissions:
        if covers(permission.action, Action.READ) or covers(permission.action, Action.STREAM):
            granted |= granted_fields(permission, fields)
    return fields - granted


def count_change(connection: Connection, agreement_id: str, *, rewrite: bool) -> None:
    """Count a change of what is held under the agreement (`MirrorVersion`): rows added,
    or with `rewrite` held rows replaced, withdrawn, brought back or erased. Handed to
    the driver: built by the SQL layer it cost 0.4 ms a delivery, a quarter of a 6-row
    stream event's store."""
    _COUNT_CHANGE.execute(connection, (int(rewrite), agreement_id))


def _change(
    agreement_id: str,
    source_id: str,
    order_id: str,
    payload: bytes,
    meta: RecordMeta,
    at: datetime,
) -> dict[str, Any]:
    return {
        "agreement_id": agreement_id,
        "record_key": meta.key,
        "version": meta.version,
        "order_id": order_id,
        "withdrawn": meta.withdrawn,
        "content_sha256": hashlib.sha256(payload).hexdigest(),
        "source_id": source_id,
        "received_at": at,
    }


class _Delivery(NamedTuple):
    """A delivery as columns: slot i is seq `seqs[i]` of order `orders[i]`, its bytes
    `payloads[i]` and its envelope (`envelopes`, columns too)."""

    seqs: Sequence[int]
    orders: list[str]
    payloads: list[bytes]
    envelopes: Envelopes


def _delivery_columns(
    rows: Sequence[IncomingRow] | IncomingRun,
) -> tuple[Sequence[int], list[str], list[bytes]]:
    """seqs, orders and payloads of a delivery (an `IncomingRun` holds them so already)."""
    if isinstance(rows, IncomingRun):
        return range(rows.first, rows.end), rows.orders, rows.payloads
    return list(map(_SEQ, rows)), list(map(_ORDER, rows)), list(map(_PAYLOAD, rows))


class MirrorWriter(TableStore):
    """Mirror one delivery into the copy held under an agreement (`store_rows`)."""

    def __init__(
        self, engine: Engine, keys: DataKeys, agreements: AgreementStore, pages: Pages
    ) -> None:
        super().__init__(engine)
        self._keys = keys
        self._agreements = agreements
        self._pages = pages
        self._row_sql: tuple[str, tuple[str, ...] | None] | None = None
        # (agreement, member names of a delivery) -> the names its agreement does not
        # grant: a few row shapes per agreement, decided once each (the hot path)
        self._outside: dict[tuple[str, frozenset[str]], frozenset[str]] = {}

    def _row_upsert(self) -> tuple[str, tuple[str, ...] | None]:
        """The driver SQL of the received-row upsert and, for a positional driver, the
        order of its parameters (compiled once; a page is one executemany): a record
        not held is inserted, one held is replaced only by a higher version."""
        if self._row_sql is None:
            table = received_row_table
            statement = self._upsert(table).values({name: bindparam(name) for name in ROW_COLUMNS})
            excluded = statement.excluded
            statement = statement.on_conflict_do_update(
                index_elements=["agreement_no", "record_key"],
                set_={name: excluded[name] for name in _REPLACED_COLUMNS},
                where=table.c.version < excluded.version,
            )
            compiled = statement.compile(dialect=self.engine.dialect)
            order = tuple(compiled.positiontup or ()) if compiled.positional else None
            self._row_sql = (compiled.string, order)
        return self._row_sql

    def _check_terms(
        self,
        connection: Connection,
        agreement_id: str,
        orders: list[str],
        names: frozenset[str],
        at: datetime,
        only_order: str | None,
    ) -> None:
        """Refuse the delivery, before anything is written, unless every row and every
        tombstone is within the agreement: we are its consumer, it is in force (not
        terminated: a purge terminates it before it deletes; not expired: some
        permission still grants at `at`), each row is of an order it covers (and, for a
        pull that asked for one order, of that order), carries no field it does not
        grant (`fields_outside`), and is of no order whose data was deleted (its key
        destroyed: a tombstone too would fill the order again, for good)."""
        stored = self._agreements.agreement_in(connection, agreement_id, hold=True)
        if stored.role is not Role.CONSUMER:
            raise ForeignRecordError(f"agreement {agreement_id}: we are not its consumer")
        if stored.terminated_at is not None:
            raise ContractDenied(f"agreement {agreement_id} terminated: its rows are refused")
        policy = stored.signed.agreement.policy
        if grants_nothing_after(policy, at):
            raise ContractDenied(
                f"agreement {agreement_id} expired: it grants nothing at "
                f"{format_datetime(at)}, so its rows are refused"
            )
        distinct = set(orders)
        for order in distinct:
            if not 0 < len(order) <= ID_LENGTH or "\x00" in order:  # (not storable)
                raise ForeignRecordError(
                    f"agreement {agreement_id}: an order id of {len(order)} characters, or "
                    f"with a NUL, is no order: its rows are refused"
                )
            if not order_in_scope(policy, order):
                raise ForeignRecordError(
                    f"agreement {agreement_id} does not cover order {order!r}: its rows are refused"
                )
            if only_order is not None and order != only_order:
                raise ForeignRecordError(
                    f"agreement {agreement_id}: a pull of order {only_order!r} brought rows of "
                    f"order {order!r}: its rows are refused"
                )
        shape = (agreement_id, names)
        outside = self._outside.get(shape)
        if outside is None:
            outside = fields_outside(policy, names)
            if len(self._outside) >= 1024:
                self._outside.clear()
            self._outside[shape] = outside
        if outside:
            raise ForeignRecordError(
                f"agreement {agreement_id} does not grant the fields {sorted(outside)} that "
                f"received rows carry: the delivery is refused"
            )
        self._refuse_deleted(connection, agreement_id, distinct)

    def _refuse_deleted(self, connection: Connection, agreement_id: str, orders: set[str]) -> None:
        """Refuse a delivery to an order whose data key is destroyed (its rows were
        deleted, a receipt given): one look-up for the delivery's orders (handed to the
        driver for the common delivery, of one order)."""
        if len(orders) == 1:
            found = _DELETED.first(connection, (agreement_id, *orders))
        else:
            mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
            marks = ", ".join([mark] * len(orders))
            sql = f"{_DELETED_SQL.replace('?', mark)} AND order_id IN ({marks})"
            found = connection.exec_driver_sql(sql, (agreement_id, *sorted(orders))).first()
        if found is not None:
            raise KeyShreddedError(
                f"the data of agreement {agreement_id}, order {found[0]!r} was deleted "
                f"(at {found[1]}); its key is destroyed: its rows, tombstones too, are refused"
            )

    def _agreement_no(self, connection: Connection, agreement_id: str) -> int:
        """The agreement's number in the row index (`received_agreement_table`), given
        on its first delivery. Read in the delivery's transaction, never cached: a
        number given in a transaction that rolls back may be given again, to another
        agreement."""
        table = received_agreement_table
        # locked until the delivery commits (PostgreSQL; SQLite has one writer anyway):
        # deliveries under one agreement are serialised, so the ids of rows one adds are
        # above every id held when it commits (`MirrorVersion`)
        find = _NUMBER_LOCKED if connection.dialect.name == "postgresql" else _NUMBER
        found = find.first(connection, (agreement_id,))
        if found is None:
            connection.execute(
                self._upsert(table)
                .values(agreement_id=agreement_id)
                .on_conflict_do_nothing(index_elements=["agreement_id"])
            )
            found = find.first(connection, (agreement_id,))
        if found is None:  # inserted above, or by a concurrent first delivery
            raise ContractStoreError(f"agreement {agreement_id}: no number given to it")
        return int(found[0])

    def _held(
        self, connection: Connection, agreement_no: int, keys: Iterable[str]
    ) -> dict[str, _Held]:
        """record key -> (version, withdrawn, page id, slot) of the records of `keys`
        held now (one indexed lookup per chunk, in the driver's SQL)."""
        mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        held: dict[str, _Held] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            sql = (
                "SELECT record_key, version, withdrawn, page_id, slot FROM contract_received_row "
                f"WHERE agreement_no = {mark} AND record_key IN ({', '.join([mark] * len(chunk))})"
            )
            for key, version, withdrawn, page, slot in connection.exec_driver_sql(
                sql, (agreement_no, *chunk)
            ):
                where = None if page is None else (int(page), int(slot))
                held[key] = (int(version), bool(withdrawn), where)
        return held

    def store_rows(
        self,
        connection: Connection,
        agreement_id: str,
        source_id: str,
        rows: Sequence[IncomingRow] | IncomingRun,
        at: datetime,
        *,
        only_order: str | None = None,
    ) -> MirrorResult:
        """Keep-once without a look-up for the common case: a first version (not a
        tombstone) of a record whose key nothing else in the delivery touches is written
        by the upsert alone, which stores it only when it is not held (the statement's
        row count tells how many were new). Every other row (a correction, a tombstone,
        and any row sharing their key) is decided against what is held, as is every row
        of a delivery in which a sample of first versions is held already (a re-delivery:
        looking up is cheaper than writing and undoing). Either way is exact.
        Rows with content go into one sealed page per order (`received_pages`). A
        delivery outside its agreement is refused whole (`_check_terms`; `only_order`:
        the one order a pull asked for)."""
        seqs, orders, payloads = _delivery_columns(rows)
        if not payloads:
            return MirrorResult()
        envelopes, names = read_envelopes(payloads, seqs)
        keys, versions, tombstones = envelopes
        last = max(seqs)  # where this source's deliveries stop now
        self._check_terms(connection, agreement_id, orders, names, at, only_order)
        number = self._agreement_no(connection, agreement_id)
        if versions.count(1) == len(keys) and not tombstones:
            careful: set[str] = set()  # first versions only: the common delivery
            firsts = keys
        else:
            careful = {k for i, k in enumerate(keys) if versions[i] > 1 or i in tombstones}
            firsts = [key for key in keys if key not in careful]
        if self._held(connection, number, firsts[:: max(1, len(firsts) // 8)]):
            careful.update(firsts)  # a re-delivery, likely: cheaper to look up than to write
        held = self._held(connection, number, careful) if careful else {}
        stale: dict[int, set[int]] = {}  # page -> slots a replacement or withdrawal empties
        chosen: dict[str, int] = {}  # careful key -> the slot of its winner
        changes: list[dict[str, Any]] = []
        plain = replaced = withdrawn = unchanged = added = 0
        rewritten = False  # a held row changed (replaced, withdrawn, or a withdrawn one back)
        picked: list[int] = []  # the slots written, unless `whole`
        seen: set[str] = set()  # first versions written (a second copy is held by then)
        whole = not careful and len(set(firsts)) == len(keys)  # first versions, each once
        if whole:
            plain = len(keys)
        for index, key in enumerate(() if whole else keys):
            if key not in careful:
                if key in seen:
                    unchanged += 1
                else:
                    seen.add(key)
                    picked.append(index)
                    plain += 1
                continue
            version, tomb, before = versions[index], index in tombstones, held.get(key)
            if before is not None and before[0] >= version:
                unchanged += 1  # a copy of what is held, or older
                continue
            held[key] = (version, tomb, None)
            rewritten |= before is not None  # its row keeps its id: not an addition
            if before is not None and before[2] is not None:
                page, slot = before[2]
                stale.setdefault(page, set()).add(slot)
            if tomb:
                withdrawn += before is not None and not before[1]
                unchanged += before is None or before[1]
            elif before is None or before[1]:
                added += 1
            else:
                replaced += 1
            chosen[key] = index
            if version > 1 or tomb:
                meta = envelopes.meta(index)
                change = _change(agreement_id, source_id, orders[index], payloads[index], meta, at)
                changes.append(change)
        picked += chosen.values()
        delivery = _Delivery(seqs, orders, payloads, envelopes)
        slots = None if whole else picked
        place = (number, agreement_id, source_id)
        stored, slot_keys = self._write(connection, place, delivery, slots, at)
        if not len(chosen) <= stored <= (len(keys) if whole else len(picked)):
            raise ContractStoreError(f"the database reported {stored} received rows stored")
        new = stored - len(chosen)  # the careful winners all apply: decided above
        added += new
        unchanged += plain - new
        if new < plain:  # some were held already: their slots hold nothing live
            if new == 0:  # a re-delivery: a page of none but its rows goes whole
                gone = [p for p, keys in slot_keys.items() if chosen.keys().isdisjoint(keys)]
                self._pages.delete(connection, gone)
                slot_keys = {p: keys for p, keys in slot_keys.items() if p not in gone}
            self._pages.compact(connection, number, slot_keys, at)
        if stale:
            self._pages.blank(connection, stale, at)
        if changes:
            connection.execute(
                self._upsert(change_table)
                .values(changes)
                .on_conflict_do_nothing(index_elements=["agreement_id", "record_key", "version"])
            )
        self._advance(connection, source_id, last, len(seqs))
        result = MirrorResult(added, replaced, withdrawn, unchanged)
        if result.changed:
            count_change(connection, agreement_id, rewrite=rewritten)
        return result

    def _advance(self, connection: Connection, source_id: str, seq: int, rows: int) -> None:
        """Move the source's cursor (`last_received_seq`) up to `seq`, never back, and count
        the delivery's `rows` (a delivery that moves it nowhere, one replayed, is no news)."""
        mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        connection.exec_driver_sql(
            "INSERT INTO contract_received_source (source_id, seq, delivered) "
            f"VALUES ({mark}, {mark}, {mark}) ON CONFLICT (source_id) DO UPDATE SET "
            "seq = excluded.seq, "
            "delivered = contract_received_source.delivered + excluded.delivered "
            "WHERE contract_received_source.seq < excluded.seq",
            (source_id, seq, rows),
        )

    def _write(
        self,
        connection: Connection,
        to: tuple[int, str, str],
        delivery: _Delivery,
        picked: list[int] | None,
        at: datetime,
    ) -> tuple[int, dict[int, list[str]]]:
        """Upsert the slots of `delivery` chosen (`picked`; None: all of them, none a
        tombstone) into the copy held under an agreement (`to`: its number, its id, and
        the delivery's source): the content of each order sealed in one page and its
        index rows written by one statement, tombstones (no content) by another. Returns
        how many rows the database stored and the record key of every slot of each page
        written."""
        number, agreement_id, source_id = to
        dialect = self.engine.dialect
        stamp = received_row_table.c.received_at.type.dialect_impl(dialect).bind_processor(dialect)
        received_at: Any = stamp(at) if stamp is not None else at
        seqs, orders, payloads, (keys, versions, tombstones) = delivery
        pages: dict[str, tuple[Sequence[int], list[bytes], list[str], list[int]]] = {}
        dead: list[tuple[Any, ...]] = []
        if picked is None and len(set(orders)) == 1:
            pages[orders[0]] = (seqs, payloads, keys, versions)  # the common case, as it is
        else:
            slots: dict[str, list[int]] = {}
            for index in range(len(keys)) if picked is None else picked:
                if index in tombstones:
                    dead.append(  # in ROW_COLUMNS order
                        (
                            *(number, agreement_id, orders[index], source_id, seqs[index]),
                            *(b"", b""),
                            *(received_at, keys[index], versions[index], True, None, None),
                        )
                    )
                else:
                    slots.setdefault(orders[index], []).append(index)
            for order_id, chosen in slots.items():
                pages[order_id] = (
                    [seqs[i] for i in chosen],
                    [payloads[i] for i in chosen],
                    [keys[i] for i in chosen],
                    [versions[i] for i in chosen],
                )
        stored = 0
        if dead:
            sql, order = self._row_upsert()
            params: list[Any] = (
                [dict(zip(ROW_COLUMNS, record, strict=True)) for record in dead]
                if order is None
                else list(map(itemgetter(*(ROW_COLUMNS.index(n) for n in order)), dead))
            )
            stored += connection.exec_driver_sql(sql, params).rowcount
        slot_keys: dict[int, list[str]] = {}
        for order_id, (page_seqs, page_payloads, page_keys, page_versions) in pages.items():
            cipher = self._keys.key_in(connection, agreement_id, order_id, True, at)
            place = (agreement_id, order_id, source_id)
            page = self._pages.insert(connection, cipher, place, page_seqs, page_payloads, at)
            slot_keys[page] = page_keys
            stored += index_page(
                connection, number, place, received_at, page, page_keys, page_seqs, page_versions
            )
        return stored, slot_keys
