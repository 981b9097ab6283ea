"""Encoding released rows for the wire: a transfer's pages and the live stream's events.

The transfer path reads and releases whole pages: the database returns only the
columns the agreement grants (plus the order key) of rows in the order scope (a WHERE
clause), as raw driver tuples (`paging.read_pages`); the page is then checked and
transformed column by column (order scope again, timestamps to their canonical text,
pseudonyms, finite floats) and encoded as JSON lines (`PageEncoder`), column by column
into a template of the row (`page_json`). Enforcement happens before encoding, and only
the granted columns are ever encoded.
`stream_batches` turns the pages into a transfer's batches with the advanced process;
`live_page` is the live stream's provider side.

Every row leaves with its record envelope (see `connector.transfer_wire`): a record key
derived from the table and the record's natural key under the agreement's own key
(`RecordKeys`: opaque, stable across versions, the same on a pull and on the live
stream, unlinkable between agreements) and its version; a withdrawn record leaves as
a tombstone, and only if the row itself would have passed the gate.

Why separate: this is the hot path of a transfer, written for speed (a page at a time,
one JSON call per column, no dict per row, cached pseudonyms), and its correctness
rests on agreeing with the row-at-a-time gate (`release_gate`) and on giving the same
bytes and record keys whichever way a record leaves.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from itertools import repeat
from operator import is_not
from typing import Any

import orjson
from sqlalchemy import DateTime, Engine, Float, Table

from qdspace.connector.contract_errors import ViewError
from qdspace.connector.page_json import (
    JsonColumn,
    PageJson,
    json_values,
    wire_timestamp,
    wire_timestamp_values,
    wire_timestamps,
)
from qdspace.connector.paging import (
    asset_source,
    natural_key,
    parse_position,
    read_live,
    read_pages,
)
from qdspace.connector.pseudonym import Pseudonymizer
from qdspace.connector.qdm import VERSION_COLUMNS
from qdspace.connector.release_gate import ReleaseGate
from qdspace.connector.transfer import TransferProcess, advance_payload
from qdspace.connector.transfer_wire import (
    KEY_FIELD,
    VERSION_FIELD,
    WITHDRAWN_FIELD,
    BatchRow,
    RowBatch,
    row_bytes,
    view_cursor,
)

DEFAULT_BATCH_ROWS = 500


def _is_type(column: Any, kind: type) -> bool:
    kind_of = column.type
    return isinstance(kind_of, kind) or isinstance(getattr(kind_of, "impl", None), kind)


_RECORD_CONTEXT = b"qdspace.v1/record\x00"
#: not None (a C-level test for `filter`)
_is_value = partial(is_not, None)
RECORD_KEY_PREFIX = "rec_"


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

    def json_many(self, columns: Sequence[Sequence[Any]]) -> list[bytes]:
        """The keys of a page's records, from their natural-key `columns`, each as its
        JSON string (``"rec_..."``)."""
        texts = map(str, columns[0]) if self._plain else map(self._text, zip(*columns, strict=True))
        copy = hashlib.blake2b(key=self._key, digest_size=16).copy  # the key block hashed once
        digests: list[str] = []
        append = digests.append
        for text in texts:
            mac = copy()
            mac.update(text.encode())
            append(mac.hexdigest())
        # hex digits need no escaping; one split makes the page's strings in C
        quoted = f'"{RECORD_KEY_PREFIX}' + f'"\n"{RECORD_KEY_PREFIX}'.join(digests) + '"'
        return quoted.encode().split(b"\n")

    def __call__(self, parts: Sequence[Any]) -> str:
        """The key of the record whose natural key is `parts` (in `natural_key` order)."""
        mac = hashlib.blake2b(self._text(parts).encode(), key=self._key, digest_size=16)
        return RECORD_KEY_PREFIX + mac.hexdigest()


def record_key(pseudonymizer: Pseudonymizer, table: Table, parts: Sequence[Any]) -> str:
    """The record key of one record (see `RecordKeys`)."""
    return RecordKeys(pseudonymizer, table)(parts)


@dataclass(frozen=True)
class EncodedPage:
    """Released rows as JSON lines (see `connector.transfer_wire.join_rows`) with their orders."""

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
        self._names = (KEY_FIELD, VERSION_FIELD, *self.fields)  # a row's keys, sorted
        self._json = PageJson(self._names)
        # a tombstone's bytes around its key and version (`row_bytes` of its dict)
        self._tombstone = (
            b"{" + orjson.dumps(KEY_FIELD) + b":",
            b"," + orjson.dumps(VERSION_FIELD) + b":",
            b"," + orjson.dumps(WITHDRAWN_FIELD) + b":true}",
        )

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
        """A page of one order, column by column: each granted column is transformed
        once (timestamps, attribution, pseudonyms, the finite check) and written as JSON
        values, the record keys are computed for the whole page, and the rows (envelope
        first, then the granted fields in order: keys sorted) are joined in C from the
        columns (`page_json.PageJson`). The bytes are those of `row_bytes` of each row
        with its envelope (tests/unit/connector/test_page_encoding.py holds them to the
        row gate's and to the dict-per-row encoder's)."""
        order = self._order
        assert order is not None
        if not page:
            return EncodedPage(b"", 0, (), ())
        columns = list(zip(*page, strict=True))
        if self.attributed is None:  # the query is scoped; this is the check
            at = self._order_at
            if columns[at].count(order) != len(page):
                page = [row for row in page if row[at] == order]
                if not page:
                    return EncodedPage(b"", 0, (), ())
                columns = list(zip(*page, strict=True))
        n = len(page)
        try:
            values = self._released(page, columns)  # checked for every row, as the gate does
            versions = json_values(columns[self._version_at])
        except orjson.JSONEncodeError as exc:
            raise ViewError(f"{self.gate.asset.asset_id}: a row has no JSON form: {exc}") from None
        keys = self._keys.json_many([columns[i] for i in self._key_at])
        payload = self._json.join([keys, versions, *values], n)
        withdrawn = columns[self._withdrawn_at]
        if withdrawn.count(None) != n:  # else no row to look at (most pages)
            lines = payload.split(b"\n")  # no row holds a raw newline (JSON escapes it)
            for i, when in enumerate(withdrawn):
                if when is not None:  # a withdrawn record leaves as a tombstone
                    version = versions if isinstance(versions, bytes) else versions[i]
                    start, middle, end = self._tombstone
                    lines[i] = b"".join((start, keys[i], middle, version, end))
            payload = b"\n".join(lines)
        return EncodedPage(payload, n, (order,), ())

    def _released(
        self, page: list[Sequence[Any]], columns: list[tuple[Any, ...]]
    ) -> list[JsonColumn]:
        """The granted columns of `page` (`columns`, one per read field) as they leave,
        in JSON: timestamps in their wire form, the attributed order, pseudonyms; floats
        checked."""
        out: list[JsonColumn] = []
        for name, column in zip(self.fields, columns, strict=False):
            if self.attributed is not None and name == self.order_key:
                attributed = self.attributed
                if name in self._pseudonymized:
                    attributed = self._pseudonym(attributed)
                out.append(orjson.dumps(attributed))
                continue
            values: Sequence[Any] = column
            if name in self._timestamps:
                if name not in self._pseudonymized:
                    out.append(wire_timestamp_values(values))
                    continue
                values = wire_timestamps(values)
            if name in self._pseudonymized:
                values = list(map(self._pseudonym, values))
            if name in self._floats:
                self._check_finite(page, values)
            out.append(json_values(values))
        return out

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

    def _check_finite(self, page: list[Sequence[Any]], values: Sequence[Any]) -> None:
        missing = values.count(None)
        if missing == len(values):
            return
        present = values if not missing else list(filter(_is_value, values))
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
) -> Generator[tuple[RowBatch, TransferProcess]]:
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
    the same agreement gives, so the consumer stores a record seen on both once.

    Only the rows of the orders the gate can let out (`ReleaseGate.orders`: this
    customer's, in the agreement's scope) are read; the gate still decides each. Every
    row up to the cursor returned that the gate lets out is in this page or an earlier
    one (`paging.read_live`), which is what a heartbeat's position promises."""
    table, _, _ = asset_source(engine, gate.asset, None)
    keys = natural_key(table)
    make_key = RecordKeys(gate.pseudonymizer, table)
    fields = gate.query_fields | set(keys) | set(VERSION_COLUMNS)
    rows: list[BatchRow] = []
    positions: list[str] = []
    order_key = gate.asset.order_key
    read, position = read_live(engine, gate.asset, gate.orders, fields, after=after, limit=limit)
    for cursor, row in read:
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
    #: on a heartbeat, the cursor the stream stands at ("": not said); the consumer
    #: resumes after it (a provider sends it before any row and then every few seconds)
    position: str = ""

    def __post_init__(self) -> None:
        if len(self.rows) != len(self.positions):
            raise ViewError("a stream event has one position per row")
        if self.position and view_cursor(self.position) is None:
            raise ViewError(f"stream position {self.position[:40]!r} is not a view cursor")

    @property
    def heartbeat(self) -> bool:
        return not self.rows
