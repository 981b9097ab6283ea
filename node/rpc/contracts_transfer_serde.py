"""Proto <-> domain conversion for transfers and live streams.

A transfer travels as control messages (request, start, suspension, completion,
termination) and row batches whose checkpoints the consumer verifies; a live
subscription as a request and a stream of events with rows and positions. Both carry
rows and field sets, so they share one room; the basics (times, required ids, field
sets) come from `contracts_serde`, and decoding refuses what the domain could not hold
with `WireFormatError`, as every family does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from qdspace.connector.contract_errors import ContractError
from qdspace.connector.encoding import StreamEvent, StreamRequest
from qdspace.connector.transfer import TransferProcess, TransferState
from qdspace.connector.transfer_messages import (
    TransferCompletion,
    TransferMessage,
    TransferRequest,
    TransferStart,
    TransferSuspension,
    TransferTermination,
)
from qdspace.connector.transfer_wire import (
    BatchRow,
    Checkpoint,
    RowBatch,
    position_refusal,
    row_seqs,
)
from qdspace.node.errors import WireFormatError
from qdspace.node.rpc.contracts_serde import (
    datetime_from_us,
    datetime_to_us,
    fields_from_proto,
    fields_to_proto,
    process_id,
    required,
)
from qdspace.protocols.v1 import subscription_pb2, transfer_pb2

# ---------------------------------------------------------------- transfer


def checkpoint_to_proto(checkpoint: Checkpoint) -> transfer_pb2.Checkpoint:
    return transfer_pb2.Checkpoint(
        offset=checkpoint.offset, digest=checkpoint.digest, position=checkpoint.position
    )


def checkpoint_from_proto(message: transfer_pb2.Checkpoint) -> Checkpoint:
    """A checkpoint as sent; its position must be one (`position_refusal`), so a peer's
    bad position is refused here and never reaches a stored cursor."""
    if (why := position_refusal(message.position)) is not None:
        raise WireFormatError(f"checkpoint: {why}")
    try:
        return Checkpoint(message.offset, message.digest, message.position)
    except ContractError as exc:
        raise WireFormatError(f"checkpoint: {exc}") from None


def transfer_message_to_proto(message: TransferMessage) -> transfer_pb2.TransferMessage:
    out = transfer_pb2.TransferMessage(
        message_id=message.message_id,
        transfer_id=message.transfer_id,
        sender_id=message.sender_id,
        at_unix_us=datetime_to_us(message.at),
    )
    if isinstance(message, TransferRequest):
        fields, all_fields = fields_to_proto(message.fields)
        out.request.CopyFrom(
            transfer_pb2.TransferRequest(
                agreement_id=message.agreement_id,
                provider_id=message.provider_id,
                purpose=message.purpose or "",
                order_id=message.order_id or "",
                fields=fields,
                all_fields=all_fields,
                since=message.since,
            )
        )
    elif isinstance(message, TransferStart):
        out.start.checkpoint.CopyFrom(checkpoint_to_proto(message.checkpoint))
    elif isinstance(message, TransferSuspension):
        out.suspension.reason = message.reason
    elif isinstance(message, TransferCompletion):
        out.completion.checkpoint.CopyFrom(checkpoint_to_proto(message.checkpoint))
    else:
        out.termination.reason = message.reason
    return out


def transfer_message_from_proto(message: transfer_pb2.TransferMessage) -> TransferMessage:
    head = (
        required(message.message_id, "message_id"),
        process_id(message.transfer_id, "transfer_id"),
        required(message.sender_id, "sender_id"),
    )
    at = datetime_from_us(message.at_unix_us, "at_unix_us")
    match message.WhichOneof("body"):
        case "request":
            body = message.request
            return TransferRequest(
                *head,
                agreement_id=required(body.agreement_id, "agreement_id"),
                provider_id=required(body.provider_id, "provider_id"),
                at=at,
                purpose=body.purpose or None,
                order_id=body.order_id or None,
                fields=fields_from_proto(body.fields, body.all_fields),
                since=body.since,
            )
        case "start":
            return TransferStart(*head, checkpoint_from_proto(message.start.checkpoint), at)
        case "suspension":
            return TransferSuspension(*head, message.suspension.reason, at)
        case "completion":
            checkpoint = checkpoint_from_proto(message.completion.checkpoint)
            return TransferCompletion(*head, checkpoint, at)
        case "termination":
            return TransferTermination(*head, message.termination.reason, at)
    raise WireFormatError(f"transfer message {message.message_id} has no body")


def transfer_ack_to_proto(process: TransferProcess) -> transfer_pb2.TransferAck:
    return transfer_pb2.TransferAck(
        transfer_id=process.transfer_id,
        state=process.state.value,
        checkpoint=checkpoint_to_proto(process.checkpoint),
    )


@dataclass(frozen=True)
class TransferAckView:
    transfer_id: str
    state: TransferState
    checkpoint: Checkpoint


def transfer_ack_from_proto(message: transfer_pb2.TransferAck) -> TransferAckView:
    try:
        state = TransferState(message.state)
    except ValueError:
        raise WireFormatError(f"unknown transfer state {message.state!r}") from None
    return TransferAckView(message.transfer_id, state, checkpoint_from_proto(message.checkpoint))


def _rows_to_proto(rows: Sequence[BatchRow]) -> list[transfer_pb2.Row]:
    return [transfer_pb2.Row(json=r.payload, order_id=r.order_id) for r in rows]


def _rows_from_proto(rows: Sequence[transfer_pb2.Row]) -> tuple[BatchRow, ...]:
    return tuple(BatchRow(r.json, r.order_id) for r in rows)


def row_batch_to_proto(batch: RowBatch) -> transfer_pb2.RowBatch:
    return transfer_pb2.RowBatch(
        transfer_id=batch.transfer_id,
        payload=batch.payload,
        row_count=batch.count,
        order_ids=batch.order_ids,
        order_index=batch.order_index,
        checkpoint=checkpoint_to_proto(batch.checkpoint),
        last=batch.last,
    )


def _varint(value: int) -> bytes:
    """A non-negative protobuf varint."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_PAYLOAD_TAG = b"\x2a"  # field 5 (payload), length-delimited


