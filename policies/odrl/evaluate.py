"""Evaluate an ODRL 2.2 policy against a request context; pure, no I/O.

Each constraint evaluates to satisfied, not satisfied, unknown (the request
lacks the fact) or unevaluable (the node cannot decide it). Logical constraints
combine their items (``and``, ``or``, ``xone``; ``andSequence`` stops at the
first item that does not hold); an unevaluable item makes the whole policy
indeterminate, which is a denial, so a policy the node cannot fully evaluate is
never treated as permitted.

Rules: a permission is *active* when its action covers the request and all its
constraints hold, and *satisfied* when its precondition duties (permission
duties whose action is done before use) are fulfilled as well; duties done
after use (delete within the retention period) and the policy's obligations are
reported, not checked here. A prohibition applies unless the request shows one
of its constraints does not hold (unknown means it applies). When a satisfied
permission and an applying prohibition meet, the policy's conflict strategy
decides: ``perm`` permits, ``prohibit`` denies, ``invalid`` (the ODRL default)
voids the policy. Without a satisfied permission nothing is permitted, which is
also how a prohibition-only policy reads.

`Context.deferred` names facts the caller checks later, row by row (a live
stream names no order): in a permission such a constraint counts as holding, in
a prohibition as unknown.
"""

from __future__ import annotations

import operator as op
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from qdspace.policies.odrl.literals import Duration, Value, literal_text
from qdspace.policies.odrl.model import Atomic, Constraint, Duty, Logical, OdrlPolicy, Rule
from qdspace.policies.odrl.purposes import is_a
from qdspace.policies.odrl.report import (
    ConstraintReport,
    DutyReport,
    Outcome,
    Report,
    RuleReport,
    State,
)
from qdspace.policies.odrl.vocab import Conflict, LogicalOperator, Operator, ValueKind, covers

Fact = Value | frozenset[str]


@dataclass(frozen=True)
class Context:
    """What is asked (`action`) and the facts the node knows about the request."""

    action: str
    facts: Mapping[str, Fact] = field(default_factory=dict)
    fulfilled: frozenset[str] = frozenset()  # precondition duties done (action names)
    deferred: frozenset[str] = frozenset()


class _Unevaluable(Exception):
    pass


_KIND_TYPES: dict[ValueKind, tuple[type, ...]] = {
    ValueKind.STRING: (str,),
    ValueKind.INTEGER: (int,),
    ValueKind.DECIMAL: (int, Decimal),
    ValueKind.DATETIME: (datetime,),
    ValueKind.DURATION: (Duration,),
}


def _as_set(value: Fact) -> frozenset[object]:
    return frozenset(value) if isinstance(value, frozenset) else frozenset({value})


def _order(fact: Value, right: Value, operator: Operator) -> bool:
    if isinstance(fact, Duration) and isinstance(right, Duration):
        if not fact.comparable(right):
            raise _Unevaluable(f"durations {fact} and {right} cannot be ordered")
        a: Any = fact.key()
        b: Any = right.key()
    else:
        a, b = fact, right
    return bool(_ORDER[operator](a, b))


_ORDER = {Operator.LT: op.lt, Operator.LTEQ: op.le, Operator.GT: op.gt, Operator.GTEQ: op.ge}


def _holds(atom: Atomic, fact: Fact) -> bool:
    """Compare `fact` with the right operand; raises `_Unevaluable` when it cannot."""
    spec, operator, right = atom.left, atom.operator, atom.right
    values = fact if isinstance(fact, frozenset) else (fact,)
    kinds = _KIND_TYPES[spec.kind]
    if any(isinstance(v, bool) or not isinstance(v, kinds) for v in values):
        raise _Unevaluable(f"the request's {spec.fact} is not a {spec.kind}")
    left, rights = _as_set(fact), frozenset(right)
    match operator:
        case Operator.EQ | Operator.NEQ:
            if isinstance(fact, frozenset):
                equal = right[0] in fact if len(right) == 1 else fact == rights
            else:
                equal = fact == right[0]
            return equal == (operator is Operator.EQ)
        case Operator.LT | Operator.LTEQ | Operator.GT | Operator.GTEQ:
            if isinstance(fact, frozenset):
                raise _Unevaluable(f"{operator} cannot compare a set")
            return _order(fact, right[0], operator)
        case Operator.IS_A:
            if isinstance(fact, frozenset) or not isinstance(fact, str):
                raise _Unevaluable(f"isA needs one {spec.fact}")
            return is_a(fact, str(right[0]))
        case Operator.HAS_PART | Operator.IS_ALL_OF:
            return rights <= left
        case Operator.IS_PART_OF:
            return left <= rights
        case Operator.IS_ANY_OF:
            return bool(left & rights)
        case Operator.IS_NONE_OF:
            return not left & rights


