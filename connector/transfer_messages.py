"""The Dataspace Protocol's transfer messages, and the fingerprint that makes them idempotent.

Each message carries its sender and a message id; a process remembers the fingerprint of
every message it applied, so the same message again is a no-op and another message under a
used id is refused (as in `connector.negotiation`). The fingerprint is a SHA-256 over the
message's canonical JSON; a full pull's empty watermark is left out, so a request
fingerprints as it did before watermarks existed.

The messages are plain records, apart from the machine (`connector.transfer`) that
applies them, because the wire codecs (gRPC, REST) build and read them without it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from qdspace.connector.transfer_wire import Checkpoint
from qdspace.policies.canonical import canonical_json, to_jsonable


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
