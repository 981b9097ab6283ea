"""Who may see a dataset: its ``access`` policy (Catena-X's access action) on facts the node
itself knows about the caller, never on what the caller claims.

Why a decision of its own: a catalog lists offers, and an offer names what a member may
do once it has agreed; whether a member may learn the dataset exists, and ask for it,
is decided before, by the provider's access policy (a Catena-X connector publishes the
same split: access policy, contract policy). The facts are few and come from the data
space, not the request: the caller's business partner number as the authority attested
it in its signed member directory (`CallerFacts.bpn`, None when it attested none), the
framework agreements the authority attests the caller signed (`CallerFacts.frameworks`,
from the same signed directory; ``FrameworkAgreement`` evaluates on that set, empty when
it attests none, and is unknown for a caller no directory lists), its membership
(``active``: the caller passed mutual TLS against the space's CA and its revocation
list), and the time. A policy on anything else is unevaluable and therefore refuses, as
every policy the node cannot fully evaluate does.

A refusal says why: `BpnNotAttested` when the policy needed a BPNL and the authority
attested none for the caller, `FrameworkNotAttested` when it needed a framework agreement
and the authority attests none for the caller (one it does not meet otherwise is a plain
refusal, as a wrong BPNL is), `PolicyDenied` otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from qdspace.policies.errors import BpnNotAttested, FrameworkNotAttested, PolicyDenied
from qdspace.policies.odrl.evaluate import Context, Fact, evaluate_policy
from qdspace.policies.odrl.model import OdrlPolicy
from qdspace.policies.odrl.report import ConstraintReport, Report, State

ACCESS = "access"
ACTIVE = "active"


@dataclass(frozen=True)
class CallerFacts:
    """What the node knows of a caller from the data space itself."""

    member_id: str
    bpn: str | None  # attested by the authority's signed directory; None: none attested
    membership: str = ACTIVE  # the caller is a member in good standing (TLS, CRL)
    #: framework agreements the authority's signed directory attests (None: not listed)
    frameworks: frozenset[str] | None = None


def access_context(facts: CallerFacts, at: datetime) -> Context:
    known: dict[str, Fact] = {"dateTime": at, "membership": facts.membership}
    if facts.bpn is not None:
        known["bpn"] = facts.bpn
    if facts.frameworks is not None:
        known["frameworkAgreement"] = facts.frameworks
    return Context(action=ACCESS, facts=known)


def _constraints(report: Report) -> Iterator[ConstraintReport]:
    stack = [c for rule in report.rules for c in rule.constraints]
    while stack:
        item = stack.pop()
        yield item
        stack.extend(item.items)


def _wanted_bpn(report: Report) -> bool:
    return any(c.state is State.UNKNOWN and c.why.endswith(" bpn") for c in _constraints(report))


def _wanted_framework(report: Report) -> bool:
    """A constraint on the caller's framework agreements that did not hold."""
    return any(
        c.state in (State.UNKNOWN, State.FAILS)
        and (c.why.endswith(" frameworkAgreement") or c.why.startswith("frameworkAgreement is"))
        for c in _constraints(report)
    )


def check_access(policy: OdrlPolicy, facts: CallerFacts, at: datetime, what: str) -> Report:
    """The report of `facts`' caller accessing `what` under `policy`; raises when refused."""
    report = evaluate_policy(policy, access_context(facts, at))
    if report.permitted:
        return report
    if facts.bpn is None and _wanted_bpn(report):
        raise BpnNotAttested(
            f"access to {what} requires a business partner number, and the authority has "
            f"attested none for {facts.member_id} (`qdspace authority enroll --bpn`)"
        )
    if not facts.frameworks and _wanted_framework(report):
        raise FrameworkNotAttested(
            f"access to {what} requires a framework agreement ({_named_frameworks(report)}), "
            f"and the authority attests none for {facts.member_id} "
            "(`qdspace authority attest --framework`)"
        )
    raise PolicyDenied(f"access to {what} refused: {report.reason}")


def _named_frameworks(report: Report) -> str:
    """The framework constraints the report shows, as written (for the refusal)."""
    texts = [
        c.text
        for c in _constraints(report)
        if c.why.endswith(" frameworkAgreement") or c.why.startswith("frameworkAgreement is")
    ]
    return "; ".join(sorted(set(texts)))[:300]
