"""Signed contract agreements and signed deletion receipts.

An agreement is stored, anchored and shown to a regulator as one canonical byte
string (canonical JSON of its ids, parties, asset, the policy's canonical JSON
object and its timestamps), signed with Ed25519 by the provider and then
countersigned by the consumer. Each signature covers a domain-separated input
(``qdspace.v1/agreement/<role>\\0`` + bytes), so a signature made for a receipt,
for the other role or for another agreement never verifies here.

Bytes from a peer are verified *before* they are parsed (`open_signed_agreement`,
`open_signed_receipt`): one changed byte anywhere is a signature failure, never
a document that parses into something else. Parsing also insists the bytes are
canonical, so there is exactly one signed form of each agreement. Bytes parsed or signed
before, and signatures verified before, are answered from bounded memos
(`agreement_memo`): a negotiation meets the same ones more than once.

A deletion receipt states which agreement's data was deleted, how many rows,
a digest of them (`deletion_digest`: sha256 over the sorted sha256 hashes of
each row's canonical JSON, so the order of deletion does not matter), when,
by whom and, for a deletion before the retention deadline, why (`reason`: a member
leaving the data space deletes everything it holds at once); the consumer signs it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from qdspace.connector.agreement_memo import PARSED, VERIFIED, agreement_parses_back
from qdspace.connector.contract_errors import (
    AgreementError,
    AgreementSignatureError,
    ReceiptSignatureError,
    SignatureError,
)
from qdspace.policies.canonical import (
    canonical_json,
    canonical_json_plain,
    format_datetime,
    parse_datetime,
)
from qdspace.policies.codec import policy_from_dict, policy_to_dict
from qdspace.policies.errors import PolicyError
from qdspace.policies.model import Policy, PolicyType
from qdspace.util.json_depth import loads as bounded_json

AGREEMENT_SCHEMA = "qdspace.v1/agreement"
RECEIPT_SCHEMA = "qdspace.v1/deletion-receipt"
_PROVIDER_CONTEXT = b"qdspace.v1/agreement/provider\x00"
_CONSUMER_CONTEXT = b"qdspace.v1/agreement/consumer\x00"
_RECEIPT_CONTEXT = b"qdspace.v1/deletion-receipt/consumer\x00"
_ROWS_CONTEXT = b"qdspace.v1/deleted-rows\x00"


def _aware(value: datetime, name: str) -> None:
    if value.utcoffset() is None:
        raise AgreementError(f"{name} has no time zone")


@dataclass(frozen=True)
class ContractAgreement:
    """The terms both parties sign; `policy` is the ODRL Agreement (uid = agreement id)."""

    agreement_id: str
    negotiation_id: str
    provider_id: str
    consumer_id: str
    asset_id: str
    policy: Policy
    requested_at: datetime
    agreed_at: datetime

    def __post_init__(self) -> None:
        policy = self.policy
        expected = {
            "uid": (policy.uid, self.agreement_id),
            "assigner": (policy.assigner, self.provider_id),
            "assignee": (policy.assignee, self.consumer_id),
            "target": (policy.target, self.asset_id),
        }
        if policy.type is not PolicyType.AGREEMENT:
            raise AgreementError(f"agreement {self.agreement_id}: policy is an {policy.type}")
        for name, (actual, wanted) in expected.items():
            if actual != wanted:
                raise AgreementError(
                    f"agreement {self.agreement_id}: policy {name} is {actual!r}, "
                    f"expected {wanted!r}"
                )
        _aware(self.requested_at, "requested_at")
        _aware(self.agreed_at, "agreed_at")
        if self.agreed_at < self.requested_at:
            raise AgreementError(f"agreement {self.agreement_id}: agreed before it was requested")

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": AGREEMENT_SCHEMA,
            "agreementId": self.agreement_id,
            "negotiationId": self.negotiation_id,
            "providerId": self.provider_id,
            "consumerId": self.consumer_id,
            "assetId": self.asset_id,
            "policy": policy_to_dict(self.policy),
            "requestedAt": format_datetime(self.requested_at),
            "agreedAt": format_datetime(self.agreed_at),
        }

    def canonical_bytes(self) -> bytes:
        cached = self.__dict__.get("_canonical")
        if cached is None:  # immutable, so computed once (signing, verifying, storing use it)
            cached = canonical_json_plain(self.to_dict())  # to_dict writes JSON types only
            object.__setattr__(self, "_canonical", cached)
        assert isinstance(cached, bytes)
        return cached

    def digest(self) -> bytes:
        """sha256 of the canonical bytes: the agreement's ledger leaf content."""
        return hashlib.sha256(self.canonical_bytes()).digest()


