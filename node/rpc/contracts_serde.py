"""Proto <-> domain conversion for the contract services: the shared basics, catalog, negotiation.

Each wire message of ``catalog``, ``negotiation``, ``transfer``,
``subscription`` and ``notification`` has an ``x_to_proto`` / ``x_from_proto``
pair. Decoding refuses what the domain could not hold (a message without a
body, a malformed policy or agreement, an empty id) with `WireFormatError`
(INVALID_ARGUMENT), so servicers never see half-decoded input. Signatures are
not checked here: the negotiation machine and the receipt opener do that with
the parties' keys. Times travel as microseconds since the Unix epoch (UTC).

The pairs are kept by message family: this module holds the basics every family uses
(times, required ids, policies, field sets) and the catalog and negotiation messages,
which carry policies and signed agreements; transfers and live streams (rows and
checkpoints) are in `contracts_transfer_serde`, the notifications between parties in
`contracts_notification_serde`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from qdspace.connector.agreement import SignedAgreement, agreement_from_bytes
from qdspace.connector.assets import AssetKind, CatalogEntry
from qdspace.connector.contract_errors import ContractError
from qdspace.connector.contract_store.common import ID_LENGTH
from qdspace.connector.negotiation import (
    Accepted,
    Agreement,
    ContractOffer,
    ContractRequest,
    Finalized,
    Negotiation,
    NegotiationMessage,
    NegotiationState,
    Role,
    Termination,
    Verification,
    awaiting,
    offer_json,
)
from qdspace.node.errors import WireFormatError as WireFormatError  # its home was here
from qdspace.policies.codec import parse_policy, policy_to_json
from qdspace.policies.errors import PolicyError
from qdspace.policies.model import Policy
from qdspace.protocols.v1 import catalog_pb2, negotiation_pb2

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# ------------------------------------------------------------------ basics


def datetime_to_us(value: datetime) -> int:
    if value.utcoffset() is None:
        raise WireFormatError(f"datetime {value.isoformat()} has no time zone")
    return (value - _EPOCH) // timedelta(microseconds=1)


#: the microseconds of the first and the last instant a `datetime` holds (years 1 to 9999)
MIN_US = (datetime.min.replace(tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)
MAX_US = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)


def datetime_from_us(value: int, field: str = "a time") -> datetime:
    """The instant `value` microseconds after the epoch; `field` names it in the refusal.
    A peer's time beyond the years 1 to 9999 (``±2**62``, a year 10000) is its wire
    format's fault, refused here: it was an OverflowError no caller expected (a
    consumer's negotiation answered 500, a subscription reconnected for ever)."""
    if not MIN_US <= value <= MAX_US:
        raise WireFormatError(f"{field} is {value}; not a time between the years 1 and 9999")
    return _EPOCH + timedelta(microseconds=value)


#: how much of `ID_LENGTH` a negotiation or transfer id a peer chose leaves for the ends
#: the node adds to make its message ids (``:c12:counter-request``, ``:c-resume-`` and 12
#: hex digits, ``:p-complete``), with room for the count
PROCESS_ID_ENDING = 28
#: the longest negotiation or transfer id a peer may choose: a 128-character one was
#: taken, and the first message id made from it (``<id>:p-start``) ended the save in
#: PostgreSQL's "value too long" (INTERNAL), or left the process unable to move on
MAX_PROCESS_ID = ID_LENGTH - PROCESS_ID_ENDING


def process_id(value: str, what: str) -> str:
    """A negotiation or transfer id a peer sent (`required`, at most `MAX_PROCESS_ID`)."""
    required(value, what)
    if len(value) > MAX_PROCESS_ID:
        raise WireFormatError(
            f"{what} must be at most {MAX_PROCESS_ID} characters (the node makes message "
            f"ids of up to {ID_LENGTH} from it), got {len(value)}"
        )
    return value


def required(value: str, what: str) -> str:
    """An id a peer sent: present, printable and no longer than the columns that keep
    ids (`ID_LENGTH`; PostgreSQL refuses a longer one where SQLite takes it, and a
    member's 200-character negotiation id was an INTERNAL error)."""
    if not value:
        raise WireFormatError(f"{what} is missing")
    if len(value) > ID_LENGTH or not value.isprintable():
        raise WireFormatError(
            f"{what} must be 1 to {ID_LENGTH} printable characters, got {len(value)}"
        )
    return value


def policy_from_json(data: bytes, what: str = "policy") -> Policy:
    try:
        return parse_policy(data)
    except PolicyError as exc:
        raise WireFormatError(f"{what}: {exc}") from None


