"""Request bodies and response models of the contract routes, and the domain -> API mapping.

Kept apart from the routes (`qdspace.node.api.contracts`) so that each route file reads as
what it serves. Every response is a model: the OpenAPI schema names every field a caller
gets, and nothing from the storage rows leaks out by accident. An ODRL policy is carried
as its JSON-LD document (``dict``): its shape is the ODRL standard's, not this API's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from qdspace.connector.agreement import SignedReceipt
from qdspace.connector.assets import CatalogEntry
from qdspace.connector.contract_store import DutyReport, ReceivedChange, StoredAgreement
from qdspace.connector.negotiation import Negotiation
from qdspace.connector.transfer import TransferProcess
from qdspace.connector.versions import RecordVersion
from qdspace.node.api.bodies import Body
from qdspace.node.api.models import BodyDatetime, Id, Text
from qdspace.policies.canonical import format_datetime
from qdspace.policies.codec import policy_to_dict
from qdspace.policies.retention import DutyStatus

#: bounds of what a caller may ask for (a century of retention or clock offset at most)
MAX_DAYS = 36_500
MAX_LIST = 1000
MAX_BATCH_ROWS = 100_000
MAX_BASELINE = 10_000
Finite = Annotated[float, Field(allow_inf_nan=False)]
#: an ODRL policy as its JSON-LD document
PolicyDoc = dict[str, Any]


# -- request bodies ----------------------------------------------------------------------


class ExplainBody(Body):
    """A hypothetical request to explain under an agreement (nothing is transferred)."""

    action: Literal["use", "read", "stream", "distribute"] = "read"
    purpose: Id | None = None
    order_id: Id | None = None
    fields: list[Id] | None = Field(default=None, max_length=MAX_LIST)


class NegotiateBody(Body):
    peer: Id
    asset_id: Id
    purposes: list[Id] = Field(min_length=1, max_length=MAX_LIST)
    orders: list[Id] | None = Field(default=None, max_length=MAX_LIST)
    fields: list[Id] | None = Field(default=None, max_length=MAX_LIST)
    retention_days: int | None = Field(default=None, ge=0, le=MAX_DAYS)
    valid_until: BodyDatetime | None = None
    #: ask for exactly the offer of the provider's catalog (a federated job's terms)
    as_offered: bool = False


class TransferBody(Body):
    agreement_id: Id
    purpose: Id
    order_id: Id | None = None
    fields: list[Id] | None = Field(default=None, max_length=MAX_LIST)
    wait: bool = True
    batch_rows: int = Field(default=0, ge=0, le=MAX_BATCH_ROWS)
    #: only the changes since the last completed pull of the same scope (incremental)
    since_last: bool = False


class WithdrawBody(Body):
    """Withdraw one of our QDM records: consumers holding a copy get a tombstone."""

    kind: Id
    key: dict[Id, Text] = Field(min_length=1, max_length=MAX_LIST)


class RecordKeyBody(Body):
    """One of our QDM records, by its kind and natural key (times as ISO 8601 text)."""

    kind: Id
    key: dict[Id, Text] = Field(min_length=1, max_length=MAX_LIST)


class TerminateBody(Body):
    reason: Text = "terminated by the operator"


class PurgeBody(Body):
    """A purge cannot be undone: the caller names the node it means (its member id)."""

    confirm: Id = Field(description="this node's member id, to confirm the purge")


class ClockBody(Body):
    offset_days: Finite = Field(ge=-MAX_DAYS, le=MAX_DAYS)


# -- responses ---------------------------------------------------------------------------


class CatalogEntryPublic(BaseModel):
    """An asset a provider offers, with its offer."""

    provider_id: str
    asset_id: str
    title: str
    kind: str
    fields: list[str]
    pseudonymized: list[str]
    offer: PolicyDoc


class NegotiationPublic(BaseModel):
    negotiation_id: str
    role: str
    state: str
    provider_id: str
    consumer_id: str
    asset_id: str
    reason: str | None
    agreement_id: str | None
    provider_signed: bool
    consumer_signed: bool
    offer: PolicyDoc
    messages: int


class NegotiationResult(NegotiationPublic):
    """A negotiation just run, and how long it took in this node."""

    elapsed_ms: float


class AgreementPublic(BaseModel):
    agreement_id: str
    role: str
    provider_id: str
    consumer_id: str
    asset_id: str
    agreed_at: str | None
    digest: str
    active: bool
    terminated_at: str | None
    termination_reason: str | None
    provider_signature: str
    consumer_signature: str | None


class AgreementFull(AgreementPublic):
    """An agreement with its canonical bytes and policy."""

    canonical: str
    policy: PolicyDoc


class TransferPublic(BaseModel):
    transfer_id: str
    agreement_id: str
    role: str
    state: str
    offset: int
    digest: str
    order_id: str | None
    purpose: str | None
    since: str
    position: str
    reason: str | None
    error: str


class ReceivedPublic(BaseModel):
    """A page of the rows received under an agreement (``total`` counts all held)."""

    agreement_id: str
    total: int
    rows: list[dict[str, Any]]
    #: the cursor of the next page (None: this is the last)
    next_cursor: str | None = None


class ChangePublic(BaseModel):
    agreement_id: str
    record_key: str
    version: int
    order_id: str
    withdrawn: bool
    content_sha256: str
    source_id: str
    received_at: str | None


class WithdrawalPublic(BaseModel):
    kind: str
    key: dict[str, Any]
    version: int
    withdrawn_at: str | None


class RecordVersionPublic(BaseModel):
    """One version of a QDM record; ``replaced_at``/``replaced_by`` are null for the
    current one."""

    version: int
    content: dict[str, Any]
    withdrawn_at: str | None
    replaced_at: str | None
    replaced_by: str | None


class OrderClosedPublic(BaseModel):
    order_id: str
    closed_at: str | None
    agreements: list[str]


class ClosurePublic(BaseModel):
    agreement_id: str
    order_id: str
    closed_at: str | None
    deadline: str | None


class ReceiptPublic(BaseModel):
    receipt_id: str
    agreement_id: str
    order_id: str
    consumer_id: str
    row_count: int
    content_sha256: str
    deleted_at: str | None
    signature: str
    #: why it was deleted before its deadline; empty for a deadline come due
    reason: str = ""


class SweepFailurePublic(BaseModel):
    agreement_id: str
    order_id: str
    error: str


class SweepPublic(BaseModel):
    rows_deleted: int
    receipts: list[ReceiptPublic]
    failures: list[SweepFailurePublic]


class PurgePublic(BaseModel):
    agreements: list[str]  # every agreement held as consumer
    terminated: list[str]  # those this purge ended
    rows_deleted: int
    receipts: list[ReceiptPublic]  # issued by this purge
    already_answered: int  # (agreement, order) pairs with a receipt from before
    failures: list[SweepFailurePublic]
    #: outbox messages not yet delivered (receipts, terminations) after trying once
    undelivered: int


class DutyPublic(BaseModel):
    agreement_id: str
    consumer_id: str
    order_id: str
    retention_days: int
    deadline: str | None
    status: str
    receipt_id: str | None


class DutyCountsPublic(BaseModel):
    """How many deletion duties stand in each status (`policies.retention.DutyStatus`)."""

    overdue: int
    due: int
    pending: int
    fulfilled_late: int
    fulfilled: int
    total: int


class ClockPublic(BaseModel):
    now: str | None
    offset_days: float
    control: bool


# -- domain -> API -----------------------------------------------------------------------


def api_time(value: datetime | None) -> str | None:
    return None if value is None else format_datetime(value)


def negotiation_public(n: Negotiation) -> NegotiationPublic:
    signed = n.agreement
    return NegotiationPublic(
        negotiation_id=n.negotiation_id,
        role=n.role.value,
        state=n.state.value,
        provider_id=n.provider_id,
        consumer_id=n.consumer_id,
        asset_id=n.asset_id,
        reason=n.reason,
        agreement_id=None if signed is None else signed.agreement.agreement_id,
        provider_signed=signed is not None,
        consumer_signed=signed is not None and signed.consumer_signature is not None,
        offer=policy_to_dict(n.offer),
        messages=len(n.seen),
    )


def agreement_public(stored: StoredAgreement) -> AgreementPublic:
    signed = stored.signed
    terms = signed.agreement
    return AgreementPublic(
        agreement_id=terms.agreement_id,
        role=stored.role.value,
        provider_id=terms.provider_id,
        consumer_id=terms.consumer_id,
        asset_id=terms.asset_id,
        agreed_at=api_time(terms.agreed_at),
        digest=terms.digest().hex(),
        active=stored.active,
        terminated_at=api_time(stored.terminated_at),
        termination_reason=stored.termination_reason,
        provider_signature=signed.provider_signature.hex(),
        consumer_signature=None
        if signed.consumer_signature is None
        else signed.consumer_signature.hex(),
    )


def agreement_full(stored: StoredAgreement) -> AgreementFull:
    signed = stored.signed
    return AgreementFull(
        **agreement_public(stored).model_dump(),
        canonical=signed.canonical_bytes.decode(),
        policy=policy_to_dict(signed.agreement.policy),
    )


def transfer_public(p: TransferProcess, error: str = "") -> TransferPublic:
    return TransferPublic(
        transfer_id=p.transfer_id,
        agreement_id=p.agreement_id,
        role=p.role.value,
        state=p.state.value,
        offset=p.offset,
        digest=p.checkpoint.digest.hex(),
        order_id=p.order_id,
        purpose=p.purpose,
        since=p.since,
        position=p.checkpoint.position,
        reason=p.reason,
        error=error,
    )


def change_public(c: ReceivedChange) -> ChangePublic:
    return ChangePublic(
        agreement_id=c.agreement_id,
        record_key=c.record_key,
        version=c.version,
        order_id=c.order_id,
        withdrawn=c.withdrawn,
        content_sha256=c.content_sha256,
        source_id=c.source_id,
        received_at=api_time(c.received_at),
    )


def duty_public(report: DutyReport) -> DutyPublic:
    duty = report.duty
    return DutyPublic(
        agreement_id=duty.agreement_id,
        consumer_id=duty.consumer_id,
        order_id=duty.order_id,
        retention_days=duty.retention_days,
        deadline=api_time(duty.deadline),
        status=report.status.value,
        receipt_id=None if report.receipt is None else report.receipt.receipt_id,
    )


def duty_counts_public(counts: dict[DutyStatus, int]) -> DutyCountsPublic:
    by_status = {status.value: counts.get(status, 0) for status in DutyStatus}
    return DutyCountsPublic(**by_status, total=sum(by_status.values()))


def receipt_public(s: SignedReceipt) -> ReceiptPublic:
    r = s.receipt
    return ReceiptPublic(
        receipt_id=r.receipt_id,
        agreement_id=r.agreement_id,
        order_id=r.order_id,
        consumer_id=r.consumer_id,
        row_count=r.row_count,
        content_sha256=r.content_sha256,
        deleted_at=api_time(r.deleted_at),
        signature=s.signature.hex(),
        reason=r.reason,
    )


def entry_public(e: CatalogEntry) -> CatalogEntryPublic:
    return CatalogEntryPublic(
        provider_id=e.provider_id,
        asset_id=e.asset_id,
        title=e.title,
        kind=e.kind.value,
        fields=sorted(e.fields),
        pseudonymized=sorted(e.pseudonymized),
        offer=policy_to_dict(e.offer),
    )


def record_version_public(v: RecordVersion) -> RecordVersionPublic:
    return RecordVersionPublic(
        version=v.version,
        content={k: api_time(x) if isinstance(x, datetime) else x for k, x in v.content.items()},
        withdrawn_at=api_time(v.withdrawn_at),
        replaced_at=api_time(v.replaced_at),
        replaced_by=v.replaced_by,
    )
