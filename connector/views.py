"""Assets: named views over the provider's QDM, and the gate rows pass to leave.

An asset says what a consumer can get (its kind, the QDM tables it reads, the
fields it exposes, which of them are pseudonymised) and on which terms (its
offer). `read_asset` turns a kind plus an order id and a cursor into rows,
sorted by a stable cursor (the table's insertion id, so rows added later come
after and a resumed read neither skips nor repeats), fetched page by page in
short transactions. `ReleaseGate` is the single gate those rows pass on their
way out: policy enforcement (scope and fields) and then pseudonymisation, in
that order, so a field the agreement does not grant is never even pseudonymised.

Every row leaves with its record envelope (see `connector.transfer`): a record key
derived from the table and the record's natural key under the agreement's own key
(`record_key`: opaque, stable across versions, the same on a pull and on the live
stream, unlinkable between agreements) and its version; a withdrawn record leaves as
a tombstone, and only if the row itself would have passed the gate. Because a
correction or withdrawal moves the record to a fresh id (`connector.qdm`), reading
after a cursor finds every change after it: that is what an incremental pull is.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from itertools import repeat
from typing import Any

import orjson
from sqlalchemy import DateTime, Engine, Float, Table, or_, select, union

from qdspace.connector.contract_errors import ViewError
from qdspace.connector.pseudonym import Pseudonymizer
from qdspace.connector.qdm import (
    NATURAL_KEYS,
    TABLES,
    VERSION_COLUMNS,
    Batch,
    GenealogyEdge,
    Inspection,
    OperatorLog,
    ProcessMeasurement,
    Product,
)
from qdspace.connector.transfer import (
    KEY_FIELD,
    VERSION_FIELD,
    WITHDRAWN_FIELD,
    BatchRow,
    RowBatch,
    TransferProcess,
    advance_payload,
    row_bytes,
)
from qdspace.policies.canonical import format_datetime
from qdspace.policies.evaluate import Decision, Request, RowGate
from qdspace.policies.model import FIELD_ALLOW_OPERATORS, LeftOperand, Policy, PolicyType

DEFAULT_PSEUDONYMIZED = frozenset({"operator_id"})


class AssetKind(StrEnum):
    INSPECTIONS_OF_ORDER = "inspections_of_order"
    PROCESS_ALONG_GENEALOGY = "process_along_genealogy"
    LIVE_INSPECTION_STREAM = "live_inspection_stream"
    OPERATOR_LOG_OF_ORDER = "operator_log_of_order"
    #: A federated-learning job: no table behind it, only model updates under contract.
    FEDERATED_JOB = "federated_job"


@dataclass(frozen=True)
class Asset:
    """A view a provider publishes in its catalog, with the offer it is available under.

    `audience` lists the member roles that may see it in the catalog (empty:
    every member). `order_key` is the field that carries a row's order id.
    `consumers` names the members that may negotiate it (empty: any member the
    audience admits); a federated job's are its members. Only a federated job
    has no tables: nothing of it is ever read from the QDM.
    """

    asset_id: str
    title: str
    kind: AssetKind
    tables: tuple[str, ...]
    fields: frozenset[str]
    offer: Policy
    pseudonymized: frozenset[str] = DEFAULT_PSEUDONYMIZED
    order_key: str = "order_id"
    audience: frozenset[str] = frozenset()
    description: str = ""
    consumers: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        needs_tables = self.kind is not AssetKind.FEDERATED_JOB
        if not self.asset_id or (needs_tables and not self.tables) or not self.fields:
            raise ViewError(f"asset {self.asset_id!r} needs an id, tables and fields")
        if self.offer.type is not PolicyType.OFFER or self.offer.target != self.asset_id:
            raise ViewError(
                f"asset {self.asset_id}: its offer {self.offer.uid} must be an Offer "
                f"targeting it (targets {self.offer.target})"
            )
        unknown = self.pseudonymized - self.fields
        if unknown:
            raise ViewError(
                f"asset {self.asset_id}: pseudonymises unknown fields {sorted(unknown)}"
            )
        for permission in self.offer.permissions:
            for constraint in permission.constraints:
                right = constraint.right_operand
                if (
                    constraint.left_operand is LeftOperand.FIELDS
                    and constraint.operator in FIELD_ALLOW_OPERATORS
                    and isinstance(right, frozenset)
                    and right - self.fields
                ):
                    raise ViewError(
                        f"asset {self.asset_id}: its offer grants fields it does not expose: "
                        f"{sorted(right - self.fields)}"
                    )

    def visible_to(self, role: str) -> bool:
        """Whether a member with this role sees the asset in the catalog."""
        return not self.audience or role in self.audience

    def negotiable_by(self, name: str) -> bool:
        """Whether the member called `name` may negotiate the asset."""
        return not self.consumers or name in self.consumers

    @property
    def is_stream(self) -> bool:
        return self.kind is AssetKind.LIVE_INSPECTION_STREAM


@dataclass(frozen=True)
class CatalogEntry:
    """What a member sees of an asset in a provider's catalog (no table names)."""

    provider_id: str
    asset_id: str
    title: str
    kind: AssetKind
    fields: frozenset[str]
    pseudonymized: frozenset[str]
    offer: Policy
    description: str = ""


