"""What travels in a transfer: rows on the wire, their record envelope, and the checked cursor.

The cursor is a `Checkpoint`: how many rows have passed (offset) and a digest
chained over the batches that carried them. Rows travel as JSON, one object per
line: a batch's payload is its rows' bytes joined by ``\\n`` (JSON never holds a
raw newline), and ``d[0] = sha256("qdspace.v1/transfer\\0" + transfer id)``,
``d[k+1] = sha256(d[k] + u64be(rows in batch k) + payload of batch k)`` (a batch
without rows leaves the digest as it is). The provider advances it for what it
sends, the consumer for what it commits, batch by batch; each batch (`RowBatch`)
carries the provider's checkpoint so the consumer can check it, and at COMPLETED
both final checkpoints must be equal (the rules that use the cursor are the state
machine's, `connector.transfer`).

An incremental pull asks for the changes after a watermark (`parse_since`): the final
position of the consumer's last completed pull of the same scope, where the transfer's
genesis checkpoint then starts instead of the beginning.

Every row carries its *record envelope* (`RecordMeta`): ``@key``, the provider's
record key (opaque, derived per agreement; the same for a record on a pull and on the
live stream), ``@v``, its version, and, for a withdrawn record, ``@withdrawn: true``
with no other field (a tombstone). The consumer keeps one copy per (agreement, key),
the highest version it has seen, which makes pulls idempotent and lets corrections
and withdrawals reach a copy it already holds.

This is a room of its own because the provider's page encoder (`connector.encoding`),
the consumer's store of received rows and the wire codecs need the byte format and the
cursor arithmetic without the protocol's state machine.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Annotated, Any, NamedTuple

import msgspec
import orjson

from qdspace.connector.contract_errors import (
    RecordEnvelopeError,
    TransferCursorError,
    TransferIntegrityError,
)
from qdspace.policies.canonical import CanonicalEncodingError, to_jsonable
from qdspace.util.numbers import decimal

_GENESIS_CONTEXT = b"qdspace.v1/transfer\x00"


def row_bytes(row: Mapping[str, Any]) -> bytes:
    """The bytes of a row on the wire: compact JSON, keys sorted, datetimes as in
    `policies.canonical` (UTC, ``Z``). The provider's page encoder
    (`connector.encoding`) writes exactly these bytes without building the row first."""
    try:
        return orjson.dumps(to_jsonable(row), option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as exc:
        raise CanonicalEncodingError(f"row has no JSON form: {exc}") from None


KEY_FIELD = "@key"
VERSION_FIELD = "@v"
WITHDRAWN_FIELD = "@withdrawn"
MAX_RECORD_KEY = 128
#: a version is stored as a signed 64-bit integer: a larger one is refused with the row
MAX_VERSION = 2**63 - 1


class RecordMeta(NamedTuple):
    """The record envelope of a row on the wire (see the module docstring); a tuple,
    made for every row a consumer receives."""

    key: str
    version: int
    withdrawn: bool = False


_MEMBER_NAME = re.compile(rb'"((?:[^"\\]|\\.)*)"\s*:')


def _field_before(payload: bytes, position: int) -> str:
    """The name of the last object member that starts before `position` of a row that is
    not JSON (where the bad value is, for the error; "" when there is none)."""
    names = _MEMBER_NAME.findall(payload[:position])
    return names[-1].decode("utf-8", "replace")[:80] if names else ""


def record_meta(payload: bytes) -> RecordMeta:
    """The envelope of one row's bytes; a row without a usable one is refused."""
    return _parsed_meta(payload)[0]


