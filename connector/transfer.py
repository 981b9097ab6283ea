"""The Dataspace Protocol transfer-process state machine, with a resumable, checked cursor.

States and transitions (sender in brackets)::

    (start)    --TransferRequest     [consumer]--> REQUESTED
    REQUESTED  --TransferStart       [provider]--> STARTED     at the genesis checkpoint
    STARTED    --TransferStart       [either]----> STARTED     restart after a broken stream
    SUSPENDED  --TransferStart       [either]----> STARTED     resume
    STARTED    --TransferSuspension  [either]----> SUSPENDED
    SUSPENDED  --TransferSuspension  [either]----> SUSPENDED   no-op
    STARTED    --TransferCompletion  [provider]--> COMPLETED   final checkpoints must match
    COMPLETED  --TransferCompletion  [either]----> COMPLETED   acknowledgement, must match
    REQUESTED | STARTED | SUSPENDED --TransferTermination [either]--> TERMINATED
    TERMINATED --TransferTermination [either]----> TERMINATED  no-op

The cursor is a `Checkpoint`: how many rows have passed (offset) and a digest
chained over the batches that carried them. Rows travel as JSON, one object per
line: a batch's payload is its rows' bytes joined by ``\\n`` (JSON never holds a
raw newline), and ``d[0] = sha256("qdspace.v1/transfer\\0" + transfer id)``,
``d[k+1] = sha256(d[k] + u64be(rows in batch k) + payload of batch k)`` (a batch
without rows leaves the digest as it is). The provider advances it for what it
sends, the consumer for what it commits, batch by batch; each batch carries the
provider's checkpoint so the consumer can check it (`verify_checkpoint`), and at
COMPLETED both final checkpoints must be equal. A resume (TransferStart with a
checkpoint) continues the chain where it stopped, so no row is lost or
duplicated: the consumer only accepts a start at exactly its own checkpoint
(always a batch boundary: it commits whole batches), the provider only at or
before its own (rewinding to what the consumer has and continuing the chain
from the consumer's digest).

An incremental pull asks for the changes after a watermark: `TransferRequest.since`
is the final position of the consumer's last completed pull of the same scope, and the
transfer's genesis checkpoint starts at that position instead of the beginning, so
the digest chain, resume and completion work exactly as for a full pull.

Every row carries its *record envelope* (`RecordMeta`): ``@key``, the provider's
record key (opaque, derived per agreement; the same for a record on a pull and on the
live stream), ``@v``, its version, and, for a withdrawn record, ``@withdrawn: true``
with no other field (a tombstone). The consumer keeps one copy per (agreement, key),
the highest version it has seen, which makes pulls idempotent and lets corrections
and withdrawals reach a copy it already holds.

Messages are idempotent by message id, like in `connector.negotiation`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson

from qdspace.connector.contract_errors import (
    IllegalTransitionError,
    MessageReplayError,
    RecordEnvelopeError,
    TransferCursorError,
    TransferIntegrityError,
    UnauthorizedSenderError,
    UnknownProcessError,
)
from qdspace.connector.negotiation import Role
from qdspace.policies.canonical import CanonicalEncodingError, canonical_json, to_jsonable

_GENESIS_CONTEXT = b"qdspace.v1/transfer\x00"


class TransferState(StrEnum):
    REQUESTED = "REQUESTED"
    STARTED = "STARTED"
    SUSPENDED = "SUSPENDED"
    COMPLETED = "COMPLETED"
    TERMINATED = "TERMINATED"


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


@dataclass(frozen=True)
class RecordMeta:
    """The record envelope of a row on the wire (see the module docstring)."""

    key: str
    version: int
    withdrawn: bool = False


def record_meta(payload: bytes) -> RecordMeta:
    """The envelope of one row's bytes; a row without a usable one is refused."""
    try:
        row = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise RecordEnvelopeError(f"a received row is not JSON: {exc}") from None
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
class TransferRequest:
    """Consumer -> provider: open a transfer under an agreement, for what and which part.

    `purpose`, `order_id` and `fields` are the facts the provider's policy
    decision needs (None fields: every granted field; None order: a stream).
    """

    message_id: str
    transfer_id: str
    sender_id: str
    agreement_id: str
    provider_id: str
    at: datetime
    purpose: str | None = None
    order_id: str | None = None
    fields: frozenset[str] | None = None
    #: the watermark of an incremental pull ("" for a full one): changes after it only
    since: str = ""


