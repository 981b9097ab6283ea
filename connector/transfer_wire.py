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
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import attrgetter
from typing import Annotated, Any, NamedTuple

import msgspec
import numpy as np
import numpy.typing as npt
import orjson

from qdspace.connector.contract_errors import (
    RecordEnvelopeError,
    TransferCursorError,
    TransferIntegrityError,
)
from qdspace.policies.canonical import CanonicalEncodingError, to_jsonable

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
    try:
        row = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        field = _field_before(payload, exc.pos)
        where = f" (in field {field!r})" if field else ""
        raise RecordEnvelopeError(f"a received row is not JSON{where}: {exc}") from None
    if not isinstance(row, dict):
        raise RecordEnvelopeError("a received row is not a JSON object")
    key, version, withdrawn = row.get(KEY_FIELD), row.get(VERSION_FIELD), row.get(WITHDRAWN_FIELD)
    if not isinstance(key, str) or not 0 < len(key) <= MAX_RECORD_KEY:
        raise RecordEnvelopeError(
            f"a received row has no record key ({KEY_FIELD!r}, 1..{MAX_RECORD_KEY} characters)"
        )
    if type(version) is not int or version < 1:
        raise RecordEnvelopeError(f"record {key}: version {version!r} is not an integer >= 1")
    if withdrawn is None:
        return RecordMeta(key, version)
    if withdrawn is not True or set(row) != {KEY_FIELD, VERSION_FIELD, WITHDRAWN_FIELD}:
        raise RecordEnvelopeError(
            f"record {key}: a tombstone is {{{KEY_FIELD}, {VERSION_FIELD}, "
            f"{WITHDRAWN_FIELD}: true}} and nothing else"
        )
    return RecordMeta(key, version, True)


class _Envelope(msgspec.Struct, gc=False):
    """The envelope as msgspec reads it: the three fields decoded, every other value only
    checked for JSON syntax and skipped (no object built: a third of `orjson.loads`)."""

    key: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_RECORD_KEY)] = msgspec.field(
        name=KEY_FIELD
    )
    version: Annotated[int, msgspec.Meta(ge=1)] = msgspec.field(name=VERSION_FIELD)
    withdrawn: bool | None = msgspec.field(name=WITHDRAWN_FIELD, default=None)


_ENVELOPE = msgspec.json.Decoder(_Envelope)
_KEY_OF, _VERSION_OF = attrgetter("key"), attrgetter("version")
_WITHDRAWN_OF = attrgetter("withdrawn")
#: bytes that may stand before a JSON number's mantissa (a sign counts: conservative)
_NUMBER_START = np.zeros(256, dtype=bool)
_NUMBER_START[list(b":,[ \t\r\n-")] = True
_MANTISSA = np.zeros(256, dtype=bool)  # a mantissa's bytes after its sign
_MANTISSA[list(b"0123456789.")] = True
_LONGEST_MANTISSA = 200
_EIGHT = np.arange(8)
#: orjson refuses nesting deeper than this; msgspec's own limit is Python's recursion limit
_ORJSON_DEPTH = 1024


def record_metas(payloads: Sequence[bytes], seqs: Sequence[int] | None = None) -> list[RecordMeta]:
    """The envelopes of a delivery's rows, exactly as `record_meta` of each (the same
    rows refused), but checked in one pass where it is safe.

    Every row must be what the copy's readers (orjson) will read back: a JSON object, no
    NaN or infinity, no number that is not a finite double, valid UTF-8. msgspec checks
    each row's JSON syntax without building its values, which leaves three differences
    to orjson, each tested for first: a number too large for a double (skipped, not
    refused: `_RISKY_NUMBER` over the page), bytes that are not UTF-8 (skipped: the fast
    path takes ASCII pages only) and nesting (refused earlier than orjson, while Python's
    recursion limit is below orjson's). A page any of them flags, or any row msgspec
    refuses or finds a tombstone in, is checked row by row by `record_meta`, which
    names the first bad row (its seq, when given) and where in it."""
    page = b"\n".join(payloads)
    if page.isascii() and sys.getrecursionlimit() < _ORJSON_DEPTH and _doubles_only(page):
        try:
            envelopes = list(map(_ENVELOPE.decode, payloads))
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            pass  # the exact check below names the row and what is wrong with it
        else:
            withdrawn = list(map(_WITHDRAWN_OF, envelopes))
            made = zip(map(_KEY_OF, envelopes), map(_VERSION_OF, envelopes), repeat(False))
            metas: list[RecordMeta] = list(map(tuple.__new__, repeat(RecordMeta), made))
            if withdrawn.count(None) != len(withdrawn):  # tombstones: each is checked whole
                for index, flag in enumerate(withdrawn):
                    if flag is not None:
                        metas[index] = _record_meta_at(payloads[index], _seq(seqs, index))
            return metas
    return [_record_meta_at(payload, _seq(seqs, i)) for i, payload in enumerate(payloads)]