def _parsed_meta(payload: bytes) -> tuple[RecordMeta, dict[str, Any]]:
    """`record_meta` of a row, and the row as read."""
    try:
        row = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        field = _field_before(payload, exc.pos)
        where = f" (in field {field!r})" if field else ""
        raise RecordEnvelopeError(f"a received row is not JSON{where}: {exc}") from None
    if not isinstance(row, dict):
        raise RecordEnvelopeError("a received row is not a JSON object")
    key, version, withdrawn = row.get(KEY_FIELD), row.get(VERSION_FIELD), row.get(WITHDRAWN_FIELD)
    if not isinstance(key, str) or not 0 < len(key) <= MAX_RECORD_KEY or "\x00" in key:
        raise RecordEnvelopeError(
            f"a received row has no record key ({KEY_FIELD!r}, 1..{MAX_RECORD_KEY} characters"
            ", no NUL)"
        )
    if type(version) is not int or not 1 <= version <= MAX_VERSION:
        raise RecordEnvelopeError(
            f"record {key}: version {version!r} is not an integer in 1..{MAX_VERSION}"
        )
    if withdrawn is None:
        return RecordMeta(key, version), row
    if withdrawn is not True or set(row) != {KEY_FIELD, VERSION_FIELD, WITHDRAWN_FIELD}:
        raise RecordEnvelopeError(
            f"record {key}: a tombstone is {{{KEY_FIELD}, {VERSION_FIELD}, "
            f"{WITHDRAWN_FIELD}: true}} and nothing else"
        )
    return RecordMeta(key, version, True), row


_Key = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_RECORD_KEY)]
_Version = Annotated[int, msgspec.Meta(ge=1, le=MAX_VERSION)]
#: any JSON scalar; msgspec refuses a number beyond a double ("Number out of range"), as
#: orjson does, and anything nested
_Scalar = str | float | bool | None
#: a page whose first row has more members, or longer names, is checked row by row
_MOST_FIELDS, _LONGEST_NAME = 64, 128
_ROW_DECODERS: dict[tuple[str, ...], msgspec.json.Decoder[Any]] = {}
_KEY_OF, _VERSION_OF = attrgetter("f0"), attrgetter("f1")
_WITHDRAWN_OF = attrgetter("f2")


def _row_decoder(first: bytes) -> msgspec.json.Decoder[Any] | None:
    """A msgspec decoder of the rows shaped like `first` (a row `record_meta` accepted):
    the envelope typed as `record_meta` checks it, every other member of `first` any
    JSON scalar, no other member. Cached per member names (a few per agreement)."""
    names = tuple(orjson.loads(first))
    others = [n for n in names if n not in (KEY_FIELD, VERSION_FIELD, WITHDRAWN_FIELD)]
    if len(names) > _MOST_FIELDS or any(len(n) > _LONGEST_NAME for n in names):
        return None
    decoder = _ROW_DECODERS.get(names)
    if decoder is None:
        fields: list[tuple[str, Any, Any]] = [
            ("f0", _Key, msgspec.field(name=KEY_FIELD)),
            ("f1", _Version, msgspec.field(name=VERSION_FIELD)),
            ("f2", bool | None, msgspec.field(name=WITHDRAWN_FIELD, default=None)),
        ]
        fields += [
            (f"f{3 + i}", _Scalar, msgspec.field(name=n, default=None))
            for i, n in enumerate(others)
        ]
        row = msgspec.defstruct("ReceivedRow", fields, forbid_unknown_fields=True, gc=False)
        decoder = msgspec.json.Decoder(row)
        if len(_ROW_DECODERS) >= 256:
            _ROW_DECODERS.clear()
        _ROW_DECODERS[names] = decoder
    return decoder


class Envelopes(NamedTuple):
    """The envelopes of a delivery's rows as columns (`record_envelopes`): slot i is
    record `keys[i]`, version `versions[i]`, a tombstone when i is in `withdrawn`.
    Columns, not a `RecordMeta` per row: the common delivery (first versions, no
    tombstone) then builds no tuple per row, which cost ~0.3 µs per row (and the
    collector's passes over them)."""

    keys: list[str]
    versions: list[int]
    withdrawn: frozenset[int]

    def meta(self, index: int) -> RecordMeta:
        return RecordMeta(self.keys[index], self.versions[index], index in self.withdrawn)


def _columns(metas: Sequence[RecordMeta]) -> Envelopes:
    withdrawn = frozenset(i for i, meta in enumerate(metas) if meta.withdrawn)
    return Envelopes([m.key for m in metas], [m.version for m in metas], withdrawn)


def record_metas(payloads: Sequence[bytes], seqs: Sequence[int] | None = None) -> list[RecordMeta]:
    """The envelopes of a delivery's rows, one `RecordMeta` per row (`record_envelopes`)."""
    keys, versions, withdrawn = record_envelopes(payloads, seqs)
    flags = [index in withdrawn for index in range(len(keys))]
    return list(map(RecordMeta, keys, versions, flags))