def _describe(fact: Fact) -> str:
    if isinstance(fact, frozenset):
        return "[" + ", ".join(sorted(fact)) + "]"
    return literal_text(fact)


def _atomic(atom: Atomic, ctx: Context, path: str, deferred_as: State) -> ConstraintReport:
    text, spec = atom.text(), atom.left
    if spec.narrows:
        return ConstraintReport(path, text, State.HOLDS, "narrows the fields that are released")
    fact = ctx.facts.get(spec.fact)
    if fact is None:
        if spec.fact in ctx.deferred:
            return ConstraintReport(path, text, deferred_as, f"{spec.fact} is checked per row")
        return ConstraintReport(path, text, State.UNKNOWN, f"request states no {spec.fact}")
    try:
        holds = _holds(atom, fact)
    except _Unevaluable as exc:
        return ConstraintReport(path, text, State.ERROR, str(exc))
    except TypeError:
        return ConstraintReport(path, text, State.ERROR, f"{spec.fact} cannot be compared")
    state = State.HOLDS if holds else State.FAILS
    return ConstraintReport(path, text, state, f"{spec.fact} is {_describe(fact)}")


def _combine(operator: LogicalOperator, states: list[State]) -> State:
    if State.ERROR in states:
        return State.ERROR
    holding = states.count(State.HOLDS)
    unknown = State.UNKNOWN in states
    match operator:
        case LogicalOperator.AND | LogicalOperator.AND_SEQUENCE:
            if State.FAILS in states or State.SKIPPED in states:
                return State.FAILS
            return State.UNKNOWN if unknown else State.HOLDS
        case LogicalOperator.OR:
            if holding:
                return State.HOLDS
            return State.UNKNOWN if unknown else State.FAILS
        case LogicalOperator.XONE:
            if holding > 1:
                return State.FAILS
            if unknown:
                return State.UNKNOWN
            return State.HOLDS if holding == 1 else State.FAILS


def _constraint(item: Constraint, ctx: Context, path: str, deferred_as: State) -> ConstraintReport:
    if isinstance(item, Atomic):
        return _atomic(item, ctx, path, deferred_as)
    return _logical(item, ctx, path, deferred_as)


def _logical(item: Logical, ctx: Context, path: str, deferred_as: State) -> ConstraintReport:
    reports: list[ConstraintReport] = []
    stop = False
    for index, child in enumerate(item.items):
        child_path = f"{path}.{item.operator}[{index}]"
        if stop:
            reports.append(
                ConstraintReport(child_path, _text(child), State.SKIPPED, "an earlier item failed")
            )
            continue
        report = _constraint(child, ctx, child_path, deferred_as)
        reports.append(report)
        stop = item.operator is LogicalOperator.AND_SEQUENCE and report.state is not State.HOLDS
    state = _combine(item.operator, [r.state for r in reports])
    holding = sum(r.state is State.HOLDS for r in reports)
    why = f"{holding} of {len(reports)} items satisfied"
    return ConstraintReport(path, item.text(), state, why, tuple(reports))


def _text(item: Constraint) -> str:
    return item.text()


def _constraints(
    items: tuple[Constraint, ...], ctx: Context, path: str, deferred_as: State
) -> tuple[tuple[ConstraintReport, ...], State]:
    reports = tuple(
        _constraint(item, ctx, f"{path}.constraint[{i}]", deferred_as)
        for i, item in enumerate(items)
    )
    return reports, _combine(LogicalOperator.AND, [r.state for r in reports])


def _describe_duty(duty: Duty, path: str) -> tuple[ConstraintReport, ...]:
    return tuple(
        ConstraintReport(f"{path}.constraint[{i}]", item.text(), State.HOLDS, "a term of the duty")
        for i, item in enumerate(duty.constraints)
    )


def _duty(duty: Duty, ctx: Context, path: str, *, obligation: bool = False) -> DutyReport:
    terms = _describe_duty(duty, path)
    name = duty.action.name
    if duty.after_use or obligation:
        return DutyReport(path, name, "after use", "pending", "to be fulfilled after use", terms)
    if name in ctx.fulfilled:
        return DutyReport(
            path, name, "before use", "fulfilled", "the request reports it done", terms
        )
    return DutyReport(
        path, name, "before use", "not fulfilled", f"{name} must be fulfilled before use", terms
    )