@dataclass(frozen=True)
class TransferStart:
    message_id: str
    transfer_id: str
    sender_id: str
    checkpoint: Checkpoint
    at: datetime


@dataclass(frozen=True)
class TransferSuspension:
    message_id: str
    transfer_id: str
    sender_id: str
    reason: str
    at: datetime


@dataclass(frozen=True)
class TransferCompletion:
    message_id: str
    transfer_id: str
    sender_id: str
    checkpoint: Checkpoint
    at: datetime


@dataclass(frozen=True)
class TransferTermination:
    message_id: str
    transfer_id: str
    sender_id: str
    reason: str
    at: datetime


TransferMessage = (
    TransferRequest | TransferStart | TransferSuspension | TransferCompletion | TransferTermination
)


@dataclass(frozen=True)
class TransferProcess:
    """One side's copy of a transfer under an agreement."""

    transfer_id: str
    agreement_id: str
    role: Role
    provider_id: str
    consumer_id: str
    state: TransferState
    checkpoint: Checkpoint
    created_at: datetime
    updated_at: datetime
    final: Checkpoint | None = None
    reason: str | None = None
    seen: tuple[tuple[str, str], ...] = ()
    purpose: str | None = None
    order_id: str | None = None
    fields: frozenset[str] | None = None
    since: str = ""

    @property
    def offset(self) -> int:
        return self.checkpoint.offset


def fingerprint(message: TransferMessage) -> str:
    content = {
        f.name: to_jsonable(_plain(getattr(message, f.name)))
        for f in fields(message)
        if not (f.name == "since" and not getattr(message, f.name))  # as before watermarks
    }
    content["type"] = type(message).__name__
    return hashlib.sha256(canonical_json(content)).hexdigest()


def _plain(value: Any) -> Any:
    if isinstance(value, Checkpoint):
        return {"offset": value.offset, "digest": value.digest.hex(), "position": value.position}
    return value


def _describe(message: TransferMessage) -> str:
    return f"{type(message).__name__} message {message.message_id}"


def open_transfer(request: TransferRequest, role: Role) -> TransferProcess:
    """A transfer process in REQUESTED; the policy decision is the caller's, beforehand.

    An incremental pull's genesis checkpoint is at its watermark (`TransferRequest.since`)."""
    since = parse_since(request.since)
    genesis = Checkpoint.genesis(request.transfer_id)
    return TransferProcess(
        transfer_id=request.transfer_id,
        agreement_id=request.agreement_id,
        role=role,
        provider_id=request.provider_id,
        consumer_id=request.sender_id,
        state=TransferState.REQUESTED,
        checkpoint=replace(genesis, position=since),
        created_at=request.at,
        updated_at=request.at,
        seen=((request.message_id, fingerprint(request)),),
        purpose=request.purpose,
        order_id=request.order_id,
        fields=request.fields,
        since=since,
    )


def _compare(process: TransferProcess, claimed: Checkpoint, what: str) -> None:
    own = process.checkpoint
    if claimed.offset != own.offset:
        raise TransferCursorError(
            f"transfer {process.transfer_id}: {what} at offset {claimed.offset}, "
            f"but the {process.role} is at offset {own.offset}"
        )
    if claimed.digest != own.digest:
        raise TransferIntegrityError(
            f"transfer {process.transfer_id}: {what} digest {claimed.digest.hex()} at offset "
            f"{own.offset} differs from the {process.role}'s {own.digest.hex()}"
        )
    if claimed.position != own.position:
        raise TransferCursorError(
            f"transfer {process.transfer_id}: {what} at position {claimed.position!r}, "
            f"but the {process.role} is at {own.position!r}"
        )


def verify_checkpoint(process: TransferProcess, claimed: Checkpoint) -> None:
    """Check a batch's checkpoint from the provider against the consumer's own."""
    _compare(process, claimed, "peer checkpoint")


def _start(process: TransferProcess, message: TransferStart) -> TransferProcess:
    claimed = message.checkpoint
    if process.state is TransferState.REQUESTED and message.sender_id != process.provider_id:
        raise UnauthorizedSenderError(
            f"transfer {process.transfer_id}: only the provider {process.provider_id} starts it"
        )
    if process.role is Role.CONSUMER or claimed.offset >= process.offset:
        _compare(process, claimed, "start")
    return replace(process, state=TransferState.STARTED, checkpoint=claimed)


