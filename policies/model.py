"""The usage-policy model: an ODRL 2.2 subset as frozen dataclasses.

A provider publishes an *Offer* per asset; a finished negotiation turns it into
an *Agreement* (same rules, plus the consumer as assignee and the agreement id
as uid). The subset is deliberately small, so that every policy a peer can send
is one the evaluator fully understands:

- rules: ``permission`` (action + constraints + duties), ``prohibition``
  (action + constraints) and policy-level ``obligation`` (duties);
- actions: ``use`` (includes ``read``, ``stream`` and ``distribute``, as in the
  ODRL vocabulary), ``read``, ``stream``, ``distribute``; the only duty is
  ``delete`` (with a retention constraint and an optional signed receipt);
- left operands: ``purpose``, ``order`` (order scope), ``fields`` (which fields
  may leave), ``dateTime`` (validity bounds), ``retention`` (days after the
  order closes, only inside a ``delete`` duty), and Catena-X's
  ``FrameworkAgreement`` (a framework the space authority must attest the
  consumer signed, in a permission only).

Why ``FrameworkAgreement`` has a place in a usage policy and not only in an access
policy: an access policy decides who sees a dataset today; a usage policy is what
both sides sign, so the requirement travels with the agreement and the provider
checks it at every release (withdrawn attestation, no more data), and a Catena-X
connector reading the offer finds the term it expects there. Its context entry is
written only into a policy that uses it, so every policy without it keeps the
bytes (and the signatures) it had before the term existed.

Semantic checks (which operator fits which operand, where an operand may
appear) run in `Policy.__post_init__` and report JSON paths, so a policy built
in code and one parsed from a peer's JSON are held to the same rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from qdspace.policies.errors import PolicySyntaxError

ODRL_CONTEXT = "http://www.w3.org/ns/odrl.jsonld"
QDS_NAMESPACE = "https://qdspace.dev/ns/policy#"
# The JSON-LD context every policy carries: ODRL plus our three extension terms.
CONTEXT: tuple[str, dict[str, str]] = (
    ODRL_CONTEXT,
    {
        "qds": QDS_NAMESPACE,
        "order": "qds:order",
        "fields": "qds:fields",
        "retention": "qds:retention",
        "receipt": "qds:receipt",
    },
)
# The context entry of the one Catena-X term (`LeftOperand.FRAMEWORK`), added to a
# policy's context only when it uses the term (see the module docstring).
FRAMEWORK_TERM = ("FrameworkAgreement", "https://w3id.org/catenax/policy/FrameworkAgreement")
DEFAULT_RETENTION_DAYS = 180
#: the longest retention any policy may name, a peer's too: a century, longer than any
#: record-keeping law asks. A deadline this far out is still a date (10**30 days was
#: parsed, then ended the agreement's save in an OverflowError), and it fits the 32-bit
#: column PostgreSQL stores it in.
MAX_RETENTION_DAYS = 36_500
# A framework agreement's name, as the space authority attests it (DataExchangeGovernance:1.0)
FRAMEWORK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,63}")
#: the longest policy uid: an Agreement's uid is its agreement id, kept in the 128-character
#: id columns (``connector.contract_store.common.ID_LENGTH``, not imported: policies sit
#: below the connector) and named by that id everywhere (``/v1/dsp/transfers`` takes 128
#: at most). A peer's longer one, read from DSP or gRPC, was stored over-long on SQLite (an
#: agreement no transfer could name) and a 500 on PostgreSQL; the bound is that of every
#: id a peer sends (``node.rpc.contracts_serde.required``).
MAX_UID = 128


class PolicyType(StrEnum):
    OFFER = "Offer"
    AGREEMENT = "Agreement"


class Action(StrEnum):
    USE = "use"
    READ = "read"
    STREAM = "stream"
    DISTRIBUTE = "distribute"
    DELETE = "delete"


RULE_ACTIONS = frozenset({Action.USE, Action.READ, Action.STREAM, Action.DISTRIBUTE})
DUTY_ACTIONS = frozenset({Action.DELETE})


class LeftOperand(StrEnum):
    PURPOSE = "purpose"
    ORDER = "order"
    FIELDS = "fields"
    DATETIME = "dateTime"
    RETENTION = "retention"
    FRAMEWORK = "FrameworkAgreement"


class Operator(StrEnum):
    EQ = "eq"
    NEQ = "neq"
    IS_ANY_OF = "isAnyOf"
    IS_NONE_OF = "isNoneOf"
    LT = "lt"
    LTEQ = "lteq"
    GT = "gt"
    GTEQ = "gteq"
    IS_PART_OF = "isPartOf"


SET_OPERATORS = frozenset({Operator.IS_ANY_OF, Operator.IS_NONE_OF, Operator.IS_PART_OF})
# For `fields`, these operators name the fields that may leave; isNoneOf names those that may not.
FIELD_ALLOW_OPERATORS = frozenset({Operator.IS_PART_OF, Operator.IS_ANY_OF, Operator.EQ})
_TEXT_OPERATORS = frozenset({Operator.EQ, Operator.NEQ}) | SET_OPERATORS
ALLOWED_OPERATORS: dict[LeftOperand, frozenset[Operator]] = {
    LeftOperand.PURPOSE: _TEXT_OPERATORS,
    LeftOperand.ORDER: _TEXT_OPERATORS,
    LeftOperand.FIELDS: FIELD_ALLOW_OPERATORS | {Operator.IS_NONE_OF},
    LeftOperand.DATETIME: frozenset({Operator.LT, Operator.LTEQ, Operator.GT, Operator.GTEQ}),
    LeftOperand.RETENTION: frozenset({Operator.LTEQ, Operator.EQ}),
    # eq: the consumer holds this one; isAnyOf: it holds one of these
    LeftOperand.FRAMEWORK: frozenset({Operator.EQ, Operator.IS_ANY_OF}),
}
PERMISSION_OPERANDS = frozenset(
    {LeftOperand.PURPOSE, LeftOperand.ORDER, LeftOperand.FIELDS, LeftOperand.DATETIME}
    | {LeftOperand.FRAMEWORK}
)
PROHIBITION_OPERANDS = frozenset({LeftOperand.PURPOSE, LeftOperand.ORDER, LeftOperand.DATETIME})
DUTY_OPERANDS = frozenset({LeftOperand.RETENTION})

RightOperand = str | int | datetime | frozenset[str]


def _names(items: frozenset[Operator] | frozenset[LeftOperand] | frozenset[Action]) -> str:
    return ", ".join(sorted(str(item) for item in items))


def check_operator(left: LeftOperand, operator: Operator, path: str) -> None:
    allowed = ALLOWED_OPERATORS[left]
    if operator not in allowed:
        raise PolicySyntaxError(
            f"{path}.operator",
            f"operator {operator} is not allowed for {left} (allowed: {_names(allowed)})",
        )


@dataclass(frozen=True)
class Constraint:
    """``leftOperand operator rightOperand``, e.g. ``purpose isAnyOf {quality-assurance}``."""

    left_operand: LeftOperand
    operator: Operator
    right_operand: RightOperand

    def check(self, path: str) -> None:
        """Refuse operator/operand combinations the evaluator could not decide."""
        check_operator(self.left_operand, self.operator, path)
        self._check_right(f"{path}.rightOperand")

    def _check_right(self, path: str) -> None:
        right = self.right_operand
        left = self.left_operand
        if left is LeftOperand.DATETIME:
            if not isinstance(right, datetime) or right.utcoffset() is None:
                raise PolicySyntaxError(path, "dateTime needs an ISO 8601 instant with a zone")
        elif left is LeftOperand.RETENTION:
            if (
                isinstance(right, bool)
                or not isinstance(right, int)
                or not 0 <= right <= MAX_RETENTION_DAYS
            ):
                raise PolicySyntaxError(
                    path, f"retention needs a whole number of days, 0 to {MAX_RETENTION_DAYS:,}"
                )
        elif left is LeftOperand.FRAMEWORK:
            names = right if isinstance(right, frozenset) else {right}
            if not names or not all(
                isinstance(x, str) and FRAMEWORK_NAME.fullmatch(x) for x in names
            ):
                raise PolicySyntaxError(
                    path,
                    f"{self.operator} on {left} needs framework agreement names (1-64 letters, "
                    "digits and '._:-', as in DataExchangeGovernance:1.0)",
                )
        elif left is LeftOperand.FIELDS or self.operator in SET_OPERATORS:
            if not isinstance(right, frozenset) or not all(isinstance(x, str) for x in right):
                raise PolicySyntaxError(path, f"{self.operator} on {left} needs a list of strings")
        elif not isinstance(right, str) or not right:
            raise PolicySyntaxError(path, f"{self.operator} on {left} needs a non-empty string")


def _check_constraints(
    constraints: tuple[Constraint, ...], allowed: frozenset[LeftOperand], path: str, where: str
) -> None:
    for index, constraint in enumerate(constraints):
        item = f"{path}.constraint[{index}]"
        if constraint.left_operand not in allowed:
            raise PolicySyntaxError(
                f"{item}.leftOperand",
                f"leftOperand {constraint.left_operand} is not allowed in a {where} "
                f"(allowed: {_names(allowed)})",
            )
        constraint.check(item)


@dataclass(frozen=True)
class Duty:
    """A duty to delete the data within the retention period, with an optional signed receipt."""

    action: Action = Action.DELETE
    constraints: tuple[Constraint, ...] = ()
    receipt: bool = True

    def check(self, path: str) -> None:
        if self.action not in DUTY_ACTIONS:
            raise PolicySyntaxError(
                f"{path}.action",
                f"duty action {self.action} is not supported (allowed: {_names(DUTY_ACTIONS)})",
            )
        _check_constraints(self.constraints, DUTY_OPERANDS, path, "duty")
        if len(self.constraints) > 1:
            raise PolicySyntaxError(f"{path}.constraint", "a delete duty has one retention")

    @property
    def retention_days(self) -> int:
        """Days after the order closes by which the data must be gone (default 180)."""
        for constraint in self.constraints:
            if isinstance(constraint.right_operand, int):
                return constraint.right_operand
        return DEFAULT_RETENTION_DAYS


@dataclass(frozen=True)
class Permission:
    action: Action
    constraints: tuple[Constraint, ...] = ()
    duties: tuple[Duty, ...] = ()

    def check(self, path: str) -> None:
        _check_rule_action(self.action, f"{path}.action")
        _check_constraints(self.constraints, PERMISSION_OPERANDS, path, "permission")
        for index, duty in enumerate(self.duties):
            duty.check(f"{path}.duty[{index}]")


@dataclass(frozen=True)
class Prohibition:
    action: Action
    constraints: tuple[Constraint, ...] = ()

    def check(self, path: str) -> None:
        _check_rule_action(self.action, f"{path}.action")
        _check_constraints(self.constraints, PROHIBITION_OPERANDS, path, "prohibition")


def _check_rule_action(action: Action, path: str) -> None:
    if action not in RULE_ACTIONS:
        raise PolicySyntaxError(
            path, f"action {action} is not a rule action (allowed: {_names(RULE_ACTIONS)})"
        )


@dataclass(frozen=True)
class Policy:
    """An Offer or an Agreement about one asset (``target``) of one provider (``assigner``)."""

    uid: str
    type: PolicyType
    assigner: str
    target: str
    permissions: tuple[Permission, ...]
    prohibitions: tuple[Prohibition, ...] = ()
    obligations: tuple[Duty, ...] = ()
    assignee: str | None = None

    def __post_init__(self) -> None:
        for name in ("uid", "assigner", "target"):
            if not getattr(self, name):
                raise PolicySyntaxError(f"$.{name}", f"{name} must be a non-empty string")
        if len(self.uid) > MAX_UID:
            raise PolicySyntaxError(
                "$.uid", f"uid must be at most {MAX_UID} characters, got {len(self.uid)}"
            )
        if self.assignee is not None and not self.assignee:
            raise PolicySyntaxError("$.assignee", "assignee must be a non-empty string")
        if self.type is PolicyType.AGREEMENT and self.assignee is None:
            raise PolicySyntaxError("$.assignee", "an Agreement names its assignee (the consumer)")
        if not self.permissions:
            raise PolicySyntaxError("$.permission", "a policy grants at least one permission")
        for index, permission in enumerate(self.permissions):
            permission.check(f"$.permission[{index}]")
        for index, prohibition in enumerate(self.prohibitions):
            prohibition.check(f"$.prohibition[{index}]")
        for index, duty in enumerate(self.obligations):
            duty.check(f"$.obligation[{index}]")

    def delete_duties(self) -> tuple[Duty, ...]:
        """Every delete duty, whether attached to a permission or policy-wide."""
        attached = tuple(duty for p in self.permissions for duty in p.duties)
        return attached + self.obligations

    @property
    def uses_framework(self) -> bool:
        """Whether a permission asks for a framework agreement (its context says so)."""
        return any(
            c.left_operand is LeftOperand.FRAMEWORK for p in self.permissions for c in p.constraints
        )

    def same_terms(self, other: Policy) -> bool:
        """True when both policies grant, forbid and oblige the same about the same asset."""
        return (
            self.assigner == other.assigner
            and self.target == other.target
            and self.permissions == other.permissions
            and self.prohibitions == other.prohibitions
            and self.obligations == other.obligations
        )


@dataclass(frozen=True)
class OfferTerms:
    """The knobs of the standard offer a provider publishes for an asset."""

    purposes: frozenset[str]
    orders: frozenset[str] | None = None
    fields: frozenset[str] | None = None
    not_before: datetime | None = None
    not_after: datetime | None = None
    retention_days: int = DEFAULT_RETENTION_DAYS
    receipt: bool = True
    allow_distribution: bool = False
    # a framework agreement the consumer must hold, attested by the space authority
    framework: str | None = None
    extra_prohibitions: tuple[Prohibition, ...] = field(default=())


def make_offer(uid: str, assigner: str, target: str, terms: OfferTerms) -> Policy:
    """The standard offer: use for these purposes/orders/fields, no redistribution, delete."""
    constraints = [Constraint(LeftOperand.PURPOSE, Operator.IS_ANY_OF, terms.purposes)]
    if terms.orders is not None:
        constraints.append(Constraint(LeftOperand.ORDER, Operator.IS_ANY_OF, terms.orders))
    if terms.fields is not None:
        constraints.append(Constraint(LeftOperand.FIELDS, Operator.IS_PART_OF, terms.fields))
    if terms.not_before is not None:
        constraints.append(Constraint(LeftOperand.DATETIME, Operator.GTEQ, terms.not_before))
    if terms.not_after is not None:
        constraints.append(Constraint(LeftOperand.DATETIME, Operator.LT, terms.not_after))
    if terms.framework is not None:
        constraints.append(Constraint(LeftOperand.FRAMEWORK, Operator.EQ, terms.framework))
    retention = Constraint(LeftOperand.RETENTION, Operator.LTEQ, terms.retention_days)
    duty = Duty(Action.DELETE, (retention,), receipt=terms.receipt)
    prohibitions = terms.extra_prohibitions
    if not terms.allow_distribution:
        prohibitions = (Prohibition(Action.DISTRIBUTE), *prohibitions)
    return Policy(
        uid=uid,
        type=PolicyType.OFFER,
        assigner=assigner,
        target=target,
        permissions=(Permission(Action.USE, tuple(constraints), (duty,)),),
        prohibitions=prohibitions,
    )


def to_agreement(offer: Policy, uid: str, assignee: str) -> Policy:
    """The Agreement a negotiation ends in: the offer's rules, bound to one consumer."""
    return Policy(
        uid=uid,
        type=PolicyType.AGREEMENT,
        assigner=offer.assigner,
        target=offer.target,
        permissions=offer.permissions,
        prohibitions=offer.prohibitions,
        obligations=offer.obligations,
        assignee=assignee,
    )