def _permission(rule: Rule, ctx: Context, path: str) -> RuleReport:
    relevant = covers(rule.action.name, ctx.action)
    reports, state = _constraints(rule.constraints, ctx, path, State.HOLDS)
    duties = tuple(_duty(d, ctx, f"{path}.duty[{i}]") for i, d in enumerate(rule.duties))
    active = relevant and state is State.HOLDS
    open_duties = [d for d in duties if d.state == "not fulfilled"]
    satisfied = active and not open_duties
    if not relevant:
        why = f"it is about {rule.action.name}, not {ctx.action}"
    elif state is not State.HOLDS:
        failing = _first(reports)
        why = failing.why if failing else str(state)
    elif open_duties:
        why = open_duties[0].why
    else:
        why = "every constraint holds"
    return RuleReport(
        path,
        "permission",
        rule.action.name,
        relevant,
        active,
        satisfied,
        state,
        why,
        reports,
        duties,
    )


def _first(reports: tuple[ConstraintReport, ...]) -> ConstraintReport | None:
    """The innermost report that explains why a constraint did not hold."""
    for report in reports:
        if report.state is State.HOLDS:
            continue
        inner = _first(report.items)
        return inner if inner is not None and report.state is not State.SKIPPED else report
    return None


def _prohibition(rule: Rule, ctx: Context, path: str) -> RuleReport:
    relevant = covers(rule.action.name, ctx.action)
    reports, state = _constraints(rule.constraints, ctx, path, State.UNKNOWN)
    active = relevant and state in (State.HOLDS, State.UNKNOWN)
    if not relevant:
        why = f"it is about {rule.action.name}, not {ctx.action}"
    elif state is State.UNKNOWN:
        why = "the request does not show it is out of scope, so it applies"
    elif active:
        why = "every constraint holds"
    else:
        failing = _first(reports)
        why = failing.why if failing else str(state)
    return RuleReport(
        path, "prohibition", rule.action.name, relevant, active, active, state, why, reports
    )


def _decide(policy: OdrlPolicy, ctx: Context, rules: tuple[RuleReport, ...]) -> tuple[Outcome, str]:
    broken = next((r for r in rules if r.state is State.ERROR), None)
    if broken is not None:
        failing = _first(broken.constraints)
        detail = failing.why if failing else "unevaluable"
        return Outcome.INDETERMINATE, f"{broken.path} cannot be evaluated: {detail}"
    granted = next((r for r in rules if r.kind == "permission" and r.satisfied), None)
    denied = next((r for r in rules if r.kind == "prohibition" and r.active), None)
    if granted is not None and denied is not None:
        match policy.conflict:
            case Conflict.PERM:
                return Outcome.PERMIT, f"{granted.path} wins over {denied.path} (conflict perm)"
            case Conflict.PROHIBIT:
                return Outcome.DENY, f"action {ctx.action} is prohibited ({denied.path})"
            case Conflict.INVALID:
                return Outcome.INVALID, (
                    f"{granted.path} and {denied.path} conflict, so the policy is void "
                    "(conflict invalid)"
                )
    if denied is not None:
        return Outcome.DENY, f"action {ctx.action} is prohibited ({denied.path})"
    if granted is not None:
        return Outcome.PERMIT, f"granted by {granted.path}"
    relevant = [r for r in rules if r.kind == "permission" and r.relevant]
    if not relevant:
        return Outcome.DENY, f"no permission grants {ctx.action}"
    return Outcome.DENY, relevant[0].why


def evaluate_policy(policy: OdrlPolicy, ctx: Context) -> Report:
    """The report of `policy` for `ctx`; `report.permitted` is the decision."""
    rules = tuple(
        _permission(rule, ctx, f"permission[{i}]") for i, rule in enumerate(policy.permissions)
    ) + tuple(
        _prohibition(rule, ctx, f"prohibition[{i}]") for i, rule in enumerate(policy.prohibitions)
    )
    obligations = tuple(
        _duty(duty, ctx, f"obligation[{i}]", obligation=True)
        for i, duty in enumerate(policy.obligations)
    )
    outcome, reason = _decide(policy, ctx, rules)
    return Report(policy.id, ctx.action, outcome, reason, str(policy.conflict), rules, obligations)
