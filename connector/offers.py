"""What a provider publishes and how it answers a contract request, as pure functions.

`standard_assets` is the catalog every trading node publishes over its own QDM:
the inspection results of an order, the process data along an order's batch
genealogy, the operator log of an order (operator ids pseudonymised) and the
live inspection stream. Each comes with the standard offer (`make_offer`):
use for quality purposes, no redistribution, delete within 180 days of the
order closing with a signed receipt.

A consumer asks for terms (a `ContractRequest` whose policy narrows the
offer to its orders, purposes and fields); `answer_request` is the provider's
decision: agree when the request is within the offer and covers only orders
the consumer placed, counter-offer the narrowed terms when it asks for more,
terminate when nothing of it can be granted. `acceptable_counter` is the
consumer's mirror: accept a counter-offer only if it grants no more than asked.

A federated-learning job is offered too (`federated_job_asset`): its terms are
fixed by the job, so `answer_job_request` agrees only to exactly the published
offer, and only with the job's members.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from qdspace.connector.assets import Asset, AssetKind
from qdspace.connector.paging import (
    INSPECTION_FIELDS,
    INSPECTION_TABLE,
    MEASUREMENT_FIELDS,
    MEASUREMENT_TABLE,
    OPERATOR_LOG_FIELDS,
    OPERATOR_LOG_TABLE,
)
from qdspace.policies.model import (
    DEFAULT_RETENTION_DAYS,
    Action,
    Constraint,
    Duty,
    LeftOperand,
    OfferTerms,
    Operator,
    Policy,
    PolicyType,
    make_offer,
)

QUALITY_PURPOSES = frozenset({"quality-assurance", "spc-monitoring", "failure-analysis"})
#: the traceability asset's own purpose (`connector.trace.ROOT_CAUSE_PURPOSE`)
TRACE_PURPOSES = frozenset({"root-cause-analysis"})
#: what a trace answer is made of: findings and the genealogy of the batches asked about
TRACE_FIELDS = frozenset({"findings", "genealogy"})
#: a producer's traceability offer is for whoever buys from it: OEMs and suppliers
TRACE_AUDIENCE = frozenset({"oem", "supplier"})
# Internal bookkeeping a supplier does not share: which frame, and how fast the model was.
INSPECTION_OFFERED = INSPECTION_FIELDS - {"frame_id", "latency_ms", "image_hash"}
OPERATOR_LOG_OFFERED = OPERATOR_LOG_FIELDS - {"note"}
CUSTOMER_ROLES = frozenset({"oem"})


def standard_assets(provider_id: str) -> list[Asset]:
    """The assets every trading node offers over its own QDM (ids are stable names)."""

    def offer(asset_id: str, fields: frozenset[str]) -> Policy:
        terms = OfferTerms(purposes=QUALITY_PURPOSES, fields=fields)
        return make_offer(f"offer:{provider_id}:{asset_id}", provider_id, asset_id, terms)

    return [
        Asset(
            "inspections",
            "EL inspection results of an order",
            AssetKind.INSPECTIONS_OF_ORDER,
            (INSPECTION_TABLE.name,),
            INSPECTION_FIELDS,
            offer("inspections", INSPECTION_OFFERED),
            pseudonymized=frozenset(),
            audience=CUSTOMER_ROLES,
        ),
        Asset(
            "process-genealogy",
            "process data along the batch genealogy of an order",
            AssetKind.PROCESS_ALONG_GENEALOGY,
            (MEASUREMENT_TABLE.name,),
            MEASUREMENT_FIELDS,
            offer("process-genealogy", MEASUREMENT_FIELDS),
            pseudonymized=frozenset(),
            audience=CUSTOMER_ROLES,
        ),
        Asset(
            "operator-log",
            "operator actions of an order (operators pseudonymised)",
            AssetKind.OPERATOR_LOG_OF_ORDER,
            (OPERATOR_LOG_TABLE.name,),
            OPERATOR_LOG_FIELDS,
            offer("operator-log", OPERATOR_LOG_OFFERED),
            audience=CUSTOMER_ROLES,
        ),
        Asset(
            "traceability",
            "root-cause findings about batches you bought (no raw rows)",
            AssetKind.TRACEABILITY,
            ("qdm_measurement", "qdm_environment", "qdm_operator_log", "qdm_genealogy"),
            TRACE_FIELDS,
            make_offer(
                f"offer:{provider_id}:traceability",
                provider_id,
                "traceability",
                OfferTerms(purposes=TRACE_PURPOSES, fields=TRACE_FIELDS),
            ),
            pseudonymized=frozenset(),
            audience=TRACE_AUDIENCE,
        ),
        Asset(
            "live-inspections",
            "live EL inspection stream of the lines",
            AssetKind.LIVE_INSPECTION_STREAM,
            (INSPECTION_TABLE.name,),
            INSPECTION_FIELDS,
            offer("live-inspections", INSPECTION_OFFERED),
            pseudonymized=frozenset(),
            audience=CUSTOMER_ROLES,
        ),
    ]


MODEL_UPDATE_FIELD = "model_update"


def federated_job_asset(
    provider_id: str, asset_id: str, title: str, members: frozenset[str], terms: OfferTerms
) -> Asset:
    """A federated job in the coordinator's catalog: `members` (names) may negotiate it.

    It exposes one field, ``model_update`` (a member's clipped, masked change to
    the model), and no table: no row of anyone's QDM is released under it.
    """
    return Asset(
        asset_id,
        title,
        AssetKind.FEDERATED_JOB,
        (),
        frozenset({MODEL_UPDATE_FIELD}),
        make_offer(f"offer:{provider_id}:{asset_id}", provider_id, asset_id, terms),
        pseudonymized=frozenset(),
        consumers=members,
    )


class NonStandardPolicyError(ValueError):
    """A policy that is not one permission of the standard offer's shape."""