def record_envelopes(payloads: Sequence[bytes], seqs: Sequence[int] | None = None) -> Envelopes:
    """The envelopes of a delivery's rows, exactly as `record_meta` of each
    (`read_envelopes`, without the member names)."""
    return read_envelopes(payloads, seqs)[0]


ENVELOPE_FIELDS = frozenset({KEY_FIELD, VERSION_FIELD, WITHDRAWN_FIELD})


def read_envelopes(
    payloads: Sequence[bytes], seqs: Sequence[int] | None = None
) -> tuple[Envelopes, frozenset[str]]:
    """The envelopes of a delivery's rows, exactly as `record_meta` of each (the same
    rows refused, the same envelopes), in one pass where it is safe, and the member
    names of its rows (all of them, the envelope's included): what the consumer checks
    against the fields its agreement grants. Where the rows pass the first row's
    msgspec type (the common page: one shape), the names are the first row's, since
    the type forbids any other; a row checked by `record_meta` adds its own.

    Every row must be what the copy's readers (orjson) will read back: a JSON object, no
    NaN or infinity, no number beyond a double, valid UTF-8. `record_meta` builds each
    row's dict to know that (orjson), ~2 µs per row. Here the first row is checked so,
    and its member names give a msgspec type for the page (`_row_decoder`): the envelope
    as `record_meta` types it, every other member a JSON scalar and no member else.
    msgspec checks each row against it without a dict per row, refusing what orjson
    refuses (NaN, ``1e999``, a 400-digit integer, bad escapes, trailing bytes). Every row
    it does not pass (another shape, nesting, bytes that are not UTF-8, a tombstone) is
    checked by `record_meta` as before, whose refusal names the row (its seq, when
    given) and where in it."""
    if not payloads:
        return Envelopes([], [], frozenset()), frozenset()
    names: set[str] = set()
    first = _record_meta_at(payloads[0], _seq(seqs, 0), names)
    decoder = _row_decoder(payloads[0])
    if decoder is None:
        rest = (_record_meta_at(p, _seq(seqs, i), names) for i, p in enumerate(payloads) if i)
        return _columns([first, *rest]), frozenset(names)
    try:
        rows = list(map(decoder.decode, payloads))
    except ValueError:  # msgspec's DecodeError; UnicodeDecodeError for a bad name
        rest = (_one_meta(decoder, p, _seq(seqs, i), names) for i, p in enumerate(payloads) if i)
        return _columns([first, *rest]), frozenset(names)
    keys: list[str] = list(map(_KEY_OF, rows))
    if "\x00" in "".join(keys):  # (a key PostgreSQL refuses): the row is named, refused
        index = next(i for i, key in enumerate(keys) if "\x00" in key)
        _record_meta_at(payloads[index], _seq(seqs, index))
    versions: list[int] = list(map(_VERSION_OF, rows))
    flags = list(map(_WITHDRAWN_OF, rows))
    if flags.count(None) == len(flags):
        return Envelopes(keys, versions, frozenset()), frozenset(names)
    withdrawn: set[int] = set()
    for index, flag in enumerate(flags):
        if flag is not None:  # a tombstone (or `false`, which is refused): checked whole
            meta = _record_meta_at(payloads[index], _seq(seqs, index))
            keys[index], versions[index] = meta.key, meta.version
            if meta.withdrawn:
                withdrawn.add(index)
    return Envelopes(keys, versions, frozenset(withdrawn)), frozenset(names)


def _one_meta(
    decoder: msgspec.json.Decoder[Any], payload: bytes, seq: int, names: set[str]
) -> RecordMeta:
    """One row's envelope, by msgspec where it passes the row (its names are the first
    row's), else `record_meta` (its names added to `names`)."""
    try:
        row = decoder.decode(payload)
    except ValueError:  # msgspec's DecodeError; UnicodeDecodeError for a bad name
        return _record_meta_at(payload, seq, names)
    if row.f2 is not None:
        return _record_meta_at(payload, seq, names)
    return RecordMeta(row.f0, row.f1)


def _seq(seqs: Sequence[int] | None, index: int) -> int:
    return index if seqs is None else seqs[index]


