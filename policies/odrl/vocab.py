"""The ODRL 2.2 terms the node understands, as data.

Why data and not code: which left operands, actions and purposes exist changes
with each data space (Catena-X adds five operands and an ``access`` action, a
branch may add a purpose); the evaluator only knows *kinds* of values and how
each operator compares them. A term not listed here is not understood, and a
policy that uses it is refused or, if it slips through, never permits.

Left operands are keyed by their full IRI (what JSON-LD expansion yields); each
names the request fact it is compared with (`OperandSpec.fact`), the kind of
its right operand and the operators that make sense for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

ODRL = "http://www.w3.org/ns/odrl/2/"
QDS = "https://qdspace.dev/ns/policy#"
# The node's ODRL profile: a policy that uses a qds: term declares it in `profile`.
QDS_PROFILE = "https://qdspace.dev/ns/policy"
CX = "https://w3id.org/catenax/policy/"
# Later Catena-X releases date their namespace; the terms mean the same.
CX_ALIASES = ("https://w3id.org/catenax/2025/9/policy/",)
XSD = "http://www.w3.org/2001/XMLSchema#"
DSPACE = "https://w3id.org/dspace/2025/1/"


class PolicyKind(StrEnum):
    SET = "Set"
    OFFER = "Offer"
    AGREEMENT = "Agreement"


class Operator(StrEnum):
    EQ = "eq"
    NEQ = "neq"
    LT = "lt"
    LTEQ = "lteq"
    GT = "gt"
    GTEQ = "gteq"
    IS_A = "isA"
    HAS_PART = "hasPart"
    IS_PART_OF = "isPartOf"
    IS_ALL_OF = "isAllOf"
    IS_ANY_OF = "isAnyOf"
    IS_NONE_OF = "isNoneOf"


class LogicalOperator(StrEnum):
    AND = "and"
    OR = "or"
    XONE = "xone"
    AND_SEQUENCE = "andSequence"


class Conflict(StrEnum):
    """What wins when a permission and a prohibition both apply (ODRL default: invalid)."""

    PERM = "perm"
    PROHIBIT = "prohibit"
    INVALID = "invalid"


class ValueKind(StrEnum):
    """The type a right operand is read as (its xsd datatype when typed)."""

    STRING = "xsd:string"
    INTEGER = "xsd:integer"
    DECIMAL = "xsd:decimal"
    DATETIME = "xsd:dateTime"
    DURATION = "xsd:duration"


ORDERED = frozenset({ValueKind.INTEGER, ValueKind.DECIMAL, ValueKind.DATETIME, ValueKind.DURATION})
SET_OPERATORS = frozenset(
    {Operator.HAS_PART, Operator.IS_PART_OF, Operator.IS_ALL_OF, Operator.IS_ANY_OF}
    | {Operator.IS_NONE_OF}
)
_COMPARE = frozenset({Operator.LT, Operator.LTEQ, Operator.GT, Operator.GTEQ})
_EQUALITY = frozenset({Operator.EQ, Operator.NEQ})
TEXT_OPERATORS = _EQUALITY | SET_OPERATORS | {Operator.IS_A}
ORDERED_OPERATORS = _EQUALITY | _COMPARE


@dataclass(frozen=True)
class OperandSpec:
    """One left operand: what request fact it reads and how its right operand is typed.

    `narrows`: the constraint never fails a request; it narrows what is released
    (the node's ``fields``), so the gate applies it per row. `duty_only`: it may
    only appear in a duty (the retention period of a delete duty).
    """

    iri: str
    name: str
    fact: str
    kind: ValueKind
    operators: frozenset[Operator]
    narrows: bool = False
    duty_only: bool = False


def _spec(iri: str, name: str, fact: str, kind: ValueKind, **flags: bool) -> OperandSpec:
    operators = ORDERED_OPERATORS if kind in ORDERED else TEXT_OPERATORS
    if flags.get("duty_only"):
        operators = frozenset({Operator.EQ, Operator.LTEQ, Operator.LT})
    return OperandSpec(iri, name, fact, kind, operators, **flags)


OPERANDS: dict[str, OperandSpec] = {
    spec.iri: spec
    for spec in (
        _spec(ODRL + "purpose", "purpose", "purpose", ValueKind.STRING),
        _spec(ODRL + "dateTime", "dateTime", "dateTime", ValueKind.DATETIME),
        _spec(QDS + "order", "order", "order", ValueKind.STRING),
        _spec(QDS + "fields", "fields", "fields", ValueKind.STRING, narrows=True),
        _spec(QDS + "retention", "retention", "retention", ValueKind.DURATION, duty_only=True),
        # Catena-X (cx-odrl-profile): facts the node knows about the requesting member.
        _spec(
            CX + "FrameworkAgreement", "FrameworkAgreement", "frameworkAgreement", ValueKind.STRING
        ),
        _spec(CX + "UsagePurpose", "UsagePurpose", "purpose", ValueKind.STRING),
        _spec(CX + "Membership", "Membership", "membership", ValueKind.STRING),
        _spec(CX + "BusinessPartnerNumber", "BusinessPartnerNumber", "bpn", ValueKind.STRING),
        _spec(CX + "ContractReference", "ContractReference", "contractReference", ValueKind.STRING),
    )
}
for _alias in CX_ALIASES:
    for _iri, _known in list(OPERANDS.items()):
        if _iri.startswith(CX):
            OPERANDS[_alias + _known.name] = _known

# Facts that hold a set (a member may have signed several framework agreements).
SET_FACTS = frozenset({"frameworkAgreement", "contractReference", "fields"})


@dataclass(frozen=True)
class ActionSpec:
    """An action; `includes` are the actions it also grants (ODRL ``includedIn``, inverted)."""

    iri: str
    name: str
    includes: frozenset[str] = frozenset()
    after_use: bool = False  # as a duty it is fulfilled after use (delete), not before


ACTIONS: dict[str, ActionSpec] = {
    spec.iri: spec
    for spec in (
        ActionSpec(ODRL + "use", "use", frozenset({"read", "stream", "distribute", "access"})),
        ActionSpec(ODRL + "read", "read"),
        ActionSpec(ODRL + "stream", "stream"),
        ActionSpec(ODRL + "distribute", "distribute"),
        ActionSpec(CX + "access", "access"),
        ActionSpec(ODRL + "delete", "delete", after_use=True),
        # Preconditions a consumer fulfils before use; the node is told which are done.
        ActionSpec(ODRL + "compensate", "compensate"),
        ActionSpec(ODRL + "inform", "inform"),
        ActionSpec(ODRL + "attribute", "attribute"),
        ActionSpec(ODRL + "obtainConsent", "obtainConsent"),
    )
}
for _alias in CX_ALIASES:
    ACTIONS[_alias + "access"] = ACTIONS[CX + "access"]
# EDC writes the Catena-X access action as odrl:access (a term the ODRL vocabulary lacks).
ACTIONS[ODRL + "access"] = ACTIONS[CX + "access"]
ACTION_NAMES = {spec.name: spec for spec in ACTIONS.values()}


def covers(granted: str, requested: str) -> bool:
    """Whether a rule about action `granted` concerns a request for `requested`."""
    spec = ACTION_NAMES.get(granted)
    return granted == requested or (spec is not None and requested in spec.includes)


def operand_by_name(name: str) -> OperandSpec:
    for spec in OPERANDS.values():
        if spec.name == name:
            return spec
    raise KeyError(name)
