"""The node's own policies (`policies.model.Policy`) in the general ODRL model.

Agreements already signed between nodes keep their form and their bytes
(`policies.codec`, `policies.canonical`); this bridge reads them as ODRL 2.2,
so the same evaluator explains them and the same JSON-LD writer publishes
them. The mapping keeps the node's semantics: prohibitions win over
permissions (conflict ``prohibit``), ``fields`` narrows what is released, a
request that names no order has its order checked per row, and the delete duty
with its retention in days becomes an after-use duty with an ``xsd:duration``.
"""

from __future__ import annotations

from dataclasses import replace

from qdspace.policies.evaluate import Decision, Request, evaluate
from qdspace.policies.model import Constraint, Duty, LeftOperand, Permission, Policy, Prohibition
from qdspace.policies.odrl.evaluate import Context, Fact, evaluate_policy
from qdspace.policies.odrl.literals import Duration, Value
from qdspace.policies.odrl.model import Atomic, OdrlPolicy, Rule
from qdspace.policies.odrl.model import Duty as OdrlDuty
from qdspace.policies.odrl.report import Outcome, Report
from qdspace.policies.odrl.vocab import (
    ACTION_NAMES,
    OPERANDS,
    QDS_PROFILE,
    Conflict,
    Operator,
    PolicyKind,
    operand_by_name,
)


def _right(constraint: Constraint) -> tuple[Value, ...]:
    right = constraint.right_operand
    if isinstance(right, frozenset):
        return tuple(sorted(right))
    if constraint.left_operand is LeftOperand.RETENTION and isinstance(right, int):
        return (Duration.of_days(right),)
    return (right,)


def _atomic(constraint: Constraint) -> Atomic:
    spec = operand_by_name(str(constraint.left_operand))
    assert spec.iri in OPERANDS
    return Atomic(spec, Operator(str(constraint.operator)), _right(constraint))


def _duty(duty: Duty) -> OdrlDuty:
    return OdrlDuty(
        ACTION_NAMES[str(duty.action)], tuple(_atomic(c) for c in duty.constraints), duty.receipt
    )


def _rule(rule: Permission | Prohibition) -> Rule:
    duties = tuple(_duty(d) for d in rule.duties) if isinstance(rule, Permission) else ()
    return Rule(ACTION_NAMES[str(rule.action)], tuple(_atomic(c) for c in rule.constraints), duties)


def to_odrl(policy: Policy) -> OdrlPolicy:
    """`policy` as an ODRL Offer or Agreement in the node's profile."""
    return OdrlPolicy(
        id=policy.uid,
        kind=PolicyKind(str(policy.type)),
        permissions=tuple(_rule(p) for p in policy.permissions),
        prohibitions=tuple(_rule(p) for p in policy.prohibitions),
        obligations=tuple(_duty(d) for d in policy.obligations),
        assigner=policy.assigner,
        assignee=policy.assignee,
        target=policy.target,
        profiles=(QDS_PROFILE,),
        conflict=Conflict.PROHIBIT,
    )


def to_context(request: Request, **member: Fact) -> Context:
    """The evaluation context of a node request; `member` adds facts about the peer
    (``bpn``, ``membership``, ``frameworkAgreement``, ``contractReference``)."""
    facts: dict[str, Fact] = {"dateTime": request.at, **member}
    if request.purpose is not None:
        facts["purpose"] = request.purpose
    if request.order_id is not None:
        facts["order"] = request.order_id
    if request.fields is not None:
        facts["fields"] = request.fields
    if request.frameworks is not None:
        facts["frameworkAgreement"] = request.frameworks
    deferred = frozenset() if request.order_id is not None else frozenset({"order"})
    return Context(action=str(request.action), facts=facts, deferred=deferred)


def explain(policy: Policy, request: Request, decision: Decision | None = None) -> Report:
    """The per-rule report of `request` under `policy`, with the node's enforced decision.

    The ODRL report covers the rules; the node also denies for reasons outside them
    (a terminated agreement, a passed retention deadline, a field not granted, an
    order the consumer did not place). `decision` is the one the release gate made
    (default: `policies.evaluate.evaluate`); when it differs, it is the outcome shown.
    """
    report = evaluate_policy(to_odrl(policy), to_context(request))
    enforced = decision if decision is not None else evaluate(policy, request)
    if enforced.allowed and report.permitted:
        return report
    if not enforced.allowed and not report.permitted and enforced.reason == report.reason:
        return report
    outcome = Outcome.PERMIT if enforced.allowed else Outcome.DENY
    return replace(report, outcome=outcome, reason=enforced.reason)
