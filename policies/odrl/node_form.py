"""ODRL 2.2 policies back in the node's own form (`policies.model.Policy`): the inverse of
`bridge.to_odrl`.

Why: a peer speaking the Dataspace Protocol sends its offers and agreements as ODRL
JSON-LD, while the negotiation machine, the offer logic (`connector.offers`) and the
release gate work on the node's policy form. A policy enters a negotiation only when it
says exactly something the node's form can say (the node's profile operands and actions,
atomic constraints, delete duties): anything else (a logical constraint, a Catena-X term,
a precondition duty) is refused by name, never approximated, because a dropped term
could be the one that forbids. ``from_odrl(to_odrl(p)) == p`` for every node policy.
"""

from __future__ import annotations

from datetime import datetime

from qdspace.policies.errors import PolicySyntaxError
from qdspace.policies.model import (
    SET_OPERATORS,
    Action,
    Constraint,
    Duty,
    LeftOperand,
    Operator,
    Permission,
    Policy,
    PolicyType,
    Prohibition,
    RightOperand,
)
from qdspace.policies.odrl.literals import Duration, Value
from qdspace.policies.odrl.model import Atomic, OdrlPolicy, Rule
from qdspace.policies.odrl.model import Constraint as OdrlConstraint
from qdspace.policies.odrl.model import Duty as OdrlDuty
from qdspace.policies.odrl.vocab import PolicyKind

_LEFT = {str(o): o for o in LeftOperand}
_ACTIONS = {str(a): a for a in Action}


def _right(
    left: LeftOperand, operator: Operator, values: tuple[Value, ...], path: str
) -> RightOperand:
    if left is LeftOperand.FIELDS or operator in SET_OPERATORS:
        if not all(isinstance(v, str) for v in values):
            raise PolicySyntaxError(path, f"{operator} on {left} needs strings")
        return frozenset(str(v) for v in values)
    if len(values) != 1:
        raise PolicySyntaxError(path, f"{operator} on {left} takes one value")
    value = values[0]
    if left is LeftOperand.RETENTION:
        days = value.days if isinstance(value, Duration) else None
        if days is None:
            raise PolicySyntaxError(path, "retention must be a whole number of days (PnD)")
        return days
    if left is LeftOperand.DATETIME:
        if not isinstance(value, datetime):
            raise PolicySyntaxError(path, "dateTime needs an xsd:dateTime")
        return value
    if not isinstance(value, str):
        raise PolicySyntaxError(path, f"{left} needs a string")
    return value


def _constraints(items: tuple[OdrlConstraint, ...], path: str) -> tuple[Constraint, ...]:
    out: list[Constraint] = []
    for index, item in enumerate(items):
        where = f"{path}.constraint[{index}]"
        if not isinstance(item, Atomic):
            raise PolicySyntaxError(
                where, "a logical constraint has no form in this node's policies"
            )
        left = _LEFT.get(item.left.name)
        if left is None:
            raise PolicySyntaxError(where, f"left operand {item.left.name} is not negotiable here")
        try:
            operator = Operator(str(item.operator))
        except ValueError:
            raise PolicySyntaxError(
                where, f"operator {item.operator} is not negotiable here"
            ) from None
        out.append(Constraint(left, operator, _right(left, operator, item.right, where)))
    return tuple(out)


def _action(name: str, path: str) -> Action:
    action = _ACTIONS.get(name)
    if action is None:
        raise PolicySyntaxError(f"{path}.action", f"action {name} is not negotiable here")
    return action


def _duty(duty: OdrlDuty, path: str) -> Duty:
    receipt = True if duty.receipt is None else duty.receipt
    constraints = _constraints(duty.constraints, path)
    return Duty(_action(duty.action.name, path), constraints, receipt)


def _permission(rule: Rule, path: str) -> Permission:
    duties = tuple(_duty(d, f"{path}.duty[{i}]") for i, d in enumerate(rule.duties))
    return Permission(_action(rule.action.name, path), _constraints(rule.constraints, path), duties)


def _prohibition(rule: Rule, path: str) -> Prohibition:
    return Prohibition(_action(rule.action.name, path), _constraints(rule.constraints, path))


def from_odrl(policy: OdrlPolicy, *, target: str | None = None) -> Policy:
    """`policy` in the node's form; `target` stands in for a catalog offer's (which names none)."""
    if policy.kind not in (PolicyKind.OFFER, PolicyKind.AGREEMENT):
        raise PolicySyntaxError("$.@type", f"a {policy.kind} is neither an Offer nor an Agreement")
    aim = policy.target or target
    if not policy.assigner or not aim:
        raise PolicySyntaxError("$", "the policy names no assigner or no target")
    return Policy(
        uid=policy.id,
        type=PolicyType(str(policy.kind)),
        assigner=policy.assigner,
        target=aim,
        permissions=tuple(
            _permission(r, f"$.permission[{i}]") for i, r in enumerate(policy.permissions)
        ),
        prohibitions=tuple(
            _prohibition(r, f"$.prohibition[{i}]") for i, r in enumerate(policy.prohibitions)
        ),
        obligations=tuple(_duty(d, f"$.obligation[{i}]") for i, d in enumerate(policy.obligations)),
        assignee=policy.assignee,
    )
