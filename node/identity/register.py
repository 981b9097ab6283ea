"""The authority's register of issued member certificates (``members.json``), and the
rule that keeps names unambiguous: no two active members answer to the same name.

Nor does a name equal another active member's id (``acme-3f2a9b01c4d7``): the operator
names a member by either (``authority revoke --member``, ``attest --member``), so a code
for a name that is someone's id made one command reach two members (revoke the newcomer,
revoke the incumbent too; attest the incumbent, attest the newcomer with it). And a
hostname a certificate asks for is not a name an enrollment code still waiting to be
redeemed was made for (``reserved``): a member renewing with ``bosch`` as a hostname
between the operator making Bosch's code and Bosch using it got a certificate answering
to ``bosch``, and Bosch's enrollment was refused as a name taken.

A renewal does not release the hostnames of the member's earlier certificates while one
of them is valid (`holding_rows`): the authority does not revoke the certificate a
renewal supersedes, since the node goes on serving with it until it restarts (``node
install --renew`` swaps the files; the process keeps what it loaded) and revoking it
would cut the node's live connections at the next CRL. That certificate stays good for
TLS name checks, so a name it carries stays taken until it expires or the operator
revokes the member: a member renewing with ``bosch``, then without it, no longer frees
``bosch`` for the real Bosch while its first certificate still answers to it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qdspace.node.errors import IdentityError
from qdspace.node.identity.errors import NameTaken
from qdspace.node.identity.files import read_file
from qdspace.util.files import write_atomic


@dataclass(frozen=True)
class IssuedMember:
    """One line of the authority's register."""

    member_id: str
    name: str
    role: str
    serial: str
    not_after: str
    revoked_at: str | None = None
    revocation_reason: str | None = None
    hostnames: tuple[str, ...] = field(default=())  # requested SANs beyond localhost and name
    bpn: str | None = None  # business partner number, when the enrollment code named one
    #: framework agreements the authority attests the member signed (``authority attest``)
    frameworks: tuple[str, ...] = field(default=())
    #: the member's Ed25519 verify key (hex): a renewal must be signed by the same key
    #: (a member id holds only 48 bits of its hash); None in rows from before it was kept
    verify_key: str | None = None
    #: when the certificate was issued (renewals are counted by it); None in older rows
    issued_at: str | None = None

    def answers_to(self) -> set[str]:
        """Every name gRPC could check this member's certificate against."""
        return {self.name, *self.hostnames}


def load_register(path: Path) -> list[IssuedMember]:
    try:
        rows = json.loads(read_file(path, "authority register"))
        return [
            IssuedMember(
                **{
                    **row,
                    "hostnames": tuple(row.get("hostnames", ())),
                    "frameworks": tuple(row.get("frameworks", ())),
                }
            )
            for row in rows
        ]
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"authority register {path} is corrupt: {exc}") from None


def save_register(path: Path, members: list[IssuedMember]) -> None:
    data = json.dumps([asdict(m) for m in members], indent=2).encode() + b"\n"
    write_atomic(path, data)


def current_rows(members: list[IssuedMember]) -> list[IssuedMember]:
    """Each active member's newest row (its current certificate)."""
    newest: dict[str, IssuedMember] = {}
    for m in members:
        if m.revoked_at is None:
            newest[m.member_id] = m
    return list(newest.values())


def valid_rows(members: list[IssuedMember], now: dt.datetime) -> list[IssuedMember]:
    """The rows whose certificates are good now: not revoked, not expired."""
    return [
        m for m in members if m.revoked_at is None and dt.datetime.fromisoformat(m.not_after) > now
    ]


def holding_rows(members: list[IssuedMember], now: dt.datetime) -> list[IssuedMember]:
    """The rows whose names are held: each active member's newest row (expired or not:
    an expired member is revoked before its name is given again, `Authority.renew`) and
    every earlier certificate still valid, which TLS still accepts for the names it
    carries (module docstring). In register order."""
    newest = {id(m) for m in current_rows(members)}
    valid = {id(m) for m in valid_rows(members, now)}
    return [m for m in members if id(m) in newest or id(m) in valid]


def _whose(m: IssuedMember, newest: IssuedMember) -> str:
    """Which certificate of member ``m.member_id`` holds a name, for a refusal."""
    if m is newest:
        return f"member {m.member_id}"
    return (
        f"member {m.member_id} (an earlier certificate of it, serial {m.serial}, still "
        f"valid until {m.not_after}, carries it: the name is free once that certificate "
        "expires or the member is revoked)"
    )


def check_names_free(
    members: list[IssuedMember],
    member_id: str | None,
    name: str,
    hostnames: Sequence[str],
    reserved: Collection[str] = (),
    now: dt.datetime | None = None,
) -> None:
    """Refuse a name or hostname another active member answers to: gRPC takes the peer's
    member name as the TLS target name, and a regulator or DSP peer reaches a member by
    the host name it asked for, so a certificate carrying another member's name or host
    name (as its CN or as a SAN) could pass for that member. A member answers to the
    names of every certificate of it still valid, not only its newest (`holding_rows`).
    Loopback addresses are shared by every member on one machine (a local network) and
    hold nothing. A name that is another active member's id, and a hostname that a
    pending enrollment code names (``reserved``), are refused too (module docstring)."""
    moment = now or dt.datetime.now(dt.UTC)
    newest = {m.member_id: m for m in current_rows(members)}
    for m in holding_rows(members, moment):
        if m.member_id == member_id:
            continue
        theirs = {n.lower() for n in m.answers_to()}
        if name.lower() in theirs:
            who = _whose(m, newest[m.member_id])
            raise NameTaken(f"the name {name!r} is already taken by {who}")
        if name.lower() == m.member_id.lower():
            raise NameTaken(
                f"the name {name!r} is the member id of member {m.name}; the operator names "
                "members by either, so it would name two"
            )
        clash = sorted(h for h in hostnames if h.lower() in theirs and not _loopback(h))
        if clash:
            who = _whose(m, newest[m.member_id])
            raise NameTaken(
                f"hostname {clash[0]!r} is a name of {who}; a certificate carrying it "
                "could pass for that member"
            )
    waiting = {n.lower() for n in reserved}
    held = sorted(h for h in hostnames if h.lower() in waiting)
    if held:
        raise NameTaken(
            f"hostname {held[0]!r} is the name an enrollment code waiting to be redeemed "
            "was made for; a certificate carrying it could pass for that member"
        )


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() == "localhost"
