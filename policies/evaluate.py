"""Decide a request against a policy, and let only what it allows leave.

`evaluate` answers yes or no with the exact reason a denied peer is told
(PERMISSION_DENIED carries it). `enforce_rows` is the gate in front of
serialisation: it yields only rows of orders in scope, with only the granted
fields, so nothing else can leave whatever the query returned.

Semantics, in order:

1. a terminated agreement denies everything;
2. past the retention deadline (order close + retention) everything is denied;
3. a prohibition whose action covers the request denies it, unless the request
   shows one of its constraints does not hold (unknown means it applies);
4. otherwise a permission whose action covers the request and whose
   constraints all hold allows it; the granted fields are the union over such
   permissions of the asset's fields narrowed by their ``fields`` constraints.

``use`` covers ``read``, ``stream`` and ``distribute``. A request that names no
order (a live stream) defers the order check to each row in `enforce_rows`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from qdspace.policies.canonical import format_datetime
from qdspace.policies.errors import PolicyDenied, PolicyError
from qdspace.policies.model import (
    FIELD_ALLOW_OPERATORS,
    RULE_ACTIONS,
    Action,
    Constraint,
    LeftOperand,
    Operator,
    Permission,
    Policy,
    Prohibition,
)
from qdspace.policies.retention import retention_days, retention_deadline


class InvalidRequestError(PolicyError, ValueError):
    """A request the evaluator cannot judge (a naive time, a non-rule action)."""


@dataclass(frozen=True)
class Request:
    """What a peer asks for, with the facts the node knows about the agreement."""

    action: Action
    at: datetime
    asset_fields: frozenset[str]
    purpose: str | None = None
    order_id: str | None = None
    fields: frozenset[str] | None = None  # None: every granted field
    terminated: bool = False
    order_closed_at: datetime | None = None
    # the framework agreements the space authority attests the consumer signed (None:
    # unknown, as for a peer outside a directory: a framework constraint then fails)
    frameworks: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if self.action not in RULE_ACTIONS:
            raise InvalidRequestError(f"action {self.action} cannot be requested")
        for name in ("at", "order_closed_at"):
            value = getattr(self, name)
            if value is not None and value.utcoffset() is None:
                raise InvalidRequestError(f"request {name} has no time zone")


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    allowed_fields: frozenset[str] = frozenset()

    def require(self) -> Decision:
        """Return self when allowed, else raise `PolicyDenied` with the reason."""
        if not self.allowed:
            raise PolicyDenied(self.reason)
        return self


def _deny(reason: str) -> Decision:
    return Decision(False, reason)


def covers(granted: Action, requested: Action) -> bool:
    return granted == requested or granted is Action.USE


def _describe(constraint: Constraint) -> str:
    right = constraint.right_operand
    text = ", ".join(sorted(right)) if isinstance(right, frozenset) else str(right)
    negated = constraint.operator in (Operator.NEQ, Operator.IS_NONE_OF)
    return f"not {text}" if negated else text


def _text_holds(constraint: Constraint, value: str) -> bool:
    right = constraint.right_operand
    match constraint.operator:
        case Operator.EQ:
            return value == right
        case Operator.NEQ:
            return value != right
        case Operator.IS_NONE_OF:
            return isinstance(right, frozenset) and value not in right
        case _:
            return isinstance(right, frozenset) and value in right


def _time_holds(constraint: Constraint, at: datetime) -> bool:
    right = constraint.right_operand
    assert isinstance(right, datetime)
    match constraint.operator:
        case Operator.LT:
            return at < right
        case Operator.LTEQ:
            return at <= right
        case Operator.GT:
            return at > right
        case _:
            return at >= right


def _time_reason(constraint: Constraint) -> str:
    right = constraint.right_operand
    assert isinstance(right, datetime)
    if constraint.operator in (Operator.LT, Operator.LTEQ):
        return f"agreement expired at {format_datetime(right)}"
    return f"agreement is not valid before {format_datetime(right)}"


def _constraint_failure(constraint: Constraint, request: Request) -> str | None:
    """Why `constraint` fails for `request`, or None when it holds (or is deferred)."""
    match constraint.left_operand:
        case LeftOperand.DATETIME:
            return None if _time_holds(constraint, request.at) else _time_reason(constraint)
        case LeftOperand.PURPOSE:
            if request.purpose is None:
                return f"request states no purpose (granted: {_describe(constraint)})"
            if _text_holds(constraint, request.purpose):
                return None
            return f"purpose {request.purpose} is not granted"
        case LeftOperand.ORDER:
            if request.order_id is None or _text_holds(constraint, request.order_id):
                return None
            scope = _describe(constraint)
            return f"order {request.order_id} is outside the agreement's scope ({scope})"
        case LeftOperand.FRAMEWORK:
            return _framework_failure(constraint, request.frameworks)
        case _:
            return None  # fields narrow the grant (see granted_fields); retention is a duty


def _framework_failure(constraint: Constraint, held: frozenset[str] | None) -> str | None:
    right = constraint.right_operand
    needed = right if isinstance(right, frozenset) else frozenset({str(right)})
    if held and needed & held:
        return None
    one = " or ".join(sorted(needed))
    attested = ", ".join(sorted(held)) if held else "none"
    return (
        f"the agreement is for members that signed the framework agreement {one}; "
        f"the space authority attests {attested} for the consumer"
    )


def granted_fields(permission: Permission, asset_fields: frozenset[str]) -> frozenset[str]:
    granted = asset_fields
    for constraint in permission.constraints:
        if constraint.left_operand is not LeftOperand.FIELDS:
            continue
        right = constraint.right_operand
        assert isinstance(right, frozenset)
        granted = (
            granted & right if constraint.operator in FIELD_ALLOW_OPERATORS else granted - right
        )
    return granted


def _prohibition_applies(constraints: tuple[Constraint, ...], request: Request) -> bool:
    for constraint in constraints:
        if constraint.left_operand is LeftOperand.DATETIME:
            if not _time_holds(constraint, request.at):
                return False
            continue
        value = (
            request.purpose if constraint.left_operand is LeftOperand.PURPOSE else request.order_id
        )
        if value is not None and not _text_holds(constraint, value):
            return False
    return True


def _check_fields(request: Request, granted: frozenset[str]) -> Decision:
    if request.fields is None:
        if not granted:
            return _deny("no field of this asset is granted")
        return Decision(True, "granted", granted)
    if not request.fields:
        return _deny("request names no fields")
    for name in sorted(request.fields):
        if name not in request.asset_fields:
            return _deny(f"field {name} is not offered by this asset")
        if name not in granted:
            return _deny(f"field {name} is not granted")
    return Decision(True, "granted", request.fields)


def evaluate(policy: Policy, request: Request) -> Decision:
    """Allow or deny `request` under `policy`, with the reason (see the module docstring)."""
    if request.terminated:
        return _deny("agreement terminated")
    deadline = retention_deadline(policy, request.order_closed_at)
    if deadline is not None and request.at >= deadline:
        closed = format_datetime(request.order_closed_at) if request.order_closed_at else "?"
        return _deny(
            f"agreement expired at {format_datetime(deadline)}: retention of "
            f"{retention_days(policy)} days after the order closed at {closed} has passed"
        )
    for prohibition in policy.prohibitions:
        if covers(prohibition.action, request.action) and _prohibition_applies(
            prohibition.constraints, request
        ):
            return _deny(f"action {request.action} is prohibited")
    candidates = [p for p in policy.permissions if covers(p.action, request.action)]
    if not candidates:
        granted_actions = ", ".join(sorted({str(p.action) for p in policy.permissions}))
        return _deny(f"action {request.action} is not granted (granted: {granted_actions})")
    first_failure: str | None = None
    granted: frozenset[str] = frozenset()
    matched = False
    for permission in candidates:
        failure = next(
            (
                reason
                for c in permission.constraints
                if (reason := _constraint_failure(c, request)) is not None
            ),
            None,
        )
        if failure is None:
            matched = True
            granted |= granted_fields(permission, request.asset_fields)
        elif first_failure is None:
            first_failure = failure
    if not matched:
        return _deny(first_failure or "no permission applies")
    return _check_fields(request, granted)


def _order_checked_per_row(policy: Policy, request: Request) -> bool:
    rules: list[Permission | Prohibition] = [*policy.permissions, *policy.prohibitions]
    return request.order_id is None and any(
        covers(rule.action, request.action)
        and any(c.left_operand is LeftOperand.ORDER for c in rule.constraints)
        for rule in rules
    )


def order_in_scope(policy: Policy, order_id: str) -> bool:
    """Whether some permission's order scope includes `order_id` (purpose and time aside).

    The provider uses it to find the agreements an order closure concerns.
    """
    for permission in policy.permissions:
        orders = [c for c in permission.constraints if c.left_operand is LeftOperand.ORDER]
        if all(_text_holds(c, order_id) for c in orders):
            return True
    return False


def _orders_allowed(constraint: Constraint) -> frozenset[str] | None:
    """The orders an order constraint lets through, when they are finitely many (None:
    every order but some, as ``neq`` and ``isNoneOf`` do); as `_text_holds` reads it."""
    right = constraint.right_operand
    match constraint.operator:
        case Operator.EQ:
            return frozenset({right}) if isinstance(right, str) else frozenset()
        case Operator.NEQ | Operator.IS_NONE_OF:
            return None
        case _:
            return (
                frozenset(o for o in right if isinstance(o, str))
                if isinstance(right, frozenset)
                else frozenset()
            )


def scope_orders(policy: Policy) -> frozenset[str] | None:
    """The orders `order_in_scope` can be true for, when they are finitely many (None:
    a permission covers every order, or every order but some). No row of another order
    is let out under the policy, so a reader may narrow its query to these."""
    found: set[str] = set()
    for permission in policy.permissions:
        allowed: frozenset[str] | None = None  # no order constraint: every order
        for constraint in permission.constraints:
            if constraint.left_operand is LeftOperand.ORDER:
                these = _orders_allowed(constraint)
                if these is not None:
                    allowed = these if allowed is None else allowed & these
        if allowed is None:
            return None
        found |= allowed
    return frozenset(found)


def single_order(policy: Policy) -> str | None:
    """The one order `order_in_scope` can be true for, when the scope names exactly one
    (the common contract: one order's data); None when it covers several, every order,
    every order but some, or none. A store keeps it beside the agreement so that an order
    closure reads the agreements of that order (and those that name none), not every one
    (`connector.contract_store.agreements`)."""
    found = scope_orders(policy)
    return next(iter(found)) if found is not None and len(found) == 1 else None


class RowGate:
    """One request's decision, compiled: `gate(row)` is the row as it may leave, or None.

    A row whose order differs from the request's order, or (for a request that
    names no order, such as a live stream) whose order the policy does not
    cover, is dropped; so is a row without an order when the order scope has to
    be checked. `closed_orders` gives the close time of each closed order, so a
    per-row decision also honours that order's retention deadline.
    """

    def __init__(
        self,
        policy: Policy,
        request: Request,
        *,
        order_key: str = "order_id",
        closed_orders: Mapping[str, datetime] | None = None,
    ) -> None:
        self.policy = policy
        self.request = request
        self.order_key = order_key
        self.decision = evaluate(policy, request)
        self._per_row = _order_checked_per_row(policy, request)
        self._closed = dict(closed_orders or {})
        self._by_order: dict[str, Decision] = {}

    def _order_decision(self, order: str) -> Decision:
        decision = self._by_order.get(order)
        if decision is None:
            closed_at = self._closed.get(order, self.request.order_closed_at)
            decision = evaluate(
                self.policy, replace(self.request, order_id=order, order_closed_at=closed_at)
            )
            self._by_order[order] = decision
        return decision

    def __call__(self, row: Mapping[str, Any]) -> dict[str, Any] | None:
        if not self.decision.allowed:
            return None
        order = row.get(self.order_key)
        fields = self.decision.allowed_fields
        if self.request.order_id is not None:
            if order != self.request.order_id:
                return None
        elif self._per_row or (isinstance(order, str) and order in self._closed):
            if not isinstance(order, str):
                return None
            decision = self._order_decision(order)
            if not decision.allowed:
                return None
            fields = decision.allowed_fields
        return {name: value for name, value in row.items() if name in fields}


def enforce_rows(
    policy: Policy,
    request: Request,
    rows: Iterable[Mapping[str, Any]],
    *,
    order_key: str = "order_id",
    closed_orders: Mapping[str, datetime] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield only in-scope rows, projected on the granted fields; nothing when denied.

    See `RowGate` for the per-row rules.
    """
    gate = RowGate(policy, request, order_key=order_key, closed_orders=closed_orders)
    if not gate.decision.allowed:
        return
    for row in rows:
        out = gate(row)
        if out is not None:
            yield out