def catalog_entry(asset: Asset, provider_id: str) -> CatalogEntry:
    return CatalogEntry(
        provider_id=provider_id,
        asset_id=asset.asset_id,
        title=asset.title,
        kind=asset.kind,
        fields=asset.fields,
        pseudonymized=asset.pseudonymized,
        offer=asset.offer,
        description=asset.description,
    )


def catalog(assets: Iterable[Asset], provider_id: str, role: str) -> list[CatalogEntry]:
    """The entries a member with `role` may see, sorted by asset id."""
    visible = (a for a in assets if a.visible_to(role))
    return [catalog_entry(a, provider_id) for a in sorted(visible, key=lambda a: a.asset_id)]


class ReleaseGate:
    """`gate(row)`: the row as it may leave under `agreement` (scoped, projected,
    pseudonymised), or None. `gate.decision` says whether anything may leave, and why not.

    `request.asset_fields` must be the asset's fields: a request built for
    another view could otherwise widen the grant.

    `owned_orders` are the orders the consumer has placed with the provider, read at
    the time of the call (None: the asset is not scoped by customer). It is checked
    on top of the agreement: a request for an order outside it is denied, and a row
    of such an order never passes, whatever the agreement's order scope says.
    """

    def __init__(
        self,
        asset: Asset,
        agreement: Policy,
        request: Request,
        pseudonymizer: Pseudonymizer,
        *,
        closed_orders: Mapping[str, datetime] | None = None,
        owned_orders: frozenset[str] | None = None,
    ) -> None:
        if agreement.target != asset.asset_id:
            raise ViewError(
                f"agreement {agreement.uid} is for {agreement.target}, not {asset.asset_id}"
            )
        if request.asset_fields != asset.fields:
            raise ViewError(f"request for {asset.asset_id} names another asset's fields")
        if pseudonymizer.agreement_id != agreement.uid:
            raise ViewError(
                f"pseudonyms for agreement {pseudonymizer.agreement_id} used for {agreement.uid}"
            )
        self.asset = asset
        self.request = request
        self._gate = RowGate(
            agreement, request, order_key=asset.order_key, closed_orders=closed_orders
        )
        self.pseudonymizer = pseudonymizer
        self._pseudonymized = tuple(sorted(asset.pseudonymized))
        self.owned_orders = owned_orders
        self._decision = self._gate.decision
        order = request.order_id
        foreign = owned_orders is not None and order is not None and order not in owned_orders
        if self._decision.allowed and foreign:  # the agreement's own reason comes first
            self._decision = Decision(False, f"order {order} is not an order you placed with us")

    @property
    def decision(self) -> Decision:
        return self._decision

    def owns(self, order: Any) -> bool:
        """Whether a row of `order` may go to this consumer at all (see `owned_orders`)."""
        return self.owned_orders is None or (isinstance(order, str) and order in self.owned_orders)

    @property
    def query_fields(self) -> frozenset[str]:
        """What to read from the database: the granted fields plus the order key."""
        return self.decision.allowed_fields | {self.asset.order_key}

    def __call__(self, row: Mapping[str, Any]) -> dict[str, Any] | None:
        if not self._decision.allowed or not self.owns(row.get(self.asset.order_key)):
            return None
        out = self._gate(row)
        if out is None:
            return None
        return self.pseudonymizer.apply(out, self._pseudonymized)