def _load_canonical(
    data: bytes, what: str, keys: set[str], optional: frozenset[str] = frozenset()
) -> dict[str, Any]:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(items)
        if len(out) != len(items):
            raise AgreementError(f"{what}: duplicate key")
        return out

    try:
        decoded = bounded_json(data, object_pairs_hook=pairs)
    except (ValueError, UnicodeDecodeError) as exc:
        raise AgreementError(f"{what}: malformed JSON: {exc}") from None
    if not isinstance(decoded, dict) or not keys <= set(decoded) <= keys | optional:
        also = f" (and optionally {sorted(optional)})" if optional else ""
        raise AgreementError(f"{what}: expected exactly the keys {sorted(keys)}{also}")
    return decoded


def _field(raw: Mapping[str, Any], key: str, kind: type, what: str) -> Any:
    value = raw[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise AgreementError(f"{what}: {key} must be a {kind.__name__}")
    return value


def _time(raw: Mapping[str, Any], key: str, what: str) -> datetime:
    try:
        return parse_datetime(_field(raw, key, str, what))
    except ValueError as exc:
        raise AgreementError(f"{what}: {key}: {exc}") from None


def agreement_from_bytes(data: bytes) -> ContractAgreement:
    """Parse canonical agreement bytes; refuses non-canonical or inconsistent documents.

    Bytes seen before (parsed, or signed here) come from the memo: they were canonical and
    consistent then, and the same bytes parse to the same agreement."""
    known = PARSED.get(data) if type(data) is bytes else None
    if known is not None:
        return known
    wire = {"schema", "agreementId", "negotiationId", "providerId", "consumerId", "assetId"}
    raw = _load_canonical(data, "agreement", wire | {"policy", "requestedAt", "agreedAt"})
    if raw["schema"] != AGREEMENT_SCHEMA:
        raise AgreementError(f"agreement: schema {raw['schema']!r} is not {AGREEMENT_SCHEMA}")
    try:
        policy = policy_from_dict(raw["policy"])
    except PolicyError as exc:
        raise AgreementError(f"agreement: policy: {exc}") from None
    agreement = ContractAgreement(
        agreement_id=_field(raw, "agreementId", str, "agreement"),
        negotiation_id=_field(raw, "negotiationId", str, "agreement"),
        provider_id=_field(raw, "providerId", str, "agreement"),
        consumer_id=_field(raw, "consumerId", str, "agreement"),
        asset_id=_field(raw, "assetId", str, "agreement"),
        policy=policy,
        requested_at=_time(raw, "requestedAt", "agreement"),
        agreed_at=_time(raw, "agreedAt", "agreement"),
    )
    if agreement.canonical_bytes() != data:
        raise AgreementError("agreement: bytes are not in canonical form")
    PARSED.put(bytes(data), agreement)
    return agreement


def _verify(
    key: VerifyKey, context: bytes, data: bytes, signature: bytes, error: type[SignatureError]
) -> None:
    try:
        triple = (bytes(key), context + data, bytes(signature))
        if triple in VERIFIED:
            return
        key.verify(triple[1], signature)
    except (BadSignatureError, ValueError, TypeError):
        raise error(f"{error.__name__}: signature does not verify") from None
    VERIFIED.put(triple, True)


@dataclass(frozen=True)
class SignedAgreement:
    """An agreement with the parties' signatures.

    `signed` False: an agreement reached with a peer that does not sign (a standard
    Dataspace Protocol connector, e.g. EDC). Both signatures are then empty bytes (the
    consumer's once it verified the agreement), and the node records it as unsigned:
    the terms are the same, only the proof of the peer's consent is the DSP exchange
    over mutual TLS rather than an Ed25519 signature.
    """

    agreement: ContractAgreement
    provider_signature: bytes
    consumer_signature: bytes | None = None
    signed: bool = True

    def __post_init__(self) -> None:
        if not self.signed and (self.provider_signature or self.consumer_signature):
            raise AgreementError("an unsigned agreement carries no signatures")

    @property
    def canonical_bytes(self) -> bytes:
        return self.agreement.canonical_bytes()

    @property
    def complete(self) -> bool:
        return self.consumer_signature is not None


def sign_agreement(agreement: ContractAgreement, provider_key: SigningKey) -> SignedAgreement:
    """The provider's signature: sent with the DSP ContractAgreementMessage.

    The signature is remembered as verified under the key's own verify key (an Ed25519
    signature verifies under the key that made it), and the agreement as what its bytes
    parse to, where that is exact (`agreement_parses_back`): the provider checks the message it
    sends like any other and loads the agreement again for the countersignature."""
    data = agreement.canonical_bytes()
    signed = provider_key.sign(_PROVIDER_CONTEXT + data)
    VERIFIED.put((bytes(provider_key.verify_key), signed.message, signed.signature), True)
    if agreement_parses_back(agreement):
        PARSED.put(data, agreement)
    return SignedAgreement(agreement, signed.signature)


def verify_provider_signature(signed: SignedAgreement, provider_vk: VerifyKey) -> None:
    _verify(
        provider_vk,
        _PROVIDER_CONTEXT,
        signed.canonical_bytes,
        signed.provider_signature,
        AgreementSignatureError,
    )


def countersign(
    signed: SignedAgreement, consumer_key: SigningKey, provider_vk: VerifyKey
) -> SignedAgreement:
    """The consumer's signature, given only over an agreement the provider really signed."""
    verify_provider_signature(signed, provider_vk)
    countersigned = consumer_key.sign(_CONSUMER_CONTEXT + signed.canonical_bytes)
    # verified as made (see `sign_agreement`): applying our own Verification checks it
    triple = (bytes(consumer_key.verify_key), countersigned.message, countersigned.signature)
    VERIFIED.put(triple, True)
    return SignedAgreement(signed.agreement, signed.provider_signature, countersigned.signature)


def add_consumer_signature(
    signed: SignedAgreement, consumer_signature: bytes, consumer_vk: VerifyKey
) -> SignedAgreement:
    """Attach a received countersignature (DSP verification message) after checking it."""
    _verify(
        consumer_vk,
        _CONSUMER_CONTEXT,
        signed.canonical_bytes,
        consumer_signature,
        AgreementSignatureError,
    )
    return SignedAgreement(signed.agreement, signed.provider_signature, consumer_signature)


def verify_agreement(
    signed: SignedAgreement, provider_vk: VerifyKey, consumer_vk: VerifyKey
) -> None:
    """Both signatures present and valid over these exact terms, else AgreementSignatureError."""
    if not signed.signed:
        raise AgreementSignatureError(
            "agreement is unsigned (reached with a peer that does not sign)"
        )
    verify_provider_signature(signed, provider_vk)
    if signed.consumer_signature is None:
        raise AgreementSignatureError("agreement is not countersigned by the consumer")
    add_consumer_signature(signed, signed.consumer_signature, consumer_vk)


def open_signed_agreement(
    data: bytes,
    provider_signature: bytes,
    consumer_signature: bytes | None,
    provider_vk: VerifyKey,
    consumer_vk: VerifyKey | None = None,
) -> SignedAgreement:
    """Verify signatures over `data` first, then parse it (see the module docstring)."""
    _verify(provider_vk, _PROVIDER_CONTEXT, data, provider_signature, AgreementSignatureError)
    if consumer_signature is not None:
        if consumer_vk is None:
            raise AgreementSignatureError("a consumer signature needs the consumer's key")
        _verify(consumer_vk, _CONSUMER_CONTEXT, data, consumer_signature, AgreementSignatureError)
    return SignedAgreement(agreement_from_bytes(data), provider_signature, consumer_signature)


# ------------------------------------------------------------ deletion receipt


def row_hash(row: Mapping[str, Any]) -> bytes:
    """sha256 of one row's canonical JSON (the unit of both deletion and transfer digests)."""
    return hashlib.sha256(canonical_json(row)).digest()


def deletion_digest(rows: Iterable[Mapping[str, Any]]) -> tuple[int, str]:
    """(row count, hex digest) of a multiset of rows, independent of their order."""
    return deletion_digest_of_bytes(canonical_json(row) for row in rows)


def deletion_digest_of_bytes(payloads: Iterable[bytes]) -> tuple[int, str]:
    """`deletion_digest` of rows given as their canonical JSON bytes (as stored)."""
    hashes = sorted(hashlib.sha256(item).digest() for item in payloads)
    digest = hashlib.sha256(_ROWS_CONTEXT)
    for item in hashes:
        digest.update(item)
    return len(hashes), digest.hexdigest()


#: the longest `DeletionReceipt.reason` (a short statement, not a document)
MAX_RECEIPT_REASON = 200
#: the most rows one receipt may count: the largest integer every reader of the signed
#: JSON holds exactly (JavaScript's too), far past any order, and below the 64-bit
#: column it is stored in (a consumer's 2**63 ended the provider's record_receipt in an
#: OverflowError from the database)
MAX_RECEIPT_ROWS = 2**53 - 1
#: the reason of a receipt for data deleted before its deadline because its holder
#: leaves the data space (`connector.purge`)
REASON_LEAVING = "early deletion: the consumer leaves the data space"


@dataclass(frozen=True)
class DeletionReceipt:
    """What the consumer deleted under one agreement (for one order of its scope, when
    `order_id` is set: each order closes, and so expires, on its own).

    `reason` says why, when the deletion is not the retention duty coming due (for
    example `REASON_LEAVING`). It is part of the signed bytes only when set, so a
    receipt without one has exactly the canonical form, id and signature it always
    had."""

    agreement_id: str
    consumer_id: str
    row_count: int
    content_sha256: str
    deleted_at: datetime
    order_id: str = ""
    reason: str = ""

    def __post_init__(self) -> None:
        if self.row_count < 0:
            raise AgreementError("receipt: row_count is negative")
        if self.row_count > MAX_RECEIPT_ROWS:
            raise AgreementError(f"receipt: row_count is over {MAX_RECEIPT_ROWS:,}")
        if len(self.content_sha256) != 64 or self.content_sha256.strip("0123456789abcdef"):
            raise AgreementError("receipt: content_sha256 is not 64 lowercase hex digits")
        if len(self.reason) > MAX_RECEIPT_REASON or not self.reason.isprintable():
            raise AgreementError(
                f"receipt: reason must be printable and at most {MAX_RECEIPT_REASON} characters"
            )
        _aware(self.deleted_at, "deleted_at")

    def to_dict(self) -> dict[str, Any]:
        fields = {
            "schema": RECEIPT_SCHEMA,
            "agreementId": self.agreement_id,
            "consumerId": self.consumer_id,
            "rowCount": self.row_count,
            "contentSha256": self.content_sha256,
            "deletedAt": format_datetime(self.deleted_at),
            "orderId": self.order_id,
        }
        if self.reason:
            fields["reason"] = self.reason
        return fields

    def canonical_bytes(self) -> bytes:
        cached = self.__dict__.get("_canonical")
        if cached is None:  # immutable, so computed once (signing, verifying, storing use it)
            cached = canonical_json(self.to_dict())
            object.__setattr__(self, "_canonical", cached)
        assert isinstance(cached, bytes)
        return cached

    @property
    def receipt_id(self) -> str:
        """A stable id derived from the content (the regulator looks receipts up by it)."""
        return "rcpt-" + hashlib.sha256(self.canonical_bytes()).hexdigest()[:32]


def build_receipt(
    agreement_id: str,
    consumer_id: str,
    rows: Iterable[Mapping[str, Any]],
    deleted_at: datetime,
    order_id: str = "",
) -> DeletionReceipt:
    """The receipt for deleting exactly `rows` (as received, without local bookkeeping)."""
    count, digest = deletion_digest(rows)
    return DeletionReceipt(agreement_id, consumer_id, count, digest, deleted_at, order_id)


def receipt_from_bytes(data: bytes) -> DeletionReceipt:
    keys = {
        "schema",
        "agreementId",
        "consumerId",
        "rowCount",
        "contentSha256",
        "deletedAt",
        "orderId",
    }
    raw = _load_canonical(data, "receipt", keys, frozenset({"reason"}))
    if raw["schema"] != RECEIPT_SCHEMA:
        raise AgreementError(f"receipt: schema {raw['schema']!r} is not {RECEIPT_SCHEMA}")
    receipt = DeletionReceipt(
        agreement_id=_field(raw, "agreementId", str, "receipt"),
        consumer_id=_field(raw, "consumerId", str, "receipt"),
        row_count=_field(raw, "rowCount", int, "receipt"),
        content_sha256=_field(raw, "contentSha256", str, "receipt"),
        deleted_at=_time(raw, "deletedAt", "receipt"),
        order_id=_field(raw, "orderId", str, "receipt"),
        reason=_field(raw, "reason", str, "receipt") if "reason" in raw else "",
    )
    if receipt.canonical_bytes() != data:
        raise AgreementError("receipt: bytes are not in canonical form")
    return receipt


@dataclass(frozen=True)
class SignedReceipt:
    receipt: DeletionReceipt
    signature: bytes


def sign_receipt(receipt: DeletionReceipt, consumer_key: SigningKey) -> SignedReceipt:
    signature = consumer_key.sign(_RECEIPT_CONTEXT + receipt.canonical_bytes()).signature
    return SignedReceipt(receipt, signature)


def verify_receipt(signed: SignedReceipt, consumer_vk: VerifyKey) -> None:
    _verify(
        consumer_vk,
        _RECEIPT_CONTEXT,
        signed.receipt.canonical_bytes(),
        signed.signature,
        ReceiptSignatureError,
    )


def open_signed_receipt(data: bytes, signature: bytes, consumer_vk: VerifyKey) -> SignedReceipt:
    """Verify the consumer's signature over `data`, then parse it."""
    _verify(consumer_vk, _RECEIPT_CONTEXT, data, signature, ReceiptSignatureError)
    return SignedReceipt(receipt_from_bytes(data), signature)


# ----------------------------------------------------------- notifications


@dataclass(frozen=True)
class OrderClosed:
    """Provider -> consumer: the order closed; retention deadlines of these agreements run."""

    order_id: str
    closed_at: datetime
    agreement_ids: tuple[str, ...]

    def __post_init__(self) -> None:
        _aware(self.closed_at, "closed_at")


@dataclass(frozen=True)
class AgreementTermination:
    """Either party: an agreement in force ends; nothing more is sent under it."""

    agreement_id: str
    reason: str
    terminated_at: datetime

    def __post_init__(self) -> None:
        _aware(self.terminated_at, "terminated_at")
