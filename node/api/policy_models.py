"""Answer models of the policy routes: an ODRL evaluation report (per rule, per
constraint, per duty; `policies.odrl.report`) and a policy in its JSON-LD form.

A JSON-LD document is typed as JSON (`JsonValue`), not as a model: its shape is the
DSP schema's, checked by the schema tests, and a model would fix one of the several
forms JSON-LD allows."""

from __future__ import annotations

from pydantic import BaseModel, JsonValue

#: a policy or message in the DSP 2025-1 JSON-LD form
JsonLd = dict[str, JsonValue]


class ConstraintCheck(BaseModel):
    path: str
    constraint: str
    state: str
    why: str
    items: list[ConstraintCheck] = []


class DutyCheck(BaseModel):
    path: str
    action: str
    timing: str
    state: str
    why: str
    constraints: list[ConstraintCheck] = []


class RuleCheck(BaseModel):
    path: str
    kind: str
    action: str
    relevant: bool
    active: bool
    satisfied: bool
    state: str
    why: str
    constraints: list[ConstraintCheck] = []
    duties: list[DutyCheck] = []


class PolicyExplanation(BaseModel):
    """Why a request is permitted or not under an agreement's policy."""

    policy: str
    action: str
    outcome: str
    permitted: bool
    reason: str
    conflict: str
    rules: list[RuleCheck] = []
    obligations: list[DutyCheck] = []