def fields_to_proto(fields: frozenset[str] | None) -> tuple[list[str], bool]:
    return ([], True) if fields is None else (sorted(fields), False)


def fields_from_proto(fields: Sequence[str], all_fields: bool) -> frozenset[str] | None:
    return None if all_fields else frozenset(fields)


# ----------------------------------------------------------------- catalog


def catalog_entry_to_proto(entry: CatalogEntry) -> catalog_pb2.Asset:
    return catalog_pb2.Asset(
        provider_id=entry.provider_id,
        asset_id=entry.asset_id,
        title=entry.title,
        kind=entry.kind.value,
        fields=sorted(entry.fields),
        pseudonymized_fields=sorted(entry.pseudonymized),
        offer_json=policy_to_json(entry.offer),
        description=entry.description,
    )


#: what a consumer reads of a provider's catalog. An honest catalog is the standard
#: assets (five, ~1 KB each) and one asset a federated job the provider coordinates; a
#: provider's offer is a policy of the node's own form (~1 KB). A reply beyond these is
#: refused before any offer is parsed (parsing 60 MiB of offers held a node 18 s).
MAX_CATALOG_ASSETS = 1_000
MAX_OFFER_BYTES = 64 * 1024
MAX_ASSET_FIELDS = 512
#: characters: ids and kinds, a field's name, a title, a description
_TEXT_BOUNDS = {"asset_id": 256, "provider_id": 256, "kind": 64, "title": 512, "description": 4000}
_FIELD_CHARS = 256


def check_asset(message: catalog_pb2.Asset) -> None:
    """Refuse an asset whose texts, fields or offer exceed what a provider writes."""
    where = f"asset {message.asset_id[:64]!r}"
    for name, limit in _TEXT_BOUNDS.items():
        if len(getattr(message, name)) > limit:
            raise WireFormatError(f"{where}: its {name} is longer than {limit} characters")
    for name in ("fields", "pseudonymized_fields"):
        values = getattr(message, name)
        if len(values) > MAX_ASSET_FIELDS or any(len(v) > _FIELD_CHARS for v in values):
            raise WireFormatError(
                f"{where}: its {name} hold more than {MAX_ASSET_FIELDS} names or a name "
                f"longer than {_FIELD_CHARS} characters"
            )
    if len(message.offer_json) > MAX_OFFER_BYTES:
        raise WireFormatError(f"{where}: its offer is larger than {MAX_OFFER_BYTES} bytes")


def catalog_entry_from_proto(message: catalog_pb2.Asset) -> CatalogEntry:
    check_asset(message)
    return _entry(message)


def _entry(message: catalog_pb2.Asset) -> CatalogEntry:
    """An asset `check_asset` passed, decoded (its offer parsed)."""
    try:
        kind = AssetKind(message.kind)
    except ValueError:
        raise WireFormatError(f"asset {message.asset_id}: unknown kind {message.kind!r}") from None
    return CatalogEntry(
        provider_id=required(message.provider_id, "asset provider_id"),
        asset_id=required(message.asset_id, "asset_id"),
        title=message.title,
        kind=kind,
        fields=frozenset(message.fields),
        pseudonymized=frozenset(message.pseudonymized_fields),
        offer=policy_from_json(message.offer_json, f"asset {message.asset_id} offer"),
        description=message.description,
    )


def catalog_to_proto(provider_id: str, entries: Sequence[CatalogEntry]) -> catalog_pb2.CatalogReply:
    return catalog_pb2.CatalogReply(
        provider_id=provider_id, assets=[catalog_entry_to_proto(e) for e in entries]
    )


def catalog_from_proto(message: catalog_pb2.CatalogReply) -> list[CatalogEntry]:
    """A provider's catalog; counted, bounded and checked for repeated ids before any offer
    is parsed (`check_asset`)."""
    assets = message.assets
    if len(assets) > MAX_CATALOG_ASSETS:
        raise WireFormatError(
            f"the catalog lists {len(assets)} assets, more than {MAX_CATALOG_ASSETS}"
        )
    for asset in assets:
        check_asset(asset)
    if len({a.asset_id for a in assets}) != len(assets):
        raise WireFormatError("the catalog lists an asset id twice")
    return [_entry(a) for a in assets]


# ------------------------------------------------------------- negotiation


def signed_agreement_to_proto(signed: SignedAgreement) -> negotiation_pb2.SignedAgreement:
    return negotiation_pb2.SignedAgreement(
        agreement_json=signed.canonical_bytes,
        provider_signature=signed.provider_signature,
        consumer_signature=signed.consumer_signature or b"",
    )