# The one operator each knob of the standard offer is written with (`make_offer`). A
# policy that says the same knob with another operator (``order isNoneOf [mine]``,
# ``purpose neq x``) means something else entirely, so it is not of the standard shape.
_STANDARD_OPERATORS: dict[LeftOperand, frozenset[Operator]] = {
    LeftOperand.PURPOSE: frozenset({Operator.IS_ANY_OF}),
    LeftOperand.ORDER: frozenset({Operator.IS_ANY_OF}),
    LeftOperand.FIELDS: frozenset({Operator.IS_PART_OF}),
    LeftOperand.DATETIME: frozenset({Operator.GTEQ, Operator.LT}),
    LeftOperand.FRAMEWORK: frozenset({Operator.EQ}),
}


def _standard_constraint(policy: Policy, c: Constraint, seen: set[tuple[str, str]]) -> None:
    """Refuse a constraint `make_offer` would not write: another operator, or a repeat."""
    allowed = _STANDARD_OPERATORS.get(c.left_operand, frozenset())
    if c.operator not in allowed:
        raise NonStandardPolicyError(
            f"policy {policy.uid}: {c.left_operand} {c.operator} is not a term we offer "
            f"(only {c.left_operand} {' or '.join(sorted(allowed)) or 'nothing'})"
        )
    key = (c.left_operand.value, c.operator.value)
    if key in seen:
        raise NonStandardPolicyError(f"policy {policy.uid}: {c.left_operand} {c.operator} twice")
    seen.add(key)


def _standard_duty(policy: Policy, duties: tuple[Duty, ...]) -> Duty:
    if len(duties) != 1:
        raise NonStandardPolicyError(f"policy {policy.uid} needs purposes and one delete duty")
    duty = duties[0]
    for c in duty.constraints:
        if c.left_operand is not LeftOperand.RETENTION or c.operator is not Operator.LTEQ:
            raise NonStandardPolicyError(
                f"policy {policy.uid}: the delete duty's {c.left_operand} {c.operator} "
                "is not a term we offer (only retention lteq DAYS)"
            )
    return duty


def offer_terms(policy: Policy) -> OfferTerms:
    """Read the knobs back out of a policy of the standard shape (`make_offer`'s).

    Strict on purpose: every constraint must use the operator `make_offer` writes for
    it, so that reading terms and writing them back is the identity; anything else
    raises `NonStandardPolicyError` (a provider never grants what it cannot read).
    """
    if len(policy.permissions) != 1 or policy.obligations:
        raise NonStandardPolicyError(f"policy {policy.uid} is not a single-permission offer")
    permission = policy.permissions[0]
    if permission.action is not Action.USE:
        raise NonStandardPolicyError(f"policy {policy.uid} grants {permission.action}, not use")
    purposes: frozenset[str] = frozenset()
    orders = fields = None
    not_before = not_after = None
    framework: str | None = None
    seen: set[tuple[str, str]] = set()
    for c in permission.constraints:
        _standard_constraint(policy, c, seen)
        right = c.right_operand
        if c.left_operand is LeftOperand.FRAMEWORK and isinstance(right, str):
            framework = right
            continue
        if not isinstance(right, frozenset | datetime):
            raise NonStandardPolicyError(f"policy {policy.uid}: {c.left_operand} {right!r}")
        if c.left_operand is LeftOperand.PURPOSE and isinstance(right, frozenset):
            purposes = right
        elif c.left_operand is LeftOperand.ORDER and isinstance(right, frozenset):
            orders = right
        elif c.left_operand is LeftOperand.FIELDS and isinstance(right, frozenset):
            fields = right
        elif c.left_operand is LeftOperand.DATETIME and isinstance(right, datetime):
            if c.operator is Operator.GTEQ:
                not_before = right
            else:
                not_after = right
        else:
            raise NonStandardPolicyError(f"policy {policy.uid}: constraint {c.left_operand}")
    if not purposes:
        raise NonStandardPolicyError(f"policy {policy.uid} needs purposes and one delete duty")
    duty = _standard_duty(policy, permission.duties)
    distribute = [p for p in policy.prohibitions if p.action is Action.DISTRIBUTE]
    if len(policy.prohibitions) != len(distribute) or len(distribute) > 1:
        raise NonStandardPolicyError(f"policy {policy.uid} has non-standard prohibitions")
    if any(p.constraints for p in distribute):  # "no distribution, except ..." is a loophole
        raise NonStandardPolicyError(f"policy {policy.uid}: a conditional prohibition")
    return OfferTerms(
        purposes=purposes,
        orders=orders,
        fields=fields,
        not_before=not_before,
        not_after=not_after,
        retention_days=duty.retention_days if duty.constraints else DEFAULT_RETENTION_DAYS,
        receipt=duty.receipt,
        allow_distribution=not distribute,
        framework=framework,
    )


