"""ODRL 2.2 policies as frozen dataclasses: Set, Offer and Agreement.

The general model the evaluator works on: rules (permission, prohibition,
obligation) with atomic and logical constraints (``and``, ``or``, ``xone``,
``andSequence``) and duties. Left operands and actions are `vocab` specs, so a
model instance only ever holds terms the node understands; right operands are
parsed literals (`literals.Value`). Semantic checks run in ``__post_init__``
with JSON paths, so a policy built in code and one parsed from a peer are held
to the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from qdspace.policies.errors import PolicySyntaxError
from qdspace.policies.odrl.literals import Value, literal_text
from qdspace.policies.odrl.vocab import (
    ORDERED,
    SET_FACTS,
    SET_OPERATORS,
    ActionSpec,
    Conflict,
    LogicalOperator,
    OperandSpec,
    Operator,
    PolicyKind,
)


@dataclass(frozen=True)
class Atomic:
    """``leftOperand operator rightOperand``; `right` holds one value, or several for sets."""

    left: OperandSpec
    operator: Operator
    right: tuple[Value, ...]

    def check(self, path: str) -> None:
        spec = self.left
        if self.operator not in spec.operators:
            allowed = ", ".join(sorted(spec.operators))
            raise PolicySyntaxError(
                f"{path}.operator",
                f"operator {self.operator} is not defined for {spec.name} (allowed: {allowed})",
            )
        if not self.right:
            raise PolicySyntaxError(f"{path}.rightOperand", "missing right operand")
        several = self.operator in SET_OPERATORS or (
            spec.fact in SET_FACTS and self.operator in (Operator.EQ, Operator.NEQ)
        )
        if len(self.right) > 1 and not several:
            raise PolicySyntaxError(
                f"{path}.rightOperand", f"{self.operator} on {spec.name} takes one value"
            )
        if spec.kind in ORDERED and len({type(v) for v in self.right}) != 1:
            raise PolicySyntaxError(f"{path}.rightOperand", "values of mixed types")

    def text(self) -> str:
        values = [literal_text(v) for v in self.right]
        right = values[0] if len(values) == 1 and self.operator not in SET_OPERATORS else values
        return f"{self.left.name} {self.operator} {right}"


@dataclass(frozen=True)
class Logical:
    """A logical constraint over other constraints (ODRL 2.2 section 2.5.2)."""

    operator: LogicalOperator
    items: tuple[Constraint, ...]

    def check(self, path: str) -> None:
        if not self.items:
            raise PolicySyntaxError(f"{path}.{self.operator}", "a logical constraint needs items")
        for index, item in enumerate(self.items):
            item.check(f"{path}.{self.operator}[{index}]")

    def text(self) -> str:
        return f"{self.operator}({len(self.items)})"


Constraint = Atomic | Logical


def atoms(constraints: tuple[Constraint, ...]) -> list[Atomic]:
    """Every atomic constraint, however deeply nested in logical ones."""
    out: list[Atomic] = []
    stack = list(constraints)
    while stack:
        item = stack.pop()
        if isinstance(item, Atomic):
            out.append(item)
        else:
            stack.extend(item.items)
    return out


def _check_constraints(constraints: tuple[Constraint, ...], path: str, *, duty: bool) -> None:
    for index, item in enumerate(constraints):
        item.check(f"{path}.constraint[{index}]")
    for atom in atoms(constraints):
        if atom.left.duty_only and not duty:
            raise PolicySyntaxError(path, f"{atom.left.name} may only constrain a duty")
        if atom.left.narrows and duty:
            raise PolicySyntaxError(path, f"{atom.left.name} may not constrain a duty")


@dataclass(frozen=True)
class Duty:
    """A duty. Before use (a precondition) unless its action is one done after use (delete)."""

    action: ActionSpec
    constraints: tuple[Constraint, ...] = ()
    receipt: bool | None = None

    @property
    def after_use(self) -> bool:
        return self.action.after_use

    def check(self, path: str) -> None:
        _check_constraints(self.constraints, path, duty=True)


@dataclass(frozen=True)
class Rule:
    """A permission or a prohibition about one action; duties only on permissions."""

    action: ActionSpec
    constraints: tuple[Constraint, ...] = ()
    duties: tuple[Duty, ...] = ()

    def check(self, path: str, *, prohibition: bool) -> None:
        if self.action.after_use:
            raise PolicySyntaxError(f"{path}.action", f"{self.action.name} is a duty action")
        if prohibition and self.duties:
            raise PolicySyntaxError(f"{path}.duty", "a prohibition has no duties here")
        _check_constraints(self.constraints, path, duty=False)
        for index, duty in enumerate(self.duties):
            duty.check(f"{path}.duty[{index}]")


@dataclass(frozen=True)
class OdrlPolicy:
    """An ODRL Set, Offer or Agreement."""

    id: str
    kind: PolicyKind
    permissions: tuple[Rule, ...] = ()
    prohibitions: tuple[Rule, ...] = ()
    obligations: tuple[Duty, ...] = ()
    assigner: str | None = None
    assignee: str | None = None
    target: str | None = None
    profiles: tuple[str, ...] = ()
    conflict: Conflict = Conflict.INVALID
    timestamp: datetime | None = None

    def __post_init__(self) -> None:
        if not self.id:
            raise PolicySyntaxError("$.@id", "a policy has an @id")
        if not self.permissions and not self.prohibitions:
            raise PolicySyntaxError("$", "a policy has a permission or a prohibition")
        if self.kind is PolicyKind.AGREEMENT:
            for name in ("assigner", "assignee", "target"):
                if not getattr(self, name):
                    raise PolicySyntaxError(f"$.{name}", f"an Agreement names its {name}")
        if self.timestamp is not None and self.timestamp.utcoffset() is None:
            raise PolicySyntaxError("$.timestamp", "timestamp has no time zone")
        for index, rule in enumerate(self.permissions):
            rule.check(f"$.permission[{index}]", prohibition=False)
        for index, rule in enumerate(self.prohibitions):
            rule.check(f"$.prohibition[{index}]", prohibition=True)
        for index, duty in enumerate(self.obligations):
            duty.check(f"$.obligation[{index}]")