def release(
    asset: Asset,
    agreement: Policy,
    request: Request,
    rows: Iterable[Mapping[str, Any]],
    pseudonymizer: Pseudonymizer,
    *,
    closed_orders: Mapping[str, datetime] | None = None,
    owned_orders: frozenset[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """The rows that may leave under `agreement`: in scope, granted fields only, pseudonymised."""
    gate = ReleaseGate(
        asset,
        agreement,
        request,
        pseudonymizer,
        closed_orders=closed_orders,
        owned_orders=owned_orders,
    )
    if not gate.decision.allowed:
        return
    for row in rows:
        out = gate(row)
        if out is not None:
            yield out


# ------------------------------------------------------------- QDM queries

DEFAULT_PAGE_SIZE = 1000


def _table(model: type[Any]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


INSPECTION_TABLE = _table(Inspection)
OPERATOR_LOG_TABLE = _table(OperatorLog)
MEASUREMENT_TABLE = _table(ProcessMeasurement)
_BATCH = _table(Batch)
_PRODUCT = _table(Product)
_EDGE = _table(GenealogyEdge)


def table_fields(table: Table) -> frozenset[str]:
    """The fields a view over `table` can expose (every column but the surrogate id and
    the versioning columns, which travel in the record envelope instead)."""
    return frozenset(
        c.name for c in table.columns if c.name != "id" and c.name not in VERSION_COLUMNS
    )


def _readable(table: Table) -> frozenset[str]:
    return frozenset(c.name for c in table.columns if c.name != "id")


_KIND_OF_TABLE = {
    model.__table__.name: kind  # type: ignore[attr-defined]
    for kind, model in TABLES.items()
}
_RECORD_CONTEXT = b"qdspace.v1/record\x00"
RECORD_KEY_PREFIX = "rec_"


def natural_key(table: Table) -> tuple[str, ...]:
    """The columns that identify a record of `table` across its versions."""
    return NATURAL_KEYS[_KIND_OF_TABLE[table.name]]


class RecordKeys:
    """The record keys of `table`'s records under one agreement.

    A key is a keyed BLAKE2b MAC of the record's natural key (timestamps in their wire form,
    so a stored time gives the same key whichever driver, or path: a pull, the live
    stream, read it), under a key derived from the agreement's pseudonym key and the
    table: opaque to the consumer, stable across versions, unlinkable between
    agreements. BLAKE2b's built-in keyed mode is a MAC and costs about a microsecond
    (an OpenSSL HMAC call costs ten times that), cheap enough for every row of a pull."""

    def __init__(self, pseudonymizer: Pseudonymizer, table: Table) -> None:
        derived = pseudonymizer.pseudonym(_RECORD_CONTEXT + table.name.encode())
        self._key = bytes.fromhex(derived[-32:])
        self._stamps = tuple(_is_type(table.c[name], DateTime) for name in natural_key(table))
        self._plain = len(self._stamps) == 1 and not self._stamps[0]

    def _text(self, parts: Sequence[Any]) -> str:
        if self._plain:
            return str(parts[0])
        return "\x00".join(
            "" if p is None else (wire_timestamp(p) or "") if stamp else str(p)
            for p, stamp in zip(parts, self._stamps, strict=True)
        )

    def __call__(self, parts: Sequence[Any]) -> str:
        """The key of the record whose natural key is `parts` (in `natural_key` order)."""
        mac = hashlib.blake2b(self._text(parts).encode(), key=self._key, digest_size=16)
        return RECORD_KEY_PREFIX + mac.hexdigest()


def record_key(pseudonymizer: Pseudonymizer, table: Table, parts: Sequence[Any]) -> str:
    """The record key of one record (see `RecordKeys`)."""
    return RecordKeys(pseudonymizer, table)(parts)


INSPECTION_FIELDS = table_fields(INSPECTION_TABLE)
OPERATOR_LOG_FIELDS = table_fields(OPERATOR_LOG_TABLE)
MEASUREMENT_FIELDS = table_fields(MEASUREMENT_TABLE)

Positioned = tuple[int, dict[str, Any]]


def _columns(table: Table, fields: Iterable[str]) -> list[Any]:
    wanted = set(fields)
    unknown = wanted - _readable(table)
    if unknown:
        raise ViewError(f"{table.name} has no fields {sorted(unknown)}")
    return [table.c[name] for name in sorted(wanted)]


def _pages(
    engine: Engine,
    table: Table,
    fields: Iterable[str],
    where: Any,
    after: int,
    limit: int | None,
    page_size: int,
) -> Iterator[Positioned]:
    """Rows with id > after, in id order, one short transaction per page."""
    if after < 0:
        raise ViewError(f"cursor {after} is negative")
    columns = _columns(table, fields)
    names = [c.name for c in columns]
    cursor, left = after, limit
    while left is None or left > 0:
        size = page_size if left is None else min(page_size, left)
        statement = select(table.c.id, *columns).where(table.c.id > cursor)
        if where is not None:
            statement = statement.where(where)
        with engine.connect() as connection:
            page = connection.execute(statement.order_by(table.c.id).limit(size)).all()
        for record in page:
            cursor = record[0]
            yield cursor, dict(zip(names, record[1:], strict=True))
        if left is not None:
            left -= len(page)
        if len(page) < size:
            return


def inspections(
    engine: Engine,
    order_id: str | None,
    fields: Iterable[str],
    *,
    after: int = 0,
    limit: int | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> Iterator[Positioned]:
    """Inspection rows of one order (None: of every order, the live stream), by cursor."""
    where = None if order_id is None else INSPECTION_TABLE.c.order_id == order_id
    return _pages(engine, INSPECTION_TABLE, fields, where, after, limit, page_size)


def operator_logs(
    engine: Engine,
    order_id: str | None,
    fields: Iterable[str],
    *,
    after: int = 0,
    limit: int | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> Iterator[Positioned]:
    """Operator log rows of one order (None: every order), by cursor."""
    where = None if order_id is None else OPERATOR_LOG_TABLE.c.order_id == order_id
    return _pages(engine, OPERATOR_LOG_TABLE, fields, where, after, limit, page_size)


def order_batches(engine: Engine, order_id: str) -> frozenset[str]:
    """The order's batches (from batches, products and inspections) and, through the
    local genealogy, every batch they were made from."""
    direct = union(
        select(_BATCH.c.batch_id).where(_BATCH.c.order_id == order_id),
        select(_PRODUCT.c.batch_id).where(_PRODUCT.c.order_id == order_id),
        select(INSPECTION_TABLE.c.batch_id).where(INSPECTION_TABLE.c.order_id == order_id),
    )
    with engine.connect() as connection:
        found = {b for (b,) in connection.execute(direct) if b is not None}
        frontier = set(found)
        while frontier:
            parents = connection.execute(
                select(_EDGE.c.parent_batch_id).where(_EDGE.c.child_batch_id.in_(frontier))
            )
            frontier = {p for (p,) in parents} - found
            found |= frontier
    return frozenset(found)


def process_along_genealogy(
    engine: Engine,
    order_id: str,
    fields: Iterable[str],
    *,
    after: int = 0,
    limit: int | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> Iterator[Positioned]:
    """Process measurements of the order or of any batch in its genealogy, by cursor.

    Each row is attributed to `order_id` (its ``order_id`` field is set to it),
    because that is the order scope under which it is shared and deleted.
    """
    table, where, _ = _genealogy_source(engine, order_id)
    for cursor, row in _pages(engine, table, fields, where, after, limit, page_size):
        row["order_id"] = order_id
        yield cursor, row


def _genealogy_source(engine: Engine, order_id: str) -> tuple[Table, Any, str]:
    batches = order_batches(engine, order_id)
    table = MEASUREMENT_TABLE
    return table, or_(table.c.order_id == order_id, table.c.batch_id.in_(batches)), order_id


def asset_source(
    engine: Engine, asset: Asset, order_id: str | None
) -> tuple[Table, Any, str | None]:
    """What `read_asset` queries: the table, the WHERE clause of the order scope (None:
    every row) and, for a view that attributes every row to the order it is read for
    (process data along a genealogy), that order."""
    if asset.kind is AssetKind.PROCESS_ALONG_GENEALOGY:
        if order_id is None:
            raise ViewError(f"asset {asset.asset_id} is read for one order at a time")
        return _genealogy_source(engine, order_id)
    if not asset.tables:
        raise ViewError(f"asset {asset.asset_id} ({asset.kind}) has no rows to read")
    name = asset.tables[0]
    for table in (OPERATOR_LOG_TABLE, INSPECTION_TABLE):
        if table.name == name:
            where = None if order_id is None else table.c[asset.order_key] == order_id
            return table, where, None
    raise ViewError(f"asset {asset.asset_id}: no view over table {name}")


def incremental_refusal(asset: Asset) -> str | None:
    """Why `asset` cannot be pulled incrementally (None: it can).

    A watermark stands for "every change after this id". That holds for a view over one
    table scoped by the row's own order; process data along a genealogy is scoped by
    the genealogy, which can grow to take in rows stored long before the watermark."""
    if asset.kind is AssetKind.PROCESS_ALONG_GENEALOGY:
        return (
            f"asset {asset.asset_id} is pulled in full: a batch joining the order's genealogy "
            "brings rows older than any watermark (a full pull stores nothing twice)"
        )
    return None


def read_asset(
    engine: Engine,
    asset: Asset,
    order_id: str | None,
    fields: Iterable[str],
    *,
    after: int = 0,
    limit: int | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> Iterator[Positioned]:
    """The rows of `asset` (of one order, or all for a stream) after cursor `after`."""
    table, where, attributed = asset_source(engine, asset, order_id)
    for cursor, row in _pages(engine, table, fields, where, after, limit, page_size):
        if attributed is not None:
            row[asset.order_key] = attributed
        yield cursor, row


def parse_position(position: str) -> int:
    """The view cursor of a transfer checkpoint's position ("" is the start)."""
    if not position:
        return 0
    if not position.isdigit():
        raise ViewError(f"position {position!r} is not a view cursor")
    return int(position)


# ------------------------------------------------------ provider streaming
#
# The transfer path reads and releases whole pages: the database returns only the
# columns the agreement grants (plus the order key) of rows in the order scope (a
# WHERE clause), as raw driver tuples; the page is then checked and transformed
# column by column (order scope again, timestamps to their canonical text,
# pseudonyms, finite floats) and encoded as JSON lines. Enforcement happens before
# encoding, and only the granted columns are ever encoded.

DEFAULT_BATCH_ROWS = 500


def _is_type(column: Any, kind: type) -> bool:
    kind_of = column.type
    return isinstance(kind_of, kind) or isinstance(getattr(kind_of, "impl", None), kind)


def _slow_timestamp(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        raise ViewError(f"{value!r} is not a timestamp")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)  # stored as UTC without a zone (SQLite)
    return format_datetime(value)


def wire_timestamp(value: Any) -> str | None:
    """A stored timestamp as it goes on the wire (``format_datetime``'s form).

    SQLite keeps UTC text, ``YYYY-MM-DD HH:MM:SS[.ffffff][+00:00]`` (written by
    SQLAlchemy or by the ingest's driver): that is rewritten without parsing;
    anything else (a PostgreSQL datetime, another offset) is parsed.
    """
    if type(value) is str and len(value) >= 19 and value[10] == " ":
        tail = value[19:]
        if tail[-6:] == "+00:00":
            tail = tail[:-6]
        if not tail or tail == ".000000":
            return f"{value[:10]}T{value[11:19]}Z"
        if len(tail) == 7 and tail[0] == "." and tail[1:].isdigit():
            return f"{value[:10]}T{value[11:19]}{tail}Z"
    return _slow_timestamp(value)


def wire_timestamps(values: list[Any]) -> list[str | None]:
    """`wire_timestamp` of a column; the ingest's ``...HH:MM:SS+00:00`` inline (most rows)."""
    return [
        f"{v[:10]}T{v[11:19]}Z"
        if type(v) is str and len(v) == 25 and v[10] == " " and v[19:] == "+00:00"
        else wire_timestamp(v)
        for v in values
    ]


def read_pages(
    engine: Engine,
    table: Table,
    fields: Sequence[str],
    where: Any,
    *,
    after: int = 0,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> Iterator[tuple[list[Sequence[Any]], bool]]:
    """Pages of raw driver rows (no type conversion) with id > after, in id order:
    (rows, last). Each row holds `fields` in the order given, then its id. A short
    page is the last; when the last page is full, an empty last page follows."""
    if after < 0:
        raise ViewError(f"cursor {after} is negative")
    if page_size < 1:
        raise ViewError("page_size must be >= 1")
    unknown = set(fields) - _readable(table)
    if unknown or len(set(fields)) != len(fields):
        raise ViewError(f"{table.name}: cannot read fields {list(fields)}")
    columns = [table.c[name] for name in fields]
    cursor = after
    while True:
        statement = select(*columns, table.c.id).where(table.c.id > cursor)
        if where is not None:
            statement = statement.where(where)
        statement = statement.order_by(table.c.id).limit(page_size)
        compiled = statement.compile(
            dialect=engine.dialect, compile_kwargs={"render_postcompile": True}
        )
        params = compiled.construct_params()
        args: Any = (
            tuple(params[key] for key in compiled.positiontup or ())
            if compiled.positional
            else params
        )
        with engine.connect() as connection:
            driver = connection.connection.cursor()
            try:
                driver.execute(compiled.string, args)
                page: list[Sequence[Any]] = list(driver.fetchall())
            finally:
                driver.close()
        last = len(page) < page_size
        yield page, last
        if last:
            return
        cursor = page[-1][-1]


@dataclass(frozen=True)
class EncodedPage:
    """Released rows as JSON lines (see `connector.transfer.join_rows`) with their orders."""

    payload: bytes
    count: int
    order_ids: tuple[str, ...]
    order_index: tuple[int, ...]


class PageEncoder:
    """The gate of one request compiled for whole pages of `table`: `encode(page)`
    keeps the rows in scope, projects them on the granted fields, pseudonymises and
    encodes them, each with its record envelope (a withdrawn record as a tombstone).
    `read_fields` are the columns to read: the granted fields (sorted, the order they
    are encoded in), then those of the order key, the natural key and the version
    columns that are not granted."""

    def __init__(self, gate: ReleaseGate, table: Table, attributed: str | None = None) -> None:
        if not gate.decision.allowed:
            raise ViewError(gate.decision.reason)
        asset = gate.asset
        self.gate = gate
        self.order_key = asset.order_key
        self.attributed = attributed
        self.fields = sorted(gate.decision.allowed_fields)
        self.table = table
        extra = (self.order_key, *natural_key(table), *VERSION_COLUMNS)
        self.read_fields = list(self.fields)
        self.read_fields += [name for name in dict.fromkeys(extra) if name not in self.fields]
        self._order_at = self.read_fields.index(self.order_key)
        self._key_at = [self.read_fields.index(name) for name in natural_key(table)]
        self._keys = RecordKeys(gate.pseudonymizer, table)
        self._version_at = self.read_fields.index("version")
        self._withdrawn_at = self.read_fields.index("withdrawn_at")
        self._order = gate.request.order_id  # None: the scope is decided row by row
        self._timestamps = [n for n in self.read_fields if _is_type(table.c[n], DateTime)]
        self._floats = [n for n in self.fields if _is_type(table.c[n], Float)]
        self._pseudonymized = [n for n in self.fields if n in asset.pseudonymized]
        self._pseudonyms: dict[Any, str] = {}

    def _pseudonym(self, value: Any) -> Any:
        if value is None:
            return None
        out = self._pseudonyms.get(value)
        if out is None:
            out = self.gate.pseudonymizer.pseudonym(value)
            if len(self._pseudonyms) < 100_000:
                self._pseudonyms[value] = out
        return out

    def _rows(self, page: list[Sequence[Any]], names: list[str]) -> list[dict[str, Any]]:
        """Dicts of `names` (a prefix of the read fields) with timestamps on the wire form."""
        # dict(zip(names, row)) per row, in C; zip stops at the names, leaving out the id
        rows: list[dict[str, Any]] = list(map(dict, map(zip, repeat(names), page)))
        for name in self._timestamps:
            if name in names:
                at = self.read_fields.index(name)
                stamps = wire_timestamps([row[at] for row in page])
                for row, stamp in zip(rows, stamps, strict=True):
                    row[name] = stamp
        return rows

    def encode(self, page: list[Sequence[Any]]) -> EncodedPage:
        if self._order is not None:
            return self._encode_uniform(page)
        return self._encode_per_row(page)

    def _encode_uniform(self, page: list[Sequence[Any]]) -> EncodedPage:
        order = self._order
        assert order is not None
        if self.attributed is None:  # the query is scoped; this is the check
            at = self._order_at
            orders = [row[at] for row in page]
            if orders.count(order) != len(orders):
                page = [row for row in page if row[at] == order]
        if not page:
            return EncodedPage(b"", 0, (), ())
        rows = self._rows(page, self.fields)
        if self.attributed is not None and self.order_key in self.fields:
            for row in rows:
                row[self.order_key] = self.attributed
        for name in self._pseudonymized:
            pseudonyms = list(map(self._pseudonym, [row[name] for row in rows]))
            for row, pseudonym in zip(rows, pseudonyms, strict=True):
                row[name] = pseudonym
        for name in self._floats:
            self._check_finite(page, [row[name] for row in rows])
        rows = [self._envelope(raw, row) for raw, row in zip(page, rows, strict=True)]
        try:
            body = orjson.dumps(rows)  # one call per page: [{...},{...},...]
        except orjson.JSONEncodeError as exc:
            raise ViewError(f"{self.gate.asset.asset_id}: a row has no JSON form: {exc}") from None
        # Rows are flat, non-empty objects and a '"' inside a string is escaped, so '},{"'
        # occurs only between two rows: the page becomes JSON lines (RowBatch checks the count).
        payload = body[1:-1].replace(b'},{"', b'}\n{"')
        return EncodedPage(payload, len(rows), (order,), ())

    def _encode_per_row(self, page: list[Sequence[Any]]) -> EncodedPage:
        lines: list[bytes] = []
        row_orders: list[str] = []
        for raw, row in zip(page, self._rows(page, self.read_fields), strict=True):
            if self.attributed is not None:
                row[self.order_key] = self.attributed
            released = self.gate(row)
            if released is None:
                continue
            for name in self._floats:
                self._check_finite([raw], [released.get(name)])
            lines.append(row_bytes(self._envelope(raw, released)))
            order = row[self.order_key]
            row_orders.append(order if isinstance(order, str) else "")
        order_ids = tuple(dict.fromkeys(row_orders))
        index_of = {o: i for i, o in enumerate(order_ids)}
        order_index = tuple(index_of[o] for o in row_orders) if len(order_ids) > 1 else ()
        return EncodedPage(b"\n".join(lines), len(lines), order_ids, order_index)

    def _envelope(self, raw: Sequence[Any], row: dict[str, Any]) -> dict[str, Any]:
        """`row` (released) with the record envelope of `raw` (as read), or a tombstone."""
        key = self._keys([raw[i] for i in self._key_at])
        version = raw[self._version_at]
        if raw[self._withdrawn_at] is not None:
            return {KEY_FIELD: key, VERSION_FIELD: version, WITHDRAWN_FIELD: True}
        return {KEY_FIELD: key, VERSION_FIELD: version, **row}

    def _check_finite(self, page: list[Sequence[Any]], values: list[Any]) -> None:
        present = [value for value in values if value is not None]
        if math.isfinite(sum(present)):  # a NaN or an infinity makes the sum one
            return
        for raw, value in zip(page, values, strict=True):  # which row (or an overflow)
            if value is not None and not math.isfinite(value):
                raise ViewError(
                    f"{self.gate.asset.asset_id}: row {raw[-1]} holds {value!r}, "
                    "which has no JSON form"
                )


def stream_batches(
    process: TransferProcess,
    engine: Engine,
    gate: ReleaseGate,
    *,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> Iterator[tuple[RowBatch, TransferProcess]]:
    """Provider side: the rows of the transfer's asset that may leave, after the
    process's position, in batches with the advanced process.

    One page of `batch_rows` rows is read per batch; each batch's checkpoint
    position is the cursor of the last row *read* (released or not), so a resumed
    transfer does not read dropped rows again. The last batch has ``last=True``
    (it may be empty). Save the process a batch comes with once the batch is
    handed to the transport.
    """
    if batch_rows < 1:
        raise ViewError("batch_rows must be >= 1")
    if not gate.decision.allowed:
        raise ViewError(f"transfer {process.transfer_id}: {gate.decision.reason}")
    if gate.request.order_id != process.order_id:
        raise ViewError(f"transfer {process.transfer_id}: the gate is for another order")
    table, where, attributed = asset_source(engine, gate.asset, process.order_id)
    encoder = PageEncoder(gate, table, attributed)
    after = parse_position(process.checkpoint.position)
    pages = read_pages(engine, table, encoder.read_fields, where, after=after, page_size=batch_rows)
    for page, last in pages:
        encoded = encoder.encode(page)
        position = str(page[-1][-1]) if page else None
        process = advance_payload(process, encoded.payload, encoded.count, position)
        batch = RowBatch(
            process.transfer_id,
            encoded.payload,
            encoded.count,
            encoded.order_ids,
            encoded.order_index,
            process.checkpoint,
            last,
        )
        yield batch, process


# ------------------------------------------------------- live subscription


def live_page(
    engine: Engine, gate: ReleaseGate, after: int, limit: int
) -> tuple[list[BatchRow], list[str], int]:
    """Provider side of the live stream: the rows released after cursor `after` (at most
    `limit` read), each with its record envelope (a withdrawn record as a tombstone) and
    its cursor, and the cursor to continue after. The record keys are those a pull under
    the same agreement gives, so the consumer stores a record seen on both once."""
    table, _, _ = asset_source(engine, gate.asset, None)
    keys = natural_key(table)
    make_key = RecordKeys(gate.pseudonymizer, table)
    fields = gate.query_fields | set(keys) | set(VERSION_COLUMNS)
    rows: list[BatchRow] = []
    positions: list[str] = []
    position = after
    order_key = gate.asset.order_key
    for cursor, row in read_asset(engine, gate.asset, None, fields, after=after, limit=limit):
        position = cursor
        released = gate(row)
        if released is None:
            continue
        key = make_key([row[name] for name in keys])
        envelope: dict[str, Any] = {KEY_FIELD: key, VERSION_FIELD: row["version"]}
        if row["withdrawn_at"] is not None:
            envelope[WITHDRAWN_FIELD] = True
        else:
            envelope.update(released)
        order = row.get(order_key)
        rows.append(BatchRow(row_bytes(envelope), order if isinstance(order, str) else ""))
        positions.append(str(cursor))
    return rows, positions, position


@dataclass(frozen=True)
class StreamRequest:
    """Consumer -> provider: subscribe to a live asset under an agreement."""

    subscription_id: str
    agreement_id: str
    purpose: str
    fields: frozenset[str] | None = None  # None: every granted field
    after_position: str = ""
    from_start: bool = False


@dataclass(frozen=True)
class StreamEvent:
    """Provider -> consumer: new rows of a live stream (none: a heartbeat)."""

    subscription_id: str
    rows: tuple[BatchRow, ...]
    positions: tuple[str, ...]
    sent_at: datetime

    def __post_init__(self) -> None:
        if len(self.rows) != len(self.positions):
            raise ViewError("a stream event has one position per row")

    @property
    def heartbeat(self) -> bool:
        return not self.rows
