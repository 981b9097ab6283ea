"""Explain a decision under a stored agreement: the ODRL report, per rule and constraint.

Why a move of its own: a member denied a transfer (or a provider asked why it denied
one) needs to see which rule and which constraint decided, and the same release gate
a real transfer would build must make the decision shown, or the explanation could
disagree with what is enforced.
"""

from __future__ import annotations

from qdspace.connector.negotiation import Role
from qdspace.node.runtime.contracts_transfer import ProviderTransfers
from qdspace.policies.evaluate import Request
from qdspace.policies.model import FIELD_ALLOW_OPERATORS, Action, LeftOperand, Policy
from qdspace.policies.odrl.bridge import explain
from qdspace.policies.odrl.report import Report


class ContractExplain(ProviderTransfers):
    """`explain`: the report of one hypothetical request (a mixin of `ContractRuntime`)."""

    def explain(
        self,
        agreement_id: str,
        action: Action,
        purpose: str | None,
        order_id: str | None,
        fields: frozenset[str] | None,
    ) -> Report:
        stored = self.store.agreement(agreement_id)
        terms = stored.signed.agreement
        asset = self.assets.get(terms.asset_id)
        if stored.role is Role.PROVIDER and asset is not None:
            gate = self.gate(stored, action, purpose, order_id, fields)
            return explain(terms.policy, gate.request, gate.decision)
        request = Request(
            action=action,
            at=self.clock.now(),
            asset_fields=fields or _named_fields(terms.policy),
            purpose=purpose,
            order_id=order_id,
            fields=fields,
            terminated=stored.terminated_at is not None,
        )
        return explain(terms.policy, request)


def _named_fields(policy: Policy) -> frozenset[str]:
    """The fields a policy grants by name (the consumer does not hold the asset's list)."""
    named: set[str] = set()
    for permission in policy.permissions:
        for constraint in permission.constraints:
            right = constraint.right_operand
            allow = constraint.operator in FIELD_ALLOW_OPERATORS
            if (
                constraint.left_operand is LeftOperand.FIELDS
                and allow
                and isinstance(right, frozenset)
            ):
                named |= right
    return frozenset(named)
