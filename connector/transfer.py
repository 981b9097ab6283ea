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

The cursor (`Checkpoint`, in `connector.transfer_wire`) is advanced batch by batch by the
provider for what it sends and by the consumer for what it commits; each batch carries
the provider's checkpoint so the consumer can check it (`verify_checkpoint`), and at
COMPLETED both final checkpoints must be equal. A resume (TransferStart with a
checkpoint) continues the chain where it stopped, so no row is lost or
duplicated: the consumer only accepts a start at exactly its own checkpoint
(always a batch boundary: it commits whole batches), the provider only at its own
or at an earlier one whose position it can vouch for (`check_rewind`: rewinding to
what the consumer has and continuing the chain from the consumer's digest).
The chain hashes whole batches, so a consumer cut off after the provider completed,
resuming with another batch size, ends at another final
checkpoint: until the consumer acknowledged the completion the provider rewinds a
COMPLETED transfer too (`reread`) and completes the new chain under its own message id.

An incremental pull (`TransferRequest.since`) starts its genesis checkpoint at the
watermark instead of the beginning, so the digest chain, resume and completion work
exactly as for a full pull.

Messages are idempotent by message id, like in `connector.negotiation` (the messages and
their fingerprint are `connector.transfer_messages`). A process keeps every message it
applied, so their number is bounded: a consumer that resumed or re-read one transfer
over and over (each a message the provider keeps, and reads back with the process) made
its history grow without end. At `MAX_MESSAGES` a process takes nothing more but its
termination (`TransferHistoryFull`); a new transfer goes on from there. A suspension of
a suspended transfer, or a termination of a terminated one, changes nothing and is not
kept (each was another row, up to that bound, on every transfer a member held). This module is
the pure machine: no I/O, no bytes format; the stores and transports around it keep its
processes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from qdspace.connector.contract_errors import (
    IllegalTransitionError,
    MessageReplayError,
    TransferCursorError,
    TransferHistoryFull,
    TransferIntegrityError,
    UnauthorizedSenderError,
    UnknownProcessError,
)
from qdspace.connector.negotiation import Role
from qdspace.connector.transfer_messages import (
    TransferCompletion,
    TransferMessage,
    TransferRequest,
    TransferStart,
    TransferSuspension,
    TransferTermination,
    fingerprint,
)
from qdspace.connector.transfer_wire import (
    Checkpoint,
    RowBatch,
    join_rows,
    parse_since,
    position_refusal,
    view_cursor,
)

#: the messages one transfer process keeps: a resume or a re-read is one each, and a
#: transfer cut off a few dozen times is already an unusual one
MAX_MESSAGES = 1000


class TransferState(StrEnum):
    REQUESTED = "REQUESTED"
    STARTED = "STARTED"
    SUSPENDED = "SUSPENDED"
    COMPLETED = "COMPLETED"
    TERMINATED = "TERMINATED"


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


def _describe(message: TransferMessage) -> str:
    return f"{type(message).__name__} message {message.message_id}"


def open_transfer(
    request: TransferRequest, role: Role, received_at: datetime | None = None
) -> TransferProcess:
    """A transfer process in REQUESTED; the policy decision is the caller's, beforehand.

    An incremental pull's genesis checkpoint is at its watermark (`TransferRequest.since`).
    `received_at`: our clock when a peer's request opens it (`connector.peer_time`)."""
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
        created_at=request.at if received_at is None else received_at,
        updated_at=request.at if received_at is None else received_at,
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


def check_rewind(process: TransferProcess, claimed: Checkpoint, what: str) -> None:
    """Provider: refuse a consumer's claim to resume at a checkpoint before its own
    unless the provider can vouch for what it can of it.

    The provider keeps only its latest checkpoint, so of an earlier one it can check
    the position, not the digest; an honest consumer is behind it by the batches that
    were in flight (it commits whole batches after the provider saved them). The claim
    must name a position (`position_refusal`), at or after the transfer's watermark and
    strictly before the provider's own position (the rows the consumer holds were read
    before the provider's last one); at offset 0 it is the genesis digest (no rows
    held: nothing to vouch for but the start), at a later offset its position is past
    the watermark (a row was read to release one). A forged digest then only spoils the
    consumer's own chain; the rows streamed are the provider's rows after a position
    it had reached, and its record stays its own until the stream passes that position
    (`node.runtime.contracts_transfer`)."""
    own = process.checkpoint
    why = position_refusal(claimed.position)
    if why is None:
        at, since, mine = (
            view_cursor(p) or 0 for p in (claimed.position, process.since, own.position)
        )
        if not (since <= at < mine or at == mine == since):  # a chain without positions
            why = f"position {at} is not from {since} and before {mine}"
        elif (
            claimed.offset == 0 and claimed.digest != Checkpoint.genesis(process.transfer_id).digest
        ):
            why = "offset 0 with another digest than the transfer's genesis"
        elif claimed.offset > 0 and at == since:
            why = f"offset {claimed.offset} at the watermark, where no row was read"
    if why is not None:
        raise TransferCursorError(
            f"transfer {process.transfer_id}: {what} at offset {claimed.offset} before the "
            f"{process.role}'s {own.offset} refused: {why}"
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
    else:
        check_rewind(process, claimed, "start")
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


def _room_for(process: TransferProcess, *, terminating: bool = False) -> None:
    """Refuse one more message past `MAX_MESSAGES` (but the termination of a process
    that is not terminated yet)."""
    if len(process.seen) < MAX_MESSAGES:
        return
    if terminating and process.state is not _S.TERMINATED:
        return
    raise TransferHistoryFull(
        f"transfer {process.transfer_id} holds {len(process.seen)} messages, the most one "
        "transfer keeps: request a new transfer"
    )


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
    # the sender before the replay: an outsider is refused alike whether or not the
    # message id it sent was used (MessageReplayError would tell it the parties' ids)
    if message.sender_id not in (process.provider_id, process.consumer_id):
        raise UnauthorizedSenderError(
            f"transfer {process.transfer_id}: {_describe(message)} from {message.sender_id}, "
            "who is not a party to it"
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
    if isinstance(message, TransferRequest) or process.state not in _ALLOWED[type(message)]:
        raise IllegalTransitionError(
            f"transfer {process.transfer_id}", process.state.value, _describe(message)
        )
    if (isinstance(message, TransferSuspension) and process.state is _S.SUSPENDED) or (
        isinstance(message, TransferTermination) and process.state is _S.TERMINATED
    ):
        return process  # it is so already: nothing to keep (see the module docstring)
    _room_for(process, terminating=isinstance(message, TransferTermination))
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


def _completion_base(transfer_id: str, sender: Role) -> str:
    return f"{transfer_id}:{'p' if sender is Role.PROVIDER else 'c'}-complete"


def completion_id(process: TransferProcess, sender: Role) -> str:
    """The message id of `sender`'s TransferCompletion of `process`: ``<id>:p-complete``
    (provider) or ``<id>:c-complete`` (the consumer's acknowledgement). A provider that
    completes a transfer again after a rewind (`reread`) numbers the next one, so each
    completion it signs has its own id."""
    base = _completion_base(process.transfer_id, sender)
    used = {seen_id for seen_id, _ in process.seen}
    if base not in used:
        return base
    n = 2
    while f"{base}-{n}" in used:
        n += 1
    return f"{base}-{n}"


def acknowledged(process: TransferProcess) -> bool:
    """Whether the consumer acknowledged the provider's completion of `process` (its
    TransferCompletion, `completion_id` for `Role.CONSUMER`, is among the messages seen)."""
    ack = _completion_base(process.transfer_id, Role.CONSUMER)
    return any(seen_id == ack for seen_id, _ in process.seen)


def reread(process: TransferProcess, resume_from: Checkpoint) -> tuple[TransferProcess, bool]:
    """Provider: a Pull of a COMPLETED transfer from the consumer's `resume_from`.

    Returns the process to stream from and whether what is streamed replaces the stored
    chain. The digest chain hashes whole batches, so a consumer that was cut off after
    the provider had sent (and completed) everything, and resumes with another batch
    size, builds a different final checkpoint than the one the provider completed with.
    Until the consumer has acknowledged the completion (`completion_id` for
    `Role.CONSUMER` is among the messages seen), the provider therefore rewinds to the
    consumer's checkpoint like any resume and completes the new chain; afterwards a
    re-read sends the rows again and changes nothing. A checkpoint beyond the final one,
    or at its offset with other contents, is refused.
    """
    if process.state is not TransferState.COMPLETED or process.final is None:
        raise IllegalTransitionError(
            f"transfer {process.transfer_id}", process.state.value, "re-reading it"
        )
    final = process.final
    base = replace(process, state=TransferState.STARTED, checkpoint=resume_from)
    if resume_from.offset >= final.offset:
        _compare(replace(process, checkpoint=final), resume_from, "re-read")
        return base, False
    check_rewind(replace(process, checkpoint=final), resume_from, "re-read")
    if acknowledged(process):
        return base, False
    # the new chain ends in a completion of its own: refused now, not after the rows
    _room_for(process)
    return replace(base, final=None), True


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


class ResentRows:
    """What a pull sends again of what the provider had sent (the node's
    `ProviderTransfers.pull`; beside `check_rewind` and `reread`, which decide where it may
    start).

    `restart`: the pull re-sends from the start (the consumer claims no row while the
    provider sent some) or re-reads an acknowledged transfer: a re-read, counted at
    once. Any other rewind is counted once it has re-sent more than `allowance` rows
    (two batches: an honest consumer is behind by at most the batches in flight), so
    a claimed offset that hides how far back its position lies is a re-read too.
    `past`: the stream has passed the provider's own position (what it sends now is
    new, so its record moves on)."""

    def __init__(
        self, own: TransferProcess, start: TransferProcess, save: bool, allowance: int
    ) -> None:
        mine = own.final if own.state is TransferState.COMPLETED and own.final else own.checkpoint
        self.position = view_cursor(mine.position) or 0
        behind = start.checkpoint.offset < mine.offset
        self.restart = behind and (start.checkpoint.offset == 0 or not save)
        self.counted = self.restart
        self.past = not behind
        self.rows = 0
        self.allowance = allowance

    def add(self, batch: RowBatch, after: TransferProcess) -> bool:
        """Take one batch sent; True when the rewind becomes a re-read with it."""
        if self.past:
            return False
        if (view_cursor(after.checkpoint.position) or 0) > self.position:
            self.past = True  # (its rows are mostly new ones)
            return False
        self.rows += batch.count
        if self.counted or self.rows <= self.allowance:
            return False
        self.counted = True
        return True
