"""``qdspace.v1.Federation`` messages <-> ``federation`` domain objects, in one place."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from qdspace.federation.chunks import DEFAULT_CHUNK_BYTES
from qdspace.federation.job_files import Framing
from qdspace.federation.round_status import Phase, RoundRecord, StatusView
from qdspace.federation.secagg_messages import (
    Confirmation,
    EncryptedShare,
    KeyAdvert,
    SignedShare,
    UnmaskRequest,
    UnmaskResponse,
)
from qdspace.protocols.v1 import federation_pb2 as pb


def record_to_proto(record: RoundRecord) -> pb.RoundRecord:
    return pb.RoundRecord(
        round=record.round,
        version=record.version,
        members=list(record.members),
        bounded=list(record.bounded),
        has_epsilon=record.epsilon is not None,
        epsilon=record.epsilon or 0.0,
        sum_bounded=record.sum_bounded,
    )


def record_from_proto(msg: pb.RoundRecord) -> RoundRecord:
    return RoundRecord(
        round=msg.round,
        version=msg.version,
        members=tuple(msg.members),
        bounded=tuple(msg.bounded),
        epsilon=msg.epsilon if msg.has_epsilon else None,
        sum_bounded=msg.sum_bounded,
    )


def status_to_proto(view: StatusView) -> pb.JobStatus:
    return pb.JobStatus(
        job_id=view.job_id,
        round=view.round,
        attempt=view.attempt,
        phase=view.phase.value,
        deadline_in_s=view.deadline_in_s,
        version=view.version,
        detail=view.detail,
        rounds=view.rounds,
        history=[record_to_proto(r) for r in view.history],
        job_digest=view.job_digest,
        delta=view.delta if view.delta is not None else 0.0,
        agreement_asset=view.agreement_asset or "",
        secagg_protocol=view.secagg_protocol,
    )


def status_from_proto(msg: pb.JobStatus) -> StatusView:
    return StatusView(
        job_id=msg.job_id,
        round=msg.round,
        attempt=msg.attempt,
        phase=Phase(msg.phase),
        deadline_in_s=msg.deadline_in_s,
        version=msg.version,
        detail=msg.detail,
        rounds=msg.rounds,
        history=tuple(record_from_proto(r) for r in msg.history),
        job_digest=msg.job_digest,
        delta=msg.delta or None,
        agreement_asset=msg.agreement_asset or None,
        secagg_protocol=msg.secagg_protocol,
    )


def advert_to_proto(advert: KeyAdvert) -> pb.KeyAdvert:
    return pb.KeyAdvert(
        member=advert.member,
        cipher_pk=advert.cipher_pk,
        mask_pk=advert.mask_pk,
        seed_commitment=advert.seed_commitment,
        signature=advert.signature,
        certificate=advert.certificate,
        protocol=advert.protocol,
    )


def advert_from_proto(msg: pb.KeyAdvert) -> KeyAdvert:
    return KeyAdvert(
        msg.member,
        msg.cipher_pk,
        msg.mask_pk,
        msg.seed_commitment,
        msg.signature,
        msg.certificate,
        msg.protocol,  # empty from a v1 member: refused by name, not as a bad signature
    )


def share_to_proto(share: EncryptedShare) -> pb.EncryptedShare:
    return pb.EncryptedShare(
        sender=share.sender, receiver=share.receiver, ciphertext=share.ciphertext
    )


def shares_from_proto(msgs: Iterable[pb.EncryptedShare]) -> list[EncryptedShare]:
    return [EncryptedShare(m.sender, m.receiver, m.ciphertext) for m in msgs]


def confirmation_to_proto(confirmation: Confirmation) -> pb.Confirmation:
    return pb.Confirmation(member=confirmation.member, signature=confirmation.signature)


def confirmation_from_proto(msg: pb.Confirmation) -> Confirmation:
    return Confirmation(msg.member, msg.signature)


def unmask_request_to_proto(request: UnmaskRequest) -> pb.UnmaskRequest:
    return pb.UnmaskRequest(
        survivors=list(request.survivors),
        dropped=list(request.dropped),
        confirmations=[confirmation_to_proto(c) for c in request.confirmations],
    )


def unmask_request_from_proto(msg: pb.UnmaskRequest) -> UnmaskRequest:
    return UnmaskRequest(
        tuple(msg.survivors),
        tuple(msg.dropped),
        tuple(confirmation_from_proto(c) for c in msg.confirmations),
    )


def _revealed(shares: Mapping[str, SignedShare]) -> dict[str, pb.RevealedShare]:
    return {m: pb.RevealedShare(share=s.value, signature=s.signature) for m, s in shares.items()}


def _signed(shares: Mapping[str, pb.RevealedShare]) -> dict[str, SignedShare]:
    return {m: SignedShare(s.share, s.signature) for m, s in shares.items()}


def unmask_to_proto(response: UnmaskResponse, ref: pb.RoundRef) -> pb.UnmaskResponse:
    return pb.UnmaskResponse(
        ref=ref,
        member=response.member,
        seed_shares=_revealed(response.seed_shares),
        key_shares=_revealed(response.key_shares),
    )


def unmask_from_proto(msg: pb.UnmaskResponse) -> UnmaskResponse:
    return UnmaskResponse(msg.member, _signed(msg.seed_shares), _signed(msg.key_shares))


# --- payload chunks on the wire ------------------------------------------------------------
#
# ``UploadChunk`` and ``ModelChunk`` are ``oneof {header = 1; data = 2}``. A data chunk
# on the wire is the tag byte 0x12, the varint length and the raw bytes, so it can be
# written with one copy (no intermediate message object) and read as a zero-copy view
# of the received bytes; any other encoding (a header, or a sender that adds fields)
# goes through the regular protobuf parser. The format on the wire is unchanged.

_DATA_TAG = 0x12  # field 2, length-delimited


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def data_chunk_prefix(length: int) -> bytes:
    """What comes before ``length`` bytes of data in a serialized data chunk."""
    return bytes((_DATA_TAG,)) + _varint(length)


#: How this node cuts the versions it publishes into ``ModelChunk`` data messages: made
#: with the version, so each download sends them as they are.
DOWNLOAD_FRAMING = Framing(DEFAULT_CHUNK_BYTES, data_chunk_prefix)


def encode_data_chunk(data: bytes | memoryview) -> bytes:
    """The serialized ``UploadChunk``/``ModelChunk`` carrying ``data`` (one copy)."""
    return b"".join((data_chunk_prefix(len(data)), data))


def _data_view(raw: bytes) -> memoryview | None:
    """The data of a serialized chunk that holds exactly one data field, else None."""
    if not raw or raw[0] != _DATA_TAG:
        return None
    length, shift, pos = 0, 0, 1
    while pos < len(raw) and shift < 64:
        byte = raw[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return memoryview(raw)[pos:] if pos + length == len(raw) else None
    return None


def decode_upload_chunk(raw: bytes) -> tuple[pb.UploadHeader | None, memoryview | bytes]:
    """``(header, b"")`` for a header message, ``(None, data)`` for a data chunk."""
    view = _data_view(raw)
    if view is not None:
        return None, view
    message = pb.UploadChunk.FromString(raw)
    if message.HasField("header"):
        return message.header, b""
    return None, message.data


def decode_model_chunk(raw: bytes) -> tuple[pb.ModelHeader | None, memoryview | bytes]:
    """``(header, b"")`` for a header message, ``(None, data)`` for a data chunk."""
    view = _data_view(raw)
    if view is not None:
        return None, view
    message = pb.ModelChunk.FromString(raw)
    if message.HasField("header"):
        return message.header, b""
    return None, message.data


def serialize(message: bytes | Any) -> bytes:
    """A message's wire bytes; already-serialized chunks pass through unchanged."""
    if isinstance(message, bytes):
        return message
    data: bytes = message.SerializeToString()
    return data