def _doubles_only(page: bytes) -> bool:
    """False when some number on `page` may be beyond a double (orjson refuses it as
    infinity, msgspec skips it): an exponent of three digits or more ("1e999",
    "-2.5E+308") or a run of 151 digits or more (with an exponent of two digits at most,
    a number needs 210 digits before its point to reach 1.8e308). Conservative: text
    inside a string may look like one too ("x,1e999"), which only costs the exact
    check. Over the whole page in numpy, a few passes of simple comparisons: an ``e``
    followed by three digits is rare outside hex text, and each is followed back over
    its digits to what stands before it."""
    a = np.frombuffer(page, dtype=np.uint8)
    n = a.size
    if n < 8:
        return b"e" not in page.lower()  # too short for a number and an object around it
    sample = a[::25]  # a run of >= 175 digits holds 7 samples in a row
    digit = (sample >= 48) & (sample <= 57)
    if digit.size >= 7 and (digit[:-6] & digit[1:-5] & digit[2:-4] & digit[3:-3]
                            & digit[4:-2] & digit[5:-1] & digit[6:]).any():  # fmt: skip
        return False
    head, after = a[: n - 1], a[1:]
    marks, other, shifted = _scratch(n - 1)  # no fresh arrays: their page faults cost more
    np.equal(head, 101, out=marks)  # 'e' or 'E', then '+' or a digit (or ,-./: conservative)
    np.logical_or(marks, np.equal(head, 69, out=other), out=marks)
    np.less(np.subtract(after, 43, out=shifted), 15, out=other)
    np.logical_and(marks, other, out=marks)
    words = marks[: marks.size - marks.size % 8].view(np.uint64)  # where any mark is, 8 at a time
    at = (np.flatnonzero(words)[:, None] * 8 + _EIGHT).ravel()
    e = np.concatenate((at[marks[at]], np.flatnonzero(marks[words.size * 8 :]) + words.size * 8))
    e = e[e < n - 4]  # a row ends in '}': an exponent closer to the end is no number
    first = e + 1 + (a[e + 1] == 43)  # after an optional '+'
    three = ((a[first] - 48) < 10) & ((a[first + 1] - 48) < 10) & ((a[first + 2] - 48) < 10)
    j = e[three] - 1
    for _ in range(_LONGEST_MANTISSA):  # back over each candidate's mantissa
        if not j.size:
            return True
        inside = _MANTISSA[a[np.maximum(j, 0)]] & (j >= 0)
        if not inside.any():
            return not (_NUMBER_START[a[np.maximum(j, 0)]] | (j < 0)).any()
        j = j - inside
    return False


_SCRATCH = threading.local()


def _scratch(
    size: int,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_], npt.NDArray[np.uint8]]:
    """Three arrays of `size` for `_doubles_only`, this thread's, grown as needed."""
    held: npt.NDArray[np.uint8] | None = getattr(_SCRATCH, "arrays", None)
    if held is None or held.shape[1] < size:
        held = np.empty((3, max(size, 1 << 20)), dtype=np.uint8)
        _SCRATCH.arrays = held
    return held[0, :size].view(np.bool_), held[1, :size].view(np.bool_), held[2, :size]


def _seq(seqs: Sequence[int] | None, index: int) -> int:
    return index if seqs is None else seqs[index]


def _record_meta_at(payload: bytes, seq: int) -> RecordMeta:
    """`record_meta`, its refusal naming the row (and, for bad JSON, the field)."""
    try:
        return record_meta(payload)
    except RecordEnvelopeError as exc:
        raise RecordEnvelopeError(f"row seq {seq}: {exc}") from None


def tombstone_bytes(key: str, version: int) -> bytes:
    """The wire bytes of a withdrawn record."""
    return row_bytes({KEY_FIELD: key, VERSION_FIELD: version, WITHDRAWN_FIELD: True})


def parse_since(since: str) -> str:
    """A watermark as sent (``""``: a full pull); it is a view position, digits only."""
    if since and not since.isdigit():
        raise TransferCursorError(f"watermark {since!r} is not a view position")
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
            if len(self.order_index) != n or max(self.order_index) >= len(self.order_ids):
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
