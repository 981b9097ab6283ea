"""Quality case events signed and on the wire: signing, verifying, strict parsing.

An event (`connector.investigation.CaseEvent`) is signed by its author with Ed25519 over
``qdspace.v1/quality-case-event\\0`` + its canonical JSON, like agreements and receipts
(`connector.agreement`), so a signature made for anything else never verifies here. Bytes
from a peer are verified *before* they are parsed (`open_signed_event`), and parsing
insists on exactly the canonical form: one changed byte is a signature failure, never an
event that parses into something else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from qdspace.connector.contract_errors import CaseFormatError, CaseSignatureError
from qdspace.connector.investigation import (
    EVENT_SCHEMA,
    ActionItem,
    ActionKind,
    CaseEvent,
    CaseKind,
    CaseTerms,
    Severity,
    Step,
)
from qdspace.policies.canonical import parse_datetime
from qdspace.util.json_depth import loads as bounded_json

_EVENT_CONTEXT = b"qdspace.v1/quality-case-event\x00"


@dataclass(frozen=True)
class SignedEvent:
    event: CaseEvent
    signature: bytes


@dataclass(frozen=True)
class SealedEvent:
    """An event as it came over the wire: bytes and signature, not yet verified or parsed
    (`open_signed_event` does both, in that order)."""

    data: bytes
    signature: bytes


def sign_event(event: CaseEvent, key: SigningKey) -> SignedEvent:
    return SignedEvent(event, key.sign(_EVENT_CONTEXT + event.canonical_bytes()).signature)


def open_signed_event(data: bytes, signature: bytes, author_key: VerifyKey) -> SignedEvent:
    """Verify the author's signature over `data`, then parse it (never the other way)."""
    try:
        author_key.verify(_EVENT_CONTEXT + data, signature)
    except (BadSignatureError, ValueError, TypeError):
        raise CaseSignatureError("quality case event: signature does not verify") from None
    return SignedEvent(event_from_bytes(data), signature)


# ------------------------------------------------------------------- parsing


def _get(raw: Mapping[str, Any], key: str, kind: type, what: str) -> Any:
    value = raw.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise CaseFormatError(f"{what}: {key} must be a {kind.__name__}")
    return value


def _enum(enum: type[StrEnum], raw: Mapping[str, Any], key: str, what: str) -> Any:
    value = _get(raw, key, str, what)
    try:
        return enum(value)
    except ValueError:
        raise CaseFormatError(
            f"{what}: {key} {value!r} is not one of {[e.value for e in enum]}"
        ) from None


def _keys(raw: Any, keys: set[str], what: str) -> Mapping[str, Any]:
    if not isinstance(raw, dict) or set(raw) != keys:
        raise CaseFormatError(f"{what}: expected exactly the keys {sorted(keys)}")
    return raw


def _strings(raw: Mapping[str, Any], key: str, what: str) -> tuple[str, ...]:
    items = _get(raw, key, list, what)
    if not all(isinstance(i, str) for i in items):
        raise CaseFormatError(f"{what}: {key} must be a list of strings")
    return tuple(items)


def _action_from(raw: Any) -> ActionItem:
    what = "action"
    raw = _keys(raw, {"actionId", "kind", "ownerId", "due", "title"}, what)
    try:
        due = date.fromisoformat(_get(raw, "due", str, what))
    except ValueError:
        raise CaseFormatError("action: due is not an ISO date") from None
    return ActionItem(
        _get(raw, "actionId", str, what),
        _enum(ActionKind, raw, "kind", what),
        _get(raw, "ownerId", str, what),
        due,
        _get(raw, "title", str, what),
    )


def _terms_from(raw: Any) -> CaseTerms:
    what = "terms"
    keys = {"kind", "openerId", "receiverId", "severity", "subject", "description"}
    raw = _keys(raw, keys | {"batchIds", "partIds", "traceReportId", "actions"}, what)
    return CaseTerms(
        kind=_enum(CaseKind, raw, "kind", what),
        opener_id=_get(raw, "openerId", str, what),
        receiver_id=_get(raw, "receiverId", str, what),
        severity=_enum(Severity, raw, "severity", what),
        subject=_get(raw, "subject", str, what),
        description=_get(raw, "description", str, what),
        batch_ids=_strings(raw, "batchIds", what),
        part_ids=_strings(raw, "partIds", what),
        trace_report_id=_get(raw, "traceReportId", str, what),
        actions=tuple(_action_from(a) for a in _get(raw, "actions", list, what)),
    )


def event_from_bytes(data: bytes) -> CaseEvent:
    """Parse canonical event bytes; anything else (extra keys, other form) is refused."""
    what = "event"
    try:
        decoded = bounded_json(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CaseFormatError(f"event: malformed JSON: {exc}") from None
    keys = {"schema", "openerId", "caseId", "authorId", "seq", "step", "at", "terms"}
    raw = _keys(decoded, keys | {"actionId", "note"}, what)
    if raw["schema"] != EVENT_SCHEMA:
        raise CaseFormatError(f"event: schema {raw['schema']!r} is not {EVENT_SCHEMA}")
    try:
        at = parse_datetime(_get(raw, "at", str, what))
    except ValueError as exc:
        raise CaseFormatError(f"event: at: {exc}") from None
    event = CaseEvent(
        opener_id=_get(raw, "openerId", str, what),
        case_id=_get(raw, "caseId", str, what),
        author_id=_get(raw, "authorId", str, what),
        seq=_get(raw, "seq", int, what),
        step=_enum(Step, raw, "step", what),
        at=at,
        terms=None if raw["terms"] is None else _terms_from(raw["terms"]),
        action_id=_get(raw, "actionId", str, what),
        note=_get(raw, "note", str, what),
    )
    if event.canonical_bytes() != data:
        raise CaseFormatError("event: bytes are not in canonical form")
    return event