class Verdict(StrEnum):
    AGREE = "agree"
    COUNTER = "counter"
    TERMINATE = "terminate"


@dataclass(frozen=True)
class Answer:
    """The provider's decision. `offer` is a policy the provider built itself: the
    counter-offer (COUNTER), or the terms to sign (AGREE); never the consumer's object."""

    verdict: Verdict
    offer: Policy | None = None
    reason: str = ""


def _narrow(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str] | None:
    if a is None:
        return b
    return a if b is None else a & b


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else max(a, b)


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else min(a, b)


def meet(a: OfferTerms, b: OfferTerms) -> OfferTerms:
    """The terms both ``a`` and ``b`` allow: the purposes, orders and fields in both, the
    later start and earlier end, the shorter retention, a receipt if either asks one,
    redistribution only if both allow it, the framework agreement either asks (``a``'s
    when both ask different ones: the callers put the provider's there). Empty sets
    stay empty: the caller decides."""
    return OfferTerms(
        purposes=a.purposes & b.purposes,
        orders=_narrow(a.orders, b.orders),
        fields=_narrow(a.fields, b.fields),
        not_before=_latest(a.not_before, b.not_before),
        not_after=_earliest(a.not_after, b.not_after),
        retention_days=min(a.retention_days, b.retention_days),
        receipt=a.receipt or b.receipt,
        allow_distribution=a.allow_distribution and b.allow_distribution,
        framework=a.framework or b.framework,
    )


def answer_request(
    published: Policy,
    requested: Policy,
    customer_orders: frozenset[str],
    counter_uid: str,
    frameworks: frozenset[str] | None = None,
) -> Answer:
    """The provider's answer to a consumer asking for `requested` under `published`.

    `customer_orders` are the orders the consumer placed with this provider: an
    agreement never covers anybody else's order. The provider rebuilds the terms it
    grants from its own reading of the request (`make_offer`) and agrees only when
    that rebuilt policy says exactly what the consumer asked; the agreement is then
    drafted from the rebuilt policy (`Answer.offer`). A request it cannot read (an
    operator it does not offer, an extra rule) is countered with its own terms.

    An offer that asks for a framework agreement keeps asking for it (a consumer cannot
    ask it away), and is agreed only with a consumer the space authority attests it
    for (`frameworks`, None: unknown): else the negotiation ends saying so.
    """
    pub = offer_terms(published)
    if pub.framework is not None and pub.framework not in (frameworks or ()):
        attested = ", ".join(sorted(frameworks or ())) or "none"
        return Answer(
            Verdict.TERMINATE,
            reason=f"{published.target} is offered to members that signed the framework "
            f"agreement {pub.framework}; the space authority attests {attested} for you",
        )
    reason = "the request asked for more than is offered"
    try:
        req = offer_terms(requested)
    except NonStandardPolicyError as exc:
        req, reason = OfferTerms(purposes=pub.purposes), f"{exc}; countered with our terms"
    purposes = req.purposes & pub.purposes
    if not purposes:
        wanted = ", ".join(sorted(req.purposes))
        return Answer(Verdict.TERMINATE, reason=f"purpose {wanted} is not offered")
    orders = _narrow(_narrow(req.orders, pub.orders), customer_orders)
    assert orders is not None
    if not orders:
        asked = _some(sorted(req.orders or ())) or "any order"
        return Answer(
            Verdict.TERMINATE, reason=f"no order in scope: {asked} is not an order you placed"
        )
    terms = replace(meet(req, pub), orders=orders, framework=pub.framework)
    if terms.fields is not None and not terms.fields:
        return Answer(Verdict.TERMINATE, reason="none of the requested fields is offered")
    ours = make_offer(requested.uid, published.assigner, published.target, terms)
    if requested.type is PolicyType.OFFER and ours.same_terms(requested):
        return Answer(Verdict.AGREE, ours)
    counter = make_offer(counter_uid, published.assigner, published.target, terms)
    return Answer(Verdict.COUNTER, counter, reason)


