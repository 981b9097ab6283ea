"""ODRL JSON <-> `Policy`: a strict parser and a canonical serialiser.

The parser accepts exactly the shape `policy_to_dict` writes (plus
equivalent spellings: empty lists, unsorted or repeated list items, other time
zones) and refuses everything else with a `PolicySyntaxError` naming the JSON
path, because a policy a node half-understands is a policy it cannot enforce.
Duplicate object keys are refused too: two peers must never read one document
two ways.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar

from qdspace.policies.canonical import canonical_json, format_datetime, parse_datetime
from qdspace.policies.errors import PolicySyntaxError
from qdspace.policies.model import (
    CONTEXT,
    FRAMEWORK_TERM,
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
    check_operator,
)
from qdspace.util.json_depth import loads as bounded_json

_POLICY_KEYS = {
    "@context",
    "@type",
    "uid",
    "assigner",
    "assignee",
    "target",
    "permission",
    "prohibition",
    "obligation",
}
_E = TypeVar("_E", PolicyType, Action, LeftOperand, Operator)
_T = TypeVar("_T")


# ---------------------------------------------------------------- serialise


def _right_to_json(right: RightOperand) -> Any:
    if isinstance(right, datetime):
        return format_datetime(right)
    if isinstance(right, frozenset):
        return sorted(right)
    return right


def _constraint_to_dict(constraint: Constraint) -> dict[str, Any]:
    return {
        "leftOperand": str(constraint.left_operand),
        "operator": str(constraint.operator),
        "rightOperand": _right_to_json(constraint.right_operand),
    }


def _rule_to_dict(action: Action, constraints: tuple[Constraint, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {"action": str(action)}
    if constraints:
        out["constraint"] = [_constraint_to_dict(c) for c in constraints]
    return out


def _duty_to_dict(duty: Duty) -> dict[str, Any]:
    out = _rule_to_dict(duty.action, duty.constraints)
    out["receipt"] = duty.receipt
    return out


def _context_of(policy: Policy) -> list[Any]:
    """The policy's JSON-LD context: the node's, with the Catena-X term only when used."""
    terms = dict(CONTEXT[1])
    if policy.uses_framework:
        terms[FRAMEWORK_TERM[0]] = FRAMEWORK_TERM[1]
    return [CONTEXT[0], terms]


def policy_to_dict(policy: Policy) -> dict[str, Any]:
    """The ODRL JSON object of `policy` (empty lists and a missing assignee are omitted)."""
    out: dict[str, Any] = {
        "@context": _context_of(policy),
        "@type": str(policy.type),
        "uid": policy.uid,
        "assigner": policy.assigner,
        "target": policy.target,
    }
    if policy.assignee is not None:
        out["assignee"] = policy.assignee
    permissions = []
    for permission in policy.permissions:
        item = _rule_to_dict(permission.action, permission.constraints)
        if permission.duties:
            item["duty"] = [_duty_to_dict(d) for d in permission.duties]
        permissions.append(item)
    out["permission"] = permissions
    if policy.prohibitions:
        out["prohibition"] = [_rule_to_dict(p.action, p.constraints) for p in policy.prohibitions]
    if policy.obligations:
        out["obligation"] = [_duty_to_dict(d) for d in policy.obligations]
    return out


def policy_to_json(policy: Policy) -> bytes:
    """Canonical JSON bytes of `policy`: sorted keys, no whitespace, UTF-8."""
    return canonical_json(policy_to_dict(policy))


# -------------------------------------------------------------------- parse


def _reject_constant(name: str) -> Any:
    raise PolicySyntaxError("$", f"{name} is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise PolicySyntaxError("$", f"duplicate key {key!r}")
        out[key] = value
    return out


def _object(value: Any, path: str, keys: set[str], required: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PolicySyntaxError(path, f"expected an object, got {type(value).__name__}")
    for key in value:
        if key not in keys:
            raise PolicySyntaxError(f"{path}.{key}", f"unknown key (allowed: {sorted(keys)})")
    for key in required:
        if key not in value:
            raise PolicySyntaxError(f"{path}.{key}", "missing")
    return value


def _text(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise PolicySyntaxError(path, "expected a non-empty string")
    return value


def _enum(kind: type[_E], value: Any, path: str, what: str) -> _E:
    if isinstance(value, str):
        for member in kind:
            if member.value == value:
                return member
    known = ", ".join(member.value for member in kind)
    raise PolicySyntaxError(path, f"unknown {what} {value!r} (known: {known})")


def _list(value: Any, path: str, item: Callable[[Any, str], _T]) -> tuple[_T, ...]:
    if not isinstance(value, list):
        raise PolicySyntaxError(path, f"expected a list, got {type(value).__name__}")
    return tuple(item(entry, f"{path}[{index}]") for index, entry in enumerate(value))


def _right(left: LeftOperand, operator: Operator, value: Any, path: str) -> RightOperand:
    if left is LeftOperand.DATETIME:
        if not isinstance(value, str):
            raise PolicySyntaxError(path, "dateTime needs an ISO 8601 string")
        try:
            return parse_datetime(value)
        except ValueError as exc:
            raise PolicySyntaxError(path, str(exc)) from None
    if left is LeftOperand.RETENTION:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PolicySyntaxError(path, "retention needs a whole number of days")
        return value
    if left is LeftOperand.FIELDS or operator in SET_OPERATORS:
        return frozenset(_list(value, path, _text))
    return _text(value, path)


def _constraint(value: Any, path: str) -> Constraint:
    keys = {"leftOperand", "operator", "rightOperand"}
    raw = _object(value, path, keys, keys)
    left = _enum(LeftOperand, raw["leftOperand"], f"{path}.leftOperand", "leftOperand")
    operator = _enum(Operator, raw["operator"], f"{path}.operator", "operator")
    check_operator(left, operator, path)
    right = _right(left, operator, raw["rightOperand"], f"{path}.rightOperand")
    constraint = Constraint(left, operator, right)
    constraint.check(path)
    return constraint


def _action(raw: Mapping[str, Any], path: str) -> Action:
    return _enum(Action, raw["action"], f"{path}.action", "action")


def _duty(value: Any, path: str) -> Duty:
    raw = _object(value, path, {"action", "constraint", "receipt"}, {"action"})
    receipt = raw.get("receipt", True)
    if not isinstance(receipt, bool):
        raise PolicySyntaxError(f"{path}.receipt", "expected true or false")
    constraints = _list(raw.get("constraint", []), f"{path}.constraint", _constraint)
    return Duty(_action(raw, path), constraints, receipt)


def _permission(value: Any, path: str) -> Permission:
    raw = _object(value, path, {"action", "constraint", "duty"}, {"action"})
    constraints = _list(raw.get("constraint", []), f"{path}.constraint", _constraint)
    duties = _list(raw.get("duty", []), f"{path}.duty", _duty)
    return Permission(_action(raw, path), constraints, duties)


def _prohibition(value: Any, path: str) -> Prohibition:
    raw = _object(value, path, {"action", "constraint"}, {"action"})
    constraints = _list(raw.get("constraint", []), f"{path}.constraint", _constraint)
    return Prohibition(_action(raw, path), constraints)


def _context(value: Any, policy: Policy) -> None:
    """The context must be the one `policy_to_dict` writes for this policy: a term the
    policy does not use, or one it uses without its definition, reads two ways."""
    expected = _context_of(policy)
    if value != expected:
        raise PolicySyntaxError("$.@context", f"expected {json.dumps(expected)}")


def policy_from_dict(value: Any) -> Policy:
    """Parse an already-decoded ODRL JSON object; see the module docstring."""
    raw = _object(value, "$", _POLICY_KEYS, {"@context", "@type", "uid", "assigner", "target"})
    assignee = raw.get("assignee")
    policy = Policy(
        uid=_text(raw["uid"], "$.uid"),
        type=_enum(PolicyType, raw["@type"], "$.@type", "policy type"),
        assigner=_text(raw["assigner"], "$.assigner"),
        target=_text(raw["target"], "$.target"),
        permissions=_list(raw.get("permission", []), "$.permission", _permission),
        prohibitions=_list(raw.get("prohibition", []), "$.prohibition", _prohibition),
        obligations=_list(raw.get("obligation", []), "$.obligation", _duty),
        assignee=None if assignee is None else _text(assignee, "$.assignee"),
    )
    _context(raw["@context"], policy)
    return policy


def parse_policy(document: str | bytes | Mapping[str, Any]) -> Policy:
    """Parse ODRL JSON text (or a decoded object) strictly into a `Policy`."""
    if isinstance(document, Mapping):
        return policy_from_dict(document)
    try:
        decoded = bounded_json(
            document, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant
        )
    except PolicySyntaxError:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise PolicySyntaxError("$", f"malformed JSON: {exc}") from None
    return policy_from_dict(decoded)