def _complete(process: TransferProcess, message: TransferCompletion) -> TransferProcess:
    if process.state is TransferState.COMPLETED:
        assert process.final is not None
        _compare(replace(process, checkpoint=process.final), message.checkpoint, "completion")
        return process
    if message.sender_id != process.provider_id:
        raise UnauthorizedSenderError(
            f"transfer {process.transfer_id}: only the provider {process.provider_id} completes it"
        )
    _compare(process, message.checkpoint, "completion")
    return replace(process, state=TransferState.COMPLETED, final=message.checkpoint)


_S = TransferState
_ALLOWED: dict[type, frozenset[TransferState]] = {
    TransferStart: frozenset({_S.REQUESTED, _S.STARTED, _S.SUSPENDED}),
    TransferSuspension: frozenset({_S.STARTED, _S.SUSPENDED}),
    TransferCompletion: frozenset({_S.STARTED, _S.COMPLETED}),
    TransferTermination: frozenset({_S.REQUESTED, _S.STARTED, _S.SUSPENDED, _S.TERMINATED}),
}


def apply(process: TransferProcess, message: TransferMessage) -> TransferProcess:
    """The transfer after `message` (see the module docstring for the rules)."""
    if message.transfer_id != process.transfer_id:
        raise UnknownProcessError(
            f"{_describe(message)} is for transfer {message.transfer_id}, not {process.transfer_id}"
        )
    digest = fingerprint(message)
    for seen_id, seen_digest in process.seen:
        if seen_id == message.message_id:
            if seen_digest == digest:
                return process
            raise MessageReplayError(
                f"transfer {process.transfer_id}: message id {seen_id} was already used "
                "for a different message"
            )
    if message.sender_id not in (process.provider_id, process.consumer_id):
        raise UnauthorizedSenderError(
            f"transfer {process.transfer_id}: {_describe(message)} from {message.sender_id}, "
            "who is not a party to it"
        )
    if isinstance(message, TransferRequest) or process.state not in _ALLOWED[type(message)]:
        raise IllegalTransitionError(
            f"transfer {process.transfer_id}", process.state.value, _describe(message)
        )
    process = replace(process, seen=(*process.seen, (message.message_id, digest)))
    if isinstance(message, TransferStart):
        process = _start(process, message)
    elif isinstance(message, TransferCompletion):
        process = _complete(process, message)
    elif isinstance(message, TransferSuspension):
        process = replace(process, state=_S.SUSPENDED, reason=message.reason)
    elif process.state is not _S.TERMINATED:
        process = replace(process, state=_S.TERMINATED, reason=message.reason)
    return replace(process, updated_at=message.at)


def advance(
    process: TransferProcess, rows: Iterable[bytes], position: str | None = None
) -> TransferProcess:
    """Move the cursor over one batch of rows sent (provider) or committed (consumer)."""
    payload, count = join_rows(rows)
    return advance_payload(process, payload, count, position)


def advance_payload(
    process: TransferProcess, payload: bytes, count: int, position: str | None = None
) -> TransferProcess:
    """`advance` for a batch already joined (see `join_rows`); STARTED only."""
    if process.state is not TransferState.STARTED:
        raise IllegalTransitionError(
            f"transfer {process.transfer_id}", process.state.value, "moving the cursor"
        )
    return replace(process, checkpoint=process.checkpoint.extend_payload(payload, count, position))


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


def accept_batch(process: TransferProcess, batch: RowBatch) -> TransferProcess:
    """Consumer side: the process after `batch`, once its checkpoint proved the rows
    are exactly the ones the provider sent, in order, right after the consumer's own."""
    if batch.transfer_id != process.transfer_id:
        raise UnknownProcessError(
            f"batch for transfer {batch.transfer_id} offered to {process.transfer_id}"
        )
    if batch.first_offset != process.offset:
        raise TransferCursorError(
            f"transfer {process.transfer_id}: batch starts at offset {batch.first_offset}, "
            f"the consumer is at {process.offset}"
        )
    advanced = advance_payload(process, batch.payload, batch.count, batch.checkpoint.position)
    verify_checkpoint(advanced, batch.checkpoint)
    return advanced