def _record_meta_at(payload: bytes, seq: int, names: set[str] | None = None) -> RecordMeta:
    """`record_meta`, its refusal naming the row (and, for bad JSON, the field); the
    row's member names added to `names` when given."""
    try:
        meta, row = _parsed_meta(payload)
    except RecordEnvelopeError as exc:
        raise RecordEnvelopeError(f"row seq {seq}: {exc}") from None
    if names is not None:
        names.update(row)
    return meta


def tombstone_bytes(key: str, version: int) -> bytes:
    """The wire bytes of a withdrawn record."""
    return row_bytes({KEY_FIELD: key, VERSION_FIELD: version, WITHDRAWN_FIELD: True})


#: the highest view cursor: a row id, which no store takes beyond a signed 64-bit integer
MAX_VIEW_CURSOR = 2**63 - 1


def view_cursor(position: str) -> int | None:
    """The row id a position names (``""``: 0, the start), None when it names none: a
    position is ASCII decimal digits up to `MAX_VIEW_CURSOR`. (``str.isdigit`` also
    takes ``"²"`` and other scripts' digits, which ``int`` refuses or reads as another
    number, and a database refuses an integer beyond 64 bits: both reached a provider's
    view read as errors no caller could mend.)"""
    if not position:
        return 0
    value = decimal(position)
    return value if value is not None and value <= MAX_VIEW_CURSOR else None


#: the longest position a transfer's stored cursor holds (``cursor_position``, String(256))
POSITION_LENGTH = 256


def position_refusal(position: str) -> str | None:
    """Why `position` is no checkpoint position (None when it is one): a view cursor
    (`view_cursor`) no longer than the stored cursor takes (`POSITION_LENGTH`). Checked
    where a peer's checkpoint is decoded and where a provider takes a resume, before
    anything is stored: a longer one was written into the cursor column (refused after
    it was stored on SQLite, a DataError on PostgreSQL)."""
    if len(position) > POSITION_LENGTH or view_cursor(position) is None:
        return f"position {position[:40]!r} is not a view cursor"
    return None


def row_seqs(positions: Sequence[str], field: str = "positions") -> list[int]:
    """The stream seq of each row of a live delivery, from the positions its provider
    sent (`field`, parallel to the rows): each must be a view cursor (`view_cursor`)
    naming a row, so not ``""`` (the start). Checked where a peer's event or group is
    decoded, before anything is stored: ``int`` read ``"-5"``, ``"1_000"``, ``" 7 "``
    and ``"٣"`` as seqs the provider never wrote, and a position beyond 64 bits reached
    the store as an OverflowError, which no retry mends (a subscription reconnected for
    ever to receive the same event)."""
    seqs = []
    for index, position in enumerate(positions):
        seq = view_cursor(position) if position else None
        if seq is None:
            raise TransferCursorError(
                f"{field}[{index}]: position {position[:40]!r} is not a view cursor (a row id:"
                f" ASCII digits, at most {MAX_VIEW_CURSOR})"
            )
        seqs.append(seq)
    return seqs


def parse_since(since: str) -> str:
    """A watermark as sent (``""``: a full pull); it is a view position (`view_cursor`)."""
    if view_cursor(since) is None:
        raise TransferCursorError(f"watermark {since[:40]!r} is not a view position")
    return since


def join_rows(rows: Iterable[bytes]) -> tuple[bytes, int]:
    """One batch payload (rows joined by newlines) and its row count."""
    items = list(rows)
    for index, item in enumerate(items):
        if b"\n" in item:
            raise TransferIntegrityError(f"row {index} of a batch holds a raw newline")
    return b"\n".join(items), len(items)


def split_rows(payload: bytes, count: int) -> list[bytes]:
    """The rows of a batch payload (see `join_rows`)."""
    return payload.split(b"\n") if count else []