def row_batch_wire(batch: RowBatch) -> bytes:
    """``row_batch_to_proto(batch).SerializeToString()``, the payload copied once.

    A batch's payload (~570 kB for 2,000 rows) is copied into the message and copied
    again by its serialisation, ~0.12 µs per row on the provider. Here the fields before
    the payload (1 to 4) and after it (6 to 8) are serialised by protobuf as two small
    messages and joined around the payload's own field, in field order: the same bytes
    (tests/unit/node/test_contract_serde.py holds them to ``SerializeToString()``)."""
    head: bytes = transfer_pb2.RowBatch(
        transfer_id=batch.transfer_id,
        checkpoint=checkpoint_to_proto(batch.checkpoint),
        last=batch.last,
    ).SerializeToString()
    tail: bytes = transfer_pb2.RowBatch(
        row_count=batch.count, order_ids=batch.order_ids, order_index=batch.order_index
    ).SerializeToString()
    if not batch.payload:
        return head + tail
    return b"".join((head, _PAYLOAD_TAG, _varint(len(batch.payload)), batch.payload, tail))


def row_batch_from_proto(message: transfer_pb2.RowBatch) -> RowBatch:
    try:
        return RowBatch(
            transfer_id=process_id(message.transfer_id, "transfer_id"),
            payload=message.payload,
            count=message.row_count,
            order_ids=tuple(message.order_ids),
            order_index=tuple(message.order_index),
            checkpoint=checkpoint_from_proto(message.checkpoint),
            last=message.last,
        )
    except ContractError as exc:
        raise WireFormatError(f"row batch: {exc}") from None


@dataclass(frozen=True)
class PullRequest:
    transfer_id: str
    resume_from: Checkpoint
    max_batch_rows: int = 0


def pull_request_to_proto(request: PullRequest) -> transfer_pb2.PullRequest:
    return transfer_pb2.PullRequest(
        transfer_id=request.transfer_id,
        resume_from=checkpoint_to_proto(request.resume_from),
        max_batch_rows=request.max_batch_rows,
    )


def pull_request_from_proto(message: transfer_pb2.PullRequest) -> PullRequest:
    if message.max_batch_rows < 0:
        raise WireFormatError("max_batch_rows is negative")
    return PullRequest(
        process_id(message.transfer_id, "transfer_id"),
        checkpoint_from_proto(message.resume_from),
        message.max_batch_rows,
    )


# ------------------------------------------------------------ subscription


def stream_request_to_proto(request: StreamRequest) -> subscription_pb2.SubscribeRequest:
    fields, all_fields = fields_to_proto(request.fields)
    return subscription_pb2.SubscribeRequest(
        subscription_id=request.subscription_id,
        agreement_id=request.agreement_id,
        purpose=request.purpose,
        fields=fields,
        all_fields=all_fields,
        after_position=request.after_position,
        from_start=request.from_start,
    )


def stream_request_from_proto(message: subscription_pb2.SubscribeRequest) -> StreamRequest:
    return StreamRequest(
        subscription_id=required(message.subscription_id, "subscription_id"),
        agreement_id=required(message.agreement_id, "agreement_id"),
        purpose=message.purpose,
        fields=fields_from_proto(message.fields, message.all_fields),
        after_position=message.after_position,
        from_start=message.from_start,
    )


def stream_event_to_proto(event: StreamEvent) -> subscription_pb2.SubscriptionEvent:
    return subscription_pb2.SubscriptionEvent(
        subscription_id=event.subscription_id,
        rows=_rows_to_proto(event.rows),
        positions=list(event.positions),
        sent_at_unix_us=datetime_to_us(event.sent_at),
        heartbeat=event.heartbeat,
        position=event.position,
    )


def stream_event_from_proto(message: subscription_pb2.SubscriptionEvent) -> StreamEvent:
    """An event as sent; every row's position must be a row id (`row_seqs`), so a
    provider's bad one is refused here, naming it, and never reaches the store."""
    sent_at = datetime_from_us(message.sent_at_unix_us, "sent_at_unix_us")
    try:
        row_seqs(message.positions)
        return StreamEvent(
            subscription_id=message.subscription_id,
            rows=_rows_from_proto(message.rows),
            positions=tuple(message.positions),
            sent_at=sent_at,
            position=message.position,
        )
    except ContractError as exc:
        raise WireFormatError(str(exc)) from None
