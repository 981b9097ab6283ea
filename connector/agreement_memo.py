"""Bounded memos for what a negotiation would otherwise compute twice: parsed agreements
and offers by their canonical bytes, verified signatures.

Why: on a negotiation's path the same bytes are parsed, and the same signatures
verified, more than once (the provider loads the agreement it signed when the
countersignature arrives; the consumer verifies the provider's signature on receipt and
again before it countersigns; each side checks the signature it made itself;
bench/PROFILE-negotiation.md, round 3). Each memo maps a value to what a pure function
of it returns, so a hit is the same answer. They are bounded: when full, one starts
over, so a busy node or a peer sending many distinct values costs recomputation, never
memory. A memo of parses holds only objects that parse back to themselves
(`policy_parses_back`): canonical JSON writes times in UTC, and a parse gives them back
in UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Generic, TypeVar

from qdspace.policies.model import Duty, Permission, Policy, Prohibition

if TYPE_CHECKING:  # the agreement module imports this one
    from qdspace.connector.agreement import ContractAgreement

K = TypeVar("K")
V = TypeVar("V")

#: entries a memo holds before it starts over
MEMO_SIZE = 512


class Memo(Generic[K, V]):
    """A dict of at most `size` entries, emptied when full."""

    def __init__(self, size: int = MEMO_SIZE) -> None:
        self._items: dict[K, V] = {}
        self._size = size

    def get(self, key: K) -> V | None:
        return self._items.get(key)

    def put(self, key: K, value: V) -> None:
        if len(self._items) >= self._size:
            self._items.clear()
        self._items[key] = value

    def clear(self) -> None:
        self._items.clear()

    def __contains__(self, key: object) -> bool:
        return key in self._items


def policy_parses_back(policy: Policy) -> bool:
    """True when parsing the policy's canonical JSON gives back exactly this object.
    Its fields pass the same checks either way; what the canonical form loses is a time's
    zone (written in UTC, parsed back as the same instant in UTC), and the parser refuses
    an empty string in a set that the model allows."""
    rules: list[Permission | Prohibition | Duty] = [*policy.permissions, *policy.prohibitions]
    rules += [*policy.obligations, *(d for p in policy.permissions for d in p.duties)]
    for operand in (c.right_operand for rule in rules for c in rule.constraints):
        if isinstance(operand, datetime) and operand.tzinfo is not UTC:
            return False
        if isinstance(operand, frozenset) and "" in operand:
            return False
    return True


def agreement_parses_back(agreement: ContractAgreement) -> bool:
    """`policy_parses_back` for an agreement: its policy, and its times in UTC."""
    times = (agreement.requested_at, agreement.agreed_at)
    return all(t.tzinfo is UTC for t in times) and policy_parses_back(agreement.policy)


#: what `agreement.agreement_from_bytes` parses canonical bytes into (bytes parsed here,
#: signed here, or compared with the agreement expected, `remember_agreement`)
PARSED: Memo[bytes, ContractAgreement] = Memo()
#: (verify key, context + signed bytes, signature) triples that verified
VERIFIED: Memo[tuple[bytes, bytes, bytes], bool] = Memo()


def remember_agreement(agreement: ContractAgreement, data: bytes) -> bool:
    """Remember `agreement` as what `data` parses to when `data` is exactly its canonical
    form (and parsing would give back this very object, `agreement_parses_back`); True if
    so. For a party that knows which agreement it expects (the consumer: the offer on the
    table, bound to it): comparing bytes costs a fraction of parsing them, and bytes that
    differ are parsed, and checked, as ever."""
    if type(data) is not bytes or agreement.canonical_bytes() != data:
        return False
    if not agreement_parses_back(agreement):
        return False
    PARSED.put(data, agreement)
    return True
