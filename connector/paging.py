"""Reading assets from the provider's QDM: page by page, by a stable cursor.

`read_asset` turns an asset plus an order id and a cursor into rows, sorted by a
stable cursor (the table's insertion id, so rows added later come after and a resumed
read neither skips nor repeats), fetched page by page in short transactions: a long
transfer never holds a transaction open. `read_pages` is the transfer path's reader:
the same pages as raw driver tuples of exactly the columns asked for, for
`encoding.PageEncoder` to check and encode a page at a time. `read_live` is the live
stream's: the rows of the orders a subscriber's gate can release, skipping the other
customers' rows in the query, and the cursor to continue after.

Because a correction or withdrawal moves the record to a fresh id (`connector.qdm`),
reading after a cursor finds every change after it: that is what an incremental pull
is. `natural_key` names the columns that identify a record across its versions (the
record key is derived from them, see `encoding.RecordKeys`).

A scope made of several index searches (process data along a genealogy: the order's
own readings and each batch's) is read as a merge of their id streams (`id_merge`), so
a pull costs the rows it returns, not the table.

Why separate: with `id_merge`, which it reads merged scopes with, this is the only
module of the release path that touches the database; it decides which rows are read
(the order scope as a WHERE clause, the genealogy of a process view), not whether they
may leave (`release_gate`) nor how they are written (`encoding`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import Engine, Table, and_, bindparam, func, select, union

from qdspace.connector.assets import Asset, AssetKind
from qdspace.connector.contract_errors import ViewError
from qdspace.connector.id_merge import IdMerge, MergedScope
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
from qdspace.connector.transfer_wire import view_cursor

DEFAULT_PAGE_SIZE = 1000
#: ids one statement reads the rows of at most (bound: SQLite's limit is 32,766 values;
#: written out: ~40 kB of SQL, far under SQLite's default 1 MB statement)
ID_LIST_MAX = 5000
#: a page's ids spanning fewer than this many ids per id are read as one id range (the
#: rows between them that are not in the scope are dropped right here, before any gate
#: or encoder) instead of by an IN list: a range is read in order, an IN list one
#: look-up at a time (bench/genealogy_read.py)
DENSE_SPAN = 4
#: orders a live read lists in its statement at most (more: it reads every order's rows)
ORDER_LIST_MAX = ID_LIST_MAX


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


def natural_key(table: Table) -> tuple[str, ...]:
    """The columns that identify a record of `table` across its versions."""
    return NATURAL_KEYS[_KIND_OF_TABLE[table.name]]


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
    if isinstance(where, MergedScope):
        yield from _merged_pages(engine, table, columns, where, after, limit, page_size)
        return
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


def _merged_pages(
    engine: Engine,
    table: Table,
    columns: list[Any],
    scope: MergedScope,
    after: int,
    limit: int | None,
    page_size: int,
) -> Iterator[Positioned]:
    names = [c.name for c in columns]
    merge, left = IdMerge(table, scope, after), limit
    by_ids = (
        select(table.c.id, *columns)
        .where(table.c.id.in_(bindparam("ids", expanding=True)))
        .order_by(table.c.id)
    )
    while left is None or left > 0:
        size = page_size if left is None else min(page_size, left)
        with engine.connect() as connection:
            ids = merge.next_ids(connection, size)
            page: list[Any] = []
            for lo in range(0, len(ids), ID_LIST_MAX):
                part = {"ids": ids[lo : lo + ID_LIST_MAX]}
                page += connection.execute(by_ids, part).all()
        for record in page:
            yield record[0], dict(zip(names, record[1:], strict=True))
        if left is not None:
            left -= len(ids)
        if len(ids) < size:
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
    """The measurements of the order itself or of a batch of its genealogy, as one index
    search each, merged by id (`id_merge`: an OR of them walked the whole table)."""
    batches = order_batches(engine, order_id)
    table = MEASUREMENT_TABLE
    terms = (table.c.order_id == order_id, *(table.c.batch_id == b for b in sorted(batches)))
    return table, MergedScope(terms), order_id


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


def read_live(
    engine: Engine,
    asset: Asset,
    orders: Collection[str] | None,
    fields: Iterable[str],
    *,
    after: int,
    limit: int,
) -> tuple[list[Positioned], int]:
    """A live stream's next rows of `asset` after cursor `after` (at most `limit`), of
    `orders` only (None: of every order), and the cursor to continue after.

    The other orders' rows are skipped by the query (by the index on the order key), not
    read and dropped: a customer's stream costs its own rows, not every customer's. The
    cursor is the last row's; after a short read, every row of `orders` up to the table's
    last id when the read began was read, so it is that id: a quiet customer's stream
    moves on with the table and never looks at the skipped rows again. An asset whose
    rows carry no order, or more orders than `ORDER_LIST_MAX`, is read whole (the cursor
    then the last row's, or `after`)."""
    table, where, _ = asset_source(engine, asset, None)
    key = asset.order_key
    if orders is None or key not in table.c or len(orders) > ORDER_LIST_MAX:
        rows = list(_pages(engine, table, fields, where, after, limit, DEFAULT_PAGE_SIZE))
        return rows, rows[-1][0] if rows else after
    with engine.connect() as connection:
        upto = int(connection.execute(select(func.max(table.c.id))).scalar() or 0)
    scope = and_(table.c.id <= upto, table.c[key].in_(sorted(orders)))
    rows = list(_pages(engine, table, fields, scope, after, limit, DEFAULT_PAGE_SIZE))
    if len(rows) < limit:
        return rows, max(after, upto)
    return rows, rows[-1][0] if rows else after


def parse_position(position: str) -> int:
    """The view cursor of a transfer checkpoint's position ("" is the start)."""
    cursor = view_cursor(position)
    if cursor is None:
        raise ViewError(f"position {position[:40]!r} is not a view cursor")
    return cursor


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
    if isinstance(where, MergedScope):
        yield from _merged_raw_pages(engine, table, columns, where, after, page_size)
        return
    cursor = after
    # compiled once per read, the cursor a parameter: compiling per page cost about
    # 0.15 us per row of a 2,000-row page (bench/PROFILE-transfer.md, round 2)
    statement = select(*columns, table.c.id).where(table.c.id > bindparam("qdspace_after"))
    if where is not None:
        statement = statement.where(where)
    compiled = statement.order_by(table.c.id).limit(page_size).compile(dialect=engine.dialect)
    while True:
        # this page's SQL text and values (an IN list of the scope rendered out)
        state = compiled.construct_expanded_state({"qdspace_after": cursor})
        args: Any = state.positional_parameters if compiled.positional else state.parameters
        with engine.connect() as connection:
            driver = connection.connection.cursor()
            try:
                driver.execute(state.statement, args)
                page: list[Sequence[Any]] = list(driver.fetchall())
            finally:
                driver.close()
        last = len(page) < page_size
        yield page, last
        if last:
            return
        cursor = page[-1][-1]


def _merged_raw_pages(
    engine: Engine,
    table: Table,
    columns: list[Any],
    scope: MergedScope,
    after: int,
    page_size: int,
) -> Iterator[tuple[list[Sequence[Any]], bool]]:
    """`read_pages` of a merged scope: each page's ids from the merge, then their rows
    (raw driver tuples, as the single-statement path gives them)."""
    merge = IdMerge(table, scope, after)
    # the ids are the database's own integers: written into the statement, which spares
    # binding (and SQLAlchemy's rendering of) a parameter per id, ~5 us each
    compiled = select(*columns, table.c.id).compile(dialect=engine.dialect)
    if compiled.params:
        raise ViewError(f"{table.name}: columns with parameters cannot be read by id")
    key = f"{table.name}.id"
    while True:
        page: list[Sequence[Any]] = []
        with engine.connect() as connection:
            ids = merge.next_ids(connection, page_size)
            driver = connection.connection.cursor()
            try:
                for lo in range(0, len(ids), ID_LIST_MAX):
                    part = ids[lo : lo + ID_LIST_MAX]
                    first, last_id = int(part[0]), int(part[-1])
                    if last_id - first < DENSE_SPAN * len(part):
                        # most ids of the stretch are the page's (a batch's readings are
                        # mostly one stretch): read the stretch in id order, keep those
                        driver.execute(
                            f"{compiled} WHERE {key} >= {first} AND {key} <= {last_id} "
                            f"ORDER BY {key}"
                        )
                        wanted = set(part)
                        page += [row for row in driver.fetchall() if row[-1] in wanted]
                    else:
                        listed = ",".join(map(str, map(int, part)))
                        driver.execute(f"{compiled} WHERE {key} IN ({listed}) ORDER BY {key}")
                        page += driver.fetchall()
            finally:
                driver.close()
        # the end is where the ids end: a row purged between its id and its read is
        # missing from its page, and does not end the read early
        last = len(ids) < page_size
        yield page, last
        if last:
            return