@dataclass(frozen=True)
class Checkpoint:
    """A cursor into a transfer: rows passed so far, the digest chained over the
    batches that carried them, and `position`, the view cursor of the last row passed
    (opaque here; the provider's view resumes strictly after it, see `connector.paging`)."""

    offset: int
    digest: bytes
    position: str = ""

    def __post_init__(self) -> None:
        if self.offset < 0 or len(self.digest) != 32:
            raise TransferCursorError("a checkpoint has offset >= 0 and a 32-byte digest")

    @classmethod
    def genesis(cls, transfer_id: str) -> Checkpoint:
        return cls(0, hashlib.sha256(_GENESIS_CONTEXT + transfer_id.encode()).digest())

    def extend_payload(self, payload: bytes, count: int, position: str | None = None) -> Checkpoint:
        """The checkpoint after one batch of `count` rows whose joined bytes are
        `payload`, the last of them at view cursor `position` (None: unchanged)."""
        where = self.position if position is None else position
        if count == 0:
            if payload:
                raise TransferIntegrityError("a batch without rows has an empty payload")
            return Checkpoint(self.offset, self.digest, where)
        lines = payload.count(b"\n") + 1
        if count < 0 or lines != count:
            raise TransferIntegrityError(f"a batch payload of {lines} lines claims {count} rows")
        h = hashlib.sha256(self.digest)
        h.update(count.to_bytes(8, "big"))
        h.update(payload)
        return Checkpoint(self.offset + count, h.digest(), where)

    def extend(self, rows: Iterable[bytes], position: str | None = None) -> Checkpoint:
        """The checkpoint after one batch of `rows` (each already in its wire bytes)."""
        payload, count = join_rows(rows)
        return self.extend_payload(payload, count, position)

    def extend_rows(
        self, rows: Iterable[Mapping[str, Any]], position: str | None = None
    ) -> Checkpoint:
        return self.extend((row_bytes(row) for row in rows), position)


@dataclass(frozen=True)
class BatchRow:
    """One row on the wire: its JSON bytes and the order it belongs to."""

    payload: bytes
    order_id: str


@dataclass(frozen=True)
class RowBatch:
    """Rows the provider sent in one go, with its checkpoint after them.

    `payload` holds the rows' JSON, one per line (see `join_rows`), `count` how
    many. The order of each row is ``order_ids[order_index[i]]``; when the batch
    spans at most one order `order_index` is empty and every row belongs to
    ``order_ids[0]`` (the common case: a transfer of one order).
    """

    transfer_id: str
    payload: bytes
    count: int
    order_ids: tuple[str, ...]
    order_index: tuple[int, ...]
    checkpoint: Checkpoint
    last: bool = False

    def __post_init__(self) -> None:
        n = self.count
        lines = self.payload.count(b"\n") + 1 if self.payload else 0
        if n < 0 or (lines != n and not (n == 1 and self.payload == b"")):
            raise TransferIntegrityError(
                f"batch of transfer {self.transfer_id}: {lines} lines for {n} rows"
            )
        if n and not self.order_ids:
            raise TransferIntegrityError(
                f"batch of transfer {self.transfer_id}: rows without orders"
            )
        if self.order_index:
            index = self.order_index
            if len(index) != n or max(index) >= len(self.order_ids) or min(index) < 0:
                raise TransferIntegrityError(
                    f"batch of transfer {self.transfer_id}: order index does not fit its rows"
                )
        elif len(self.order_ids) > 1:
            raise TransferIntegrityError(
                f"batch of transfer {self.transfer_id}: several orders but no order index"
            )

    @classmethod
    def of(
        cls, transfer_id: str, rows: Sequence[BatchRow], checkpoint: Checkpoint, last: bool = False
    ) -> RowBatch:
        payload, count = join_rows(r.payload for r in rows)
        orders = tuple(dict.fromkeys(r.order_id for r in rows))
        index = tuple(orders.index(r.order_id) for r in rows) if len(orders) > 1 else ()
        return cls(transfer_id, payload, count, orders, index, checkpoint, last)

    @property
    def first_offset(self) -> int:
        return self.checkpoint.offset - self.count

    def payloads(self) -> list[bytes]:
        return split_rows(self.payload, self.count)

    def orders(self) -> list[str]:
        """The order of each row."""
        if not self.order_index:
            return [self.order_ids[0]] * self.count if self.count else []
        ids = self.order_ids
        return [ids[i] for i in self.order_index]

    @property
    def rows(self) -> tuple[BatchRow, ...]:
        return tuple(map(BatchRow, self.payloads(), self.orders()))
