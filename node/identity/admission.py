"""Who the authority admits, and on what grounds: the checks `Authority` (authority.py)
makes before it signs, kept here as plain functions of the register and the book.

A code admits a key whose member id holds no valid certificate yet (`check_not_enrolled`),
for the name and role it was made for (`granted`); a renewal continues the member's
newest valid certificate (`renewable`).
"""

from __future__ import annotations

import datetime as dt

from qdspace.node.identity.csr import CertificateRequest
from qdspace.node.identity.enrollment import Enrollment, EnrollmentCode
from qdspace.node.identity.errors import RenewalRefused, RequestNotGranted
from qdspace.node.identity.register import IssuedMember, valid_rows


def issued_within(member: IssuedMember, window: dt.timedelta) -> bool:
    """Whether ``member``'s certificate was issued within ``window`` (renewals are
    counted by it); a row from before issue times were kept was not."""
    if member.issued_at is None:
        return False
    issued = dt.datetime.fromisoformat(member.issued_at)
    return dt.datetime.now(dt.UTC) - issued < window


def renewable(member_id: str, mine: list[IssuedMember], active: list[IssuedMember]) -> IssuedMember:
    """The member's newest certificate still valid, which a renewal continues.

    A renewal is authorised by the member's signing key alone (the register keeps its
    verify key), and the key outlives the certificate: a member whose certificate had
    expired (peers refuse it, the directory drops it), or whoever holds its signing key
    from an old backup, renewed it back in for as long as the operator had not revoked
    it. There was no grace window by design: expiry was simply not looked at. Past its
    end a member joins again like any newcomer, with a code from the operator, who
    decides whether it is still a member."""
    if not active:
        state = "is revoked" if mine else "is not in this authority's register"
        raise RenewalRefused(
            f"member {member_id} {state}: renewal refused (a new member enrolls with a code)"
        )
    now = dt.datetime.now(dt.UTC)
    valid = [m for m in active if dt.datetime.fromisoformat(m.not_after) > now]
    if not valid:
        raise RenewalRefused(
            f"the certificate of member {member_id} ({active[-1].name}) expired at "
            f"{active[-1].not_after}: renewal refused; an expired member enrolls again with "
            "a code from the operator (who first revokes the expired one: `authority "
            "revoke`, then `authority enroll`)"
        )
    return valid[-1]


def span(length: dt.timedelta) -> str:
    """``length`` for a message: ``1 hour``, ``12 hours``, ``90 days``."""
    hours = length.total_seconds() / 3600
    return f"{hours / 24:g} days" if hours >= 24 else f"{hours:g} hour" + ("s" * (hours != 1))


def code_id(text: str) -> str:
    """The id of an enrollment code given as its id (16 hex) or as the whole code."""
    text = text.strip()
    if len(text) == 16 and all(c in "0123456789abcdef" for c in text):
        return text
    return EnrollmentCode.parse(text).code_id


def waiting(codes: dict[str, Enrollment], now: dt.datetime, *, name: str) -> list[Enrollment]:
    """The codes for ``name`` waiting to be redeemed (unused, unexpired)."""
    return [
        e
        for e in codes.values()
        if e.name.lower() == name.lower()
        and e.used_at is None
        and now < dt.datetime.fromisoformat(e.expires_at)
    ]


def check_not_enrolled(members: list[IssuedMember], member_id: str, what: str) -> None:
    """Refuse to admit a key whose member id holds a valid certificate already (module
    docstring): one member id, one role; its new TLS key is a renewal."""
    held = [m for m in valid_rows(members, dt.datetime.now(dt.UTC)) if m.member_id == member_id]
    if held:
        m = held[-1]
        raise RequestNotGranted(
            f"member {member_id} is enrolled already: it holds a valid certificate as "
            f"{m.name!r} ({m.role}, serial {m.serial}, until {m.not_after}); {what} admits "
            "no second one. A new TLS key is a renewal (`qdspace node renew`); another role "
            "needs the member revoked first"
        )


def granted(request: CertificateRequest, name: str, role: str, who: str) -> None:
    """Refuse a request for another name or role than ``who`` (a code, the operator)
    granted."""
    if request.name != name:
        raise RequestNotGranted(f"the request is for the name {request.name!r}; {who} {name!r}")
    if request.role != role:
        raise RequestNotGranted(
            f"the request asks for the role {request.role!r}; {who} {name!r} as {role!r}"
        )