@dataclass(frozen=True)
class Narrowing:
    """What a consumer asks of a provider's published offer: its purposes, and where it
    wants less, only these orders and fields, a shorter retention, an end."""

    purposes: frozenset[str]
    orders: frozenset[str] | None = None
    fields: frozenset[str] | None = None
    retention_days: int | None = None
    not_after: datetime | None = None


def counter_request(asked: Policy, counter: Policy, uid: str) -> Policy | str:
    """Consumer side: what to ask back when the provider's counter-offer grants more than
    was asked (`acceptable_counter` said no): the counter-offer narrowed to what was
    asked (`meet`), on the provider's target and as its assigner, so that a provider
    deciding by `answer_request` agrees to it as it stands. A reason instead when
    nothing is left to ask: no purpose, order or field in both, or a counter-offer (or
    our own request) not of the standard shape, which this node cannot narrow."""
    try:
        mine, theirs = offer_terms(asked), offer_terms(counter)
    except NonStandardPolicyError as exc:
        return f"the counter-offer grants more than was asked and cannot be narrowed ({exc})"
    terms = replace(meet(mine, theirs), framework=theirs.framework)
    if not terms.purposes:
        return "the counter-offer grants none of the purposes asked"
    if terms.orders is not None and not terms.orders:
        return "the counter-offer covers none of the orders asked"
    if terms.fields is not None and not terms.fields:
        return "the counter-offer grants none of the fields asked"
    return make_offer(uid, counter.assigner, counter.target, terms)


def narrowed_request(published: Policy, ask: Narrowing) -> Policy:
    """Consumer side: the provider's published offer narrowed as ``ask`` says, the rest of
    the provider's terms kept, so that a provider deciding by `answer_request` agrees to
    it as it stands. An offer not of the standard shape (another connector's) raises
    `NonStandardPolicyError`: such an offer is asked for as published."""
    pub = offer_terms(published)
    terms = replace(
        pub,
        purposes=ask.purposes,
        orders=ask.orders if ask.orders is not None else pub.orders,
        fields=ask.fields if ask.fields is not None else pub.fields,
        retention_days=pub.retention_days if ask.retention_days is None else ask.retention_days,
        not_after=_earliest(ask.not_after, pub.not_after),
    )
    return make_offer(published.uid, published.assigner, published.target, terms)


def answer_job_request(asset: Asset, requested: Policy, consumer: str) -> Answer:
    """The coordinator's answer to member `consumer` (a name) asking to join a job.

    A job's terms are the same for every member: the request must be the published
    offer (same permission, duties and prohibitions), else nothing is agreed.
    """
    if not asset.negotiable_by(consumer):
        return Answer(
            Verdict.TERMINATE, reason=f"{consumer} is not a member of job asset {asset.asset_id}"
        )
    if requested.type is not PolicyType.OFFER or not requested.same_terms(asset.offer):
        return Answer(
            Verdict.TERMINATE,
            reason=f"job asset {asset.asset_id} is agreed only on its published offer "
            "(model updates for training, no raw data, no redistribution)",
        )
    return Answer(Verdict.AGREE, asset.offer)


def acceptable_counter(requested: Policy, counter: Policy) -> bool:
    """Consumer side: a counter-offer is acceptable when it grants nothing beyond the request
    and keeps its duties at least as strict (so the consumer never agrees to more)."""
    try:
        req, got = offer_terms(requested), offer_terms(counter)
    except NonStandardPolicyError:
        return False
    within = got.purposes <= req.purposes
    if req.orders is not None:
        within = within and got.orders is not None and got.orders <= req.orders
    if req.fields is not None:
        within = within and got.fields is not None and got.fields <= req.fields
    return within and bool(got.purposes) and (got.orders is None or bool(got.orders))


#: orders a refusal names at most (the rest counted): its reason is kept with the
#: negotiation and sent back, and a request may name thousands
NAMED_ORDERS = 5


def _some(orders: list[str]) -> str:
    """The first `NAMED_ORDERS` of `orders`, and how many more."""
    shown = ", ".join(orders[:NAMED_ORDERS])
    more = len(orders) - NAMED_ORDERS
    return f"{shown} and {more} more" if more > 0 else shown