def signed_agreement_from_proto(message: negotiation_pb2.SignedAgreement) -> SignedAgreement:
    """The agreement as sent; its signatures are checked by whoever applies it."""
    try:
        terms = agreement_from_bytes(message.agreement_json)
    except ContractError as exc:
        raise WireFormatError(str(exc)) from None
    return SignedAgreement(terms, message.provider_signature, message.consumer_signature or None)


def negotiation_message_to_proto(message: NegotiationMessage) -> negotiation_pb2.NegotiationMessage:
    out = negotiation_pb2.NegotiationMessage(
        message_id=message.message_id,
        negotiation_id=message.negotiation_id,
        sender_id=message.sender_id,
        at_unix_us=datetime_to_us(message.at),
    )
    if isinstance(message, ContractRequest):
        out.request.offer_json = offer_json(message.offer)
    elif isinstance(message, ContractOffer):
        out.offer.offer_json = offer_json(message.offer)
    elif isinstance(message, Accepted):
        out.accepted.SetInParent()
    elif isinstance(message, Agreement):
        out.agreement.agreement.CopyFrom(signed_agreement_to_proto(message.signed))
    elif isinstance(message, Verification):
        out.verification.consumer_signature = message.consumer_signature
    elif isinstance(message, Finalized):
        out.finalized.SetInParent()
    else:
        out.termination.reason = message.reason
    return out


def negotiation_message_from_proto(
    message: negotiation_pb2.NegotiationMessage,
) -> NegotiationMessage:
    head = (
        required(message.message_id, "message_id"),
        process_id(message.negotiation_id, "negotiation_id"),
        required(message.sender_id, "sender_id"),
    )
    at = datetime_from_us(message.at_unix_us, "at_unix_us")
    match message.WhichOneof("body"):
        case "request":
            return ContractRequest(*head, policy_from_json(message.request.offer_json), at)
        case "offer":
            return ContractOffer(*head, policy_from_json(message.offer.offer_json), at)
        case "accepted":
            return Accepted(*head, at)
        case "agreement":
            return Agreement(*head, signed_agreement_from_proto(message.agreement.agreement), at)
        case "verification":
            return Verification(*head, message.verification.consumer_signature, at)
        case "finalized":
            return Finalized(*head, at)
        case "termination":
            return Termination(*head, message.termination.reason, at)
    raise WireFormatError(f"negotiation message {message.message_id} has no body")


def negotiation_to_proto(negotiation: Negotiation) -> negotiation_pb2.NegotiationStatus:
    whose = awaiting(negotiation)
    out = negotiation_pb2.NegotiationStatus(
        negotiation_id=negotiation.negotiation_id,
        state=negotiation.state.value,
        provider_id=negotiation.provider_id,
        consumer_id=negotiation.consumer_id,
        asset_id=negotiation.asset_id,
        offer_json=offer_json(negotiation.offer),
        has_agreement=negotiation.agreement is not None,
        reason=negotiation.reason or "",
        created_at_unix_us=datetime_to_us(negotiation.created_at),
        updated_at_unix_us=datetime_to_us(negotiation.updated_at),
        awaiting="" if whose is None else whose.value,
    )
    if negotiation.agreement is not None:
        out.agreement.CopyFrom(signed_agreement_to_proto(negotiation.agreement))
    return out


def negotiation_from_proto(message: negotiation_pb2.NegotiationStatus, role: Role) -> Negotiation:
    """The peer's view of a negotiation, as `role`'s copy without message history."""
    try:
        state = NegotiationState(message.state)
    except ValueError:
        raise WireFormatError(f"unknown negotiation state {message.state!r}") from None
    return Negotiation(
        negotiation_id=process_id(message.negotiation_id, "negotiation_id"),
        role=role,
        provider_id=message.provider_id,
        consumer_id=message.consumer_id,
        asset_id=message.asset_id,
        state=state,
        offer=policy_from_json(message.offer_json, "offer"),
        created_at=datetime_from_us(message.created_at_unix_us, "created_at_unix_us"),
        updated_at=datetime_from_us(message.updated_at_unix_us, "updated_at_unix_us"),
        agreement=signed_agreement_from_proto(message.agreement) if message.has_agreement else None,
        reason=message.reason or None,
    )


def negotiation_ack_to_proto(negotiation: Negotiation) -> negotiation_pb2.NegotiationAck:
    return negotiation_pb2.NegotiationAck(
        negotiation_id=negotiation.negotiation_id, state=negotiation.state.value
    )
