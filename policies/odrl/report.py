"""The evaluation report: per rule and per constraint, what held, what did not, and why.

A decision a member cannot explain is a decision it cannot defend to a partner
or an auditor, so the evaluator never answers just yes or no: it returns this
tree, which the API serves as JSON and the CLI prints line by line.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class State(StrEnum):
    HOLDS = "satisfied"
    FAILS = "not satisfied"
    UNKNOWN = "unknown"  # the request lacks the fact
    ERROR = "unevaluable"  # the node cannot decide it: never permits
    SKIPPED = "not evaluated"  # after an earlier item of an andSequence failed


class Outcome(StrEnum):
    PERMIT = "permit"
    DENY = "deny"
    INDETERMINATE = "indeterminate"  # some part could not be evaluated: denied
    INVALID = "invalid"  # conflict under the `invalid` strategy: the policy is void


@dataclass(frozen=True)
class ConstraintReport:
    path: str
    text: str
    state: State
    why: str
    items: tuple[ConstraintReport, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path,
            "constraint": self.text,
            "state": str(self.state),
            "why": self.why,
        }
        if self.items:
            out["items"] = [item.to_dict() for item in self.items]
        return out

    def lines(self, indent: str) -> list[str]:
        head = f"{indent}{self.path} {self.text}: {self.state} ({self.why})"
        return [head] + [line for item in self.items for line in item.lines(indent + "  ")]


@dataclass(frozen=True)
class DutyReport:
    path: str
    action: str
    timing: str  # "before use" (a precondition) or "after use" (an obligation)
    state: str  # fulfilled / not fulfilled / pending / unevaluable
    why: str
    constraints: tuple[ConstraintReport, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "action": self.action,
            "timing": self.timing,
            "state": self.state,
            "why": self.why,
            "constraints": [c.to_dict() for c in self.constraints],
        }

    def lines(self, indent: str) -> list[str]:
        head = f"{indent}{self.path} duty {self.action} ({self.timing}): {self.state} ({self.why})"
        return [head] + [line for c in self.constraints for line in c.lines(indent + "  ")]


@dataclass(frozen=True)
class RuleReport:
    path: str
    kind: str  # permission / prohibition
    action: str
    relevant: bool  # the rule's action covers the requested one
    active: bool  # relevant and its constraints hold (for a prohibition: do not refute it)
    satisfied: bool  # active, and (for a permission) every precondition duty is fulfilled
    state: State
    why: str
    constraints: tuple[ConstraintReport, ...] = ()
    duties: tuple[DutyReport, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kind": self.kind,
            "action": self.action,
            "relevant": self.relevant,
            "active": self.active,
            "satisfied": self.satisfied,
            "state": str(self.state),
            "why": self.why,
            "constraints": [c.to_dict() for c in self.constraints],
            "duties": [d.to_dict() for d in self.duties],
        }

    def lines(self) -> list[str]:
        flags = "active" if self.active else "inactive"
        if self.kind == "permission":
            flags += ", satisfied" if self.satisfied else ", not satisfied"
        head = f"{self.path} {self.kind} {self.action}: {flags} ({self.why})"
        body = [line for c in self.constraints for line in c.lines("  ")]
        return [head, *body, *(line for d in self.duties for line in d.lines("  "))]


@dataclass(frozen=True)
class Report:
    policy_id: str
    action: str
    outcome: Outcome
    reason: str
    conflict: str
    rules: tuple[RuleReport, ...] = ()
    obligations: tuple[DutyReport, ...] = ()

    @property
    def permitted(self) -> bool:
        return self.outcome is Outcome.PERMIT

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy_id,
            "action": self.action,
            "outcome": str(self.outcome),
            "permitted": self.permitted,
            "reason": self.reason,
            "conflict": self.conflict,
            "rules": [r.to_dict() for r in self.rules],
            "obligations": [o.to_dict() for o in self.obligations],
        }

    def lines(self) -> list[str]:
        head = f"{self.policy_id} {self.action}: {self.outcome} ({self.reason})"
        rules = [line for rule in self.rules for line in rule.lines()]
        duties = [line for duty in self.obligations for line in duty.lines("")]
        return [head, f"conflict strategy: {self.conflict}", *rules, *duties]
