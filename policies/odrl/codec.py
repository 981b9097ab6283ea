"""ODRL/DSP JSON-LD <-> `OdrlPolicy`.

Parsing goes through JSON-LD expansion, so every form the Dataspace Protocol
allows reads the same: compacted with the DSP 2025-1 context, expanded, with
prefixes or full IRIs, or an offer embedded in a message without a context of
its own (`default_context`). The parser then walks the expanded form and
refuses anything it does not understand (an unknown left operand, operator,
action or rule property) with the JSON path: a term the node skipped could be
the one that forbids the use.

Writing builds the expanded form and compacts it with the DSP context plus the
node's profile context, in the shapes the DSP 2025-1 schemas require: ``@id``,
typed right operands, no ``target`` in a catalog offer, ``timestamp`` in an
agreement.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from qdspace.policies.canonical import format_datetime, parse_datetime
from qdspace.policies.errors import PolicySyntaxError
from qdspace.policies.odrl.jsonld import POLICY_CONTEXT, compact, decode, expand
from qdspace.policies.odrl.literals import Duration, Value, literal_text, parse_literal
from qdspace.policies.odrl.model import Atomic, Constraint, Duty, Logical, OdrlPolicy, Rule
from qdspace.policies.odrl.vocab import (
    ACTIONS,
    DSPACE,
    ODRL,
    OPERANDS,
    QDS,
    XSD,
    Conflict,
    LogicalOperator,
    Operator,
    PolicyKind,
    ValueKind,
)

MAX_RULES = 64
MAX_ATOMS = 256
MAX_LOGICAL_DEPTH = 8
MAX_RIGHT_VALUES = 1024
_DESCRIPTIVE = ("http://purl.org/dc/terms/",)


class _Budget:
    def __init__(self) -> None:
        self.atoms = 0


# ------------------------------------------------------------------ parsing


def _keys(node: Any, path: str, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(node, Mapping):
        raise PolicySyntaxError(path, f"expected an object, got {type(node).__name__}")
    for key in node:
        if key not in allowed and not key.startswith(_DESCRIPTIVE):
            raise PolicySyntaxError(f"{path}.{_short(key)}", "term not understood by this node")
    return node


def _short(iri: str) -> str:
    for prefix, name in ((ODRL, ""), (QDS, "qds:"), (DSPACE, "dspace:")):
        if iri.startswith(prefix):
            return name + iri[len(prefix) :]
    return iri[:120]


def _items(node: Mapping[str, Any], key: str) -> list[Any]:
    value = node.get(key, [])
    if len(value) == 1 and isinstance(value[0], Mapping) and "@list" in value[0]:
        value = value[0]["@list"]
    return list(value)


def _one_id(node: Mapping[str, Any], key: str, path: str, *, required: bool) -> str | None:
    values = _items(node, key)
    if not values:
        if required:
            raise PolicySyntaxError(f"{path}.{_short(key)}", "missing")
        return None
    if len(values) != 1 or not isinstance(values[0], Mapping) or "@id" not in values[0]:
        raise PolicySyntaxError(f"{path}.{_short(key)}", "expected one IRI")
    iri = values[0]["@id"]
    if not isinstance(iri, str) or not iri or len(iri) > 1024:
        raise PolicySyntaxError(f"{path}.{_short(key)}", "expected an IRI of 1 to 1024 chars")
    return iri


def _right(node: Mapping[str, Any], kind: ValueKind, path: str) -> tuple[Value, ...]:
    values = _items(node, ODRL + "rightOperand")
    if len(values) > MAX_RIGHT_VALUES:
        raise PolicySyntaxError(path, f"more than {MAX_RIGHT_VALUES} right operand values")
    out: list[Value] = []
    for index, value in enumerate(values):
        where = f"{path}[{index}]"
        if not isinstance(value, Mapping):
            raise PolicySyntaxError(where, "expected a literal")
        if "@id" in value:
            out.append(parse_literal(value["@id"], kind, None, where))
        elif "@value" in value:
            datatype = value.get("@type")
            out.append(parse_literal(value["@value"], kind, datatype, where))
        else:
            raise PolicySyntaxError(where, "expected a literal or an IRI")
    return tuple(out)


def _atomic(node: Mapping[str, Any], path: str, budget: _Budget) -> Atomic:
    keys = {ODRL + "leftOperand", ODRL + "operator", ODRL + "rightOperand", "@type", "@id"}
    _keys(node, path, keys)
    budget.atoms += 1
    if budget.atoms > MAX_ATOMS:
        raise PolicySyntaxError(path, f"more than {MAX_ATOMS} constraints")
    left_iri = _one_id(node, ODRL + "leftOperand", path, required=True)
    spec = OPERANDS.get(left_iri or "")
    if spec is None:
        raise PolicySyntaxError(f"{path}.leftOperand", f"unknown leftOperand {left_iri!r}")
    op_iri = _one_id(node, ODRL + "operator", path, required=True) or ""
    name = op_iri[len(ODRL) :] if op_iri.startswith(ODRL) else ""
    try:
        operator = Operator(name)
    except ValueError:
        raise PolicySyntaxError(f"{path}.operator", f"unknown operator {op_iri!r}") from None
    if not _items(node, ODRL + "rightOperand"):
        raise PolicySyntaxError(f"{path}.rightOperand", "missing")
    right = _right(node, spec.kind, f"{path}.rightOperand")
    atom = Atomic(spec, operator, right)
    atom.check(path)
    return atom


def _constraint(node: Any, path: str, budget: _Budget, depth: int) -> Constraint:
    if not isinstance(node, Mapping):
        raise PolicySyntaxError(path, "expected a constraint object")
    logical = [op for op in LogicalOperator if ODRL + op.value in node]
    if not logical:
        return _atomic(node, path, budget)
    if len(logical) > 1:
        raise PolicySyntaxError(path, "a logical constraint has exactly one operator")
    operator = logical[0]
    if depth >= MAX_LOGICAL_DEPTH:
        raise PolicySyntaxError(path, f"logical constraints nested deeper than {MAX_LOGICAL_DEPTH}")
    _keys(node, path, {ODRL + operator.value, "@type", "@id"})
    items = _items(node, ODRL + operator.value)
    if not items:
        raise PolicySyntaxError(f"{path}.{operator}", "a logical constraint needs items")
    return Logical(
        operator,
        tuple(
            _constraint(item, f"{path}.{operator}[{i}]", budget, depth + 1)
            for i, item in enumerate(items)
        ),
    )


def _constraints(node: Mapping[str, Any], path: str, budget: _Budget) -> tuple[Constraint, ...]:
    return tuple(
        _constraint(item, f"{path}.constraint[{i}]", budget, 0)
        for i, item in enumerate(_items(node, ODRL + "constraint"))
    )


def _action(node: Mapping[str, Any], path: str) -> Any:
    iri = _one_id(node, ODRL + "action", path, required=True) or ""
    spec = ACTIONS.get(iri)
    if spec is None:
        raise PolicySyntaxError(f"{path}.action", f"unknown action {iri!r}")
    return spec


def _duty(node: Any, path: str, budget: _Budget) -> Duty:
    keys = {ODRL + "action", ODRL + "constraint", QDS + "receipt", "@type", "@id"}
    raw = _keys(node, path, keys)
    receipt: bool | None = None
    values = _items(raw, QDS + "receipt")
    if values:
        receipt = values[0].get("@value") if isinstance(values[0], Mapping) else None
        if len(values) != 1 or not isinstance(receipt, bool):
            raise PolicySyntaxError(f"{path}.receipt", "expected true or false")
    return Duty(_action(raw, path), _constraints(raw, path, budget), receipt)


def _rule(node: Any, path: str, budget: _Budget, *, duties: bool) -> Rule:
    keys = {ODRL + "action", ODRL + "constraint", "@type", "@id"}
    if duties:
        keys.add(ODRL + "duty")
    raw = _keys(node, path, keys)
    rule_duties = tuple(
        _duty(item, f"{path}.duty[{i}]", budget)
        for i, item in enumerate(_items(raw, ODRL + "duty"))
    )
    return Rule(_action(raw, path), _constraints(raw, path, budget), rule_duties)


def _kind(node: Mapping[str, Any], default: PolicyKind | None) -> PolicyKind:
    types = node.get("@type", [])
    known = [t for t in types if isinstance(t, str) and t.startswith(ODRL)]
    if not types and default is not None:
        return default
    if len(types) != 1 or len(known) != 1:
        raise PolicySyntaxError("$.@type", f"expected one ODRL policy type, got {types!r}"[:200])
    try:
        return PolicyKind(known[0][len(ODRL) :])
    except ValueError:
        raise PolicySyntaxError("$.@type", f"{known[0]!r} is not Set, Offer or Agreement") from None


def _timestamp(node: Mapping[str, Any]) -> datetime | None:
    values = _items(node, DSPACE + "timestamp")
    if not values:
        return None
    raw = values[0].get("@value") if isinstance(values[0], Mapping) else None
    if len(values) != 1 or not isinstance(raw, str):
        raise PolicySyntaxError("$.timestamp", "expected one date-time")
    try:
        return parse_datetime(raw)
    except ValueError as exc:
        raise PolicySyntaxError("$.timestamp", str(exc)) from None


_POLICY_KEYS = {
    "@id",
    "@type",
    *(
        ODRL + k
        for k in ("permission", "prohibition", "obligation", "assigner", "assignee", "target")
    ),
    ODRL + "profile",
    ODRL + "conflict",
    DSPACE + "timestamp",
}


def _rules(node: Mapping[str, Any], key: str, budget: _Budget, duties: bool) -> tuple[Rule, ...]:
    items = _items(node, ODRL + key)
    if len(items) > MAX_RULES:
        raise PolicySyntaxError(f"$.{key}", f"more than {MAX_RULES} rules")
    return tuple(_rule(x, f"$.{key}[{i}]", budget, duties=duties) for i, x in enumerate(items))


def _conflict(node: Mapping[str, Any]) -> Conflict:
    iri = _one_id(node, ODRL + "conflict", "$", required=False)
    if iri is None:
        return Conflict.INVALID
    try:
        return Conflict(iri[len(ODRL) :] if iri.startswith(ODRL) else "")
    except ValueError:
        raise PolicySyntaxError("$.conflict", f"unknown conflict strategy {iri!r}") from None


def policy_from_expanded(node: Any, default_kind: PolicyKind | None = None) -> OdrlPolicy:
    """Build the policy from one expanded JSON-LD node object."""
    raw = _keys(node, "$", _POLICY_KEYS)
    policy_id = raw.get("@id")
    if not isinstance(policy_id, str) or not policy_id or len(policy_id) > 1024:
        raise PolicySyntaxError("$.@id", "a policy has an @id of 1 to 1024 characters")
    budget = _Budget()
    obligations = _items(raw, ODRL + "obligation")
    if len(obligations) > MAX_RULES:
        raise PolicySyntaxError("$.obligation", f"more than {MAX_RULES} obligations")
    return OdrlPolicy(
        id=policy_id,
        kind=_kind(raw, default_kind),
        permissions=_rules(raw, "permission", budget, True),
        prohibitions=_rules(raw, "prohibition", budget, False),
        obligations=tuple(
            _duty(x, f"$.obligation[{i}]", budget) for i, x in enumerate(obligations)
        ),
        assigner=_one_id(raw, ODRL + "assigner", "$", required=False),
        assignee=_one_id(raw, ODRL + "assignee", "$", required=False),
        target=_one_id(raw, ODRL + "target", "$", required=False),
        profiles=tuple(
            v["@id"] for v in _items(raw, ODRL + "profile") if isinstance(v, Mapping) and "@id" in v
        ),
        conflict=_conflict(raw),
        timestamp=_timestamp(raw),
    )


def parse_jsonld_policy(
    document: str | bytes | Mapping[str, Any],
    *,
    default_context: tuple[str, ...] | None = POLICY_CONTEXT,
    default_kind: PolicyKind | None = None,
) -> OdrlPolicy:
    """Parse a policy in any JSON-LD form (see the module docstring)."""
    decoded = document if isinstance(document, Mapping) else decode(document)
    if not isinstance(decoded, Mapping):
        raise PolicySyntaxError("$", "a policy is a JSON object")
    expanded = expand(decoded, default_context)
    if len(expanded) != 1:
        raise PolicySyntaxError("$", f"expected one policy, found {len(expanded)} nodes")
    return policy_from_expanded(expanded[0], default_kind)


# ------------------------------------------------------------------ writing


def _literal(value: Value, kind: ValueKind) -> dict[str, Any]:
    if kind is ValueKind.STRING:
        return {"@value": value}
    text = literal_text(value) if not isinstance(value, Duration) else str(value)
    return {"@value": text, "@type": XSD + kind.value[4:]}


def _constraint_out(item: Constraint) -> dict[str, Any]:
    if isinstance(item, Logical):
        return {ODRL + item.operator.value: [_constraint_out(x) for x in item.items]}
    return {
        ODRL + "leftOperand": [{"@id": item.left.iri}],
        ODRL + "operator": [{"@id": ODRL + item.operator.value}],
        ODRL + "rightOperand": [_literal(v, item.left.kind) for v in item.right],
    }


def _rule_out(action_iri: str, constraints: tuple[Constraint, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {ODRL + "action": [{"@id": action_iri}]}
    if constraints:
        out[ODRL + "constraint"] = [_constraint_out(c) for c in constraints]
    return out


def _duty_out(duty: Duty) -> dict[str, Any]:
    out = _rule_out(duty.action.iri, duty.constraints)
    if duty.receipt is not None:
        out[QDS + "receipt"] = [{"@value": duty.receipt}]
    return out


def _permission_out(rule: Rule) -> dict[str, Any]:
    out = _rule_out(rule.action.iri, rule.constraints)
    if rule.duties:
        out[ODRL + "duty"] = [_duty_out(d) for d in rule.duties]
    return out


def policy_to_expanded(policy: OdrlPolicy, *, with_target: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"@id": policy.id, "@type": [ODRL + policy.kind.value]}
    if policy.profiles:
        out[ODRL + "profile"] = [{"@id": p} for p in policy.profiles]
    if policy.conflict is not Conflict.INVALID:
        out[ODRL + "conflict"] = [{"@id": ODRL + policy.conflict.value}]
    for key in ("assigner", "assignee") + (("target",) if with_target else ()):
        value = getattr(policy, key)
        if value is not None:
            out[ODRL + key] = [{"@id": value}]
    if policy.permissions:
        out[ODRL + "permission"] = [_permission_out(r) for r in policy.permissions]
    if policy.prohibitions:
        out[ODRL + "prohibition"] = [
            _rule_out(r.action.iri, r.constraints) for r in policy.prohibitions
        ]
    if policy.obligations:
        out[ODRL + "obligation"] = [_duty_out(d) for d in policy.obligations]
    if policy.timestamp is not None:
        out[DSPACE + "timestamp"] = [{"@value": format_datetime(policy.timestamp)}]
    return out


def policy_to_jsonld(
    policy: OdrlPolicy, *, catalog: bool = False, embedded: bool = False
) -> dict[str, Any]:
    """The DSP JSON-LD form: `catalog` drops ``target`` (a dataset's offer), `embedded`
    drops ``@context`` (the enclosing message carries it)."""
    compacted = compact(policy_to_expanded(policy, with_target=not catalog))
    if embedded:
        compacted.pop("@context", None)
    return compacted
