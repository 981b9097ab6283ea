"""Enrollment codes: how the authority lets one named member in, once, without sharing a key.

The authority's operator creates a code for a name and a role (``qdspace authority enroll``)
and hands it to the joining company out of band. The code is one copy-pasteable token,
``qdse1.<id>.<secret>.<ca fingerprint>``:

- ``id`` names the entry in the authority's book (``enrollments.json``);
- ``secret`` is 256 random bits; the book keeps only its sha256, so a copy of the book
  (a backup, a leaked file) admits nobody. Secrets are compared in constant time;
- the CA fingerprint (sha256 of the CA certificate's DER) lets the member pin the
  authority knowing only its URL and the code: it fetches the CA certificate over an
  unverified connection, checks the fingerprint, then verifies everything else against it
  (as kubeadm's discovery token hash does).

A code admits one certificate, for the name and role it was made for (and the business
partner number, if one was given), until it expires (24 h by default). The book is read
and written only under the authority's lock (see `Authority.locked`), so two requests
racing with one code get one certificate between them. While a code waits to be
redeemed its name is held for it: no certificate may ask for it as a hostname
(`pending_names`, `register.check_names_free`).

The book is pruned each time it is written (`prune`): a code that expired unredeemed
goes `KEEP_EXPIRED` after its expiry (the book grew by every code ever made). Nothing
needs it: an unknown code is refused as a wrong one is, and a code's name is held only
while it waits (`pending_names`). That keep time is for the operator, who may still
read why a member's code did not work (a late member is told it expired, not unknown). A
redeemed code's row stays: it is the record of which code admitted which member id
(``used_by``), one row per member enrolled, as the register keeps one per certificate.

This module holds the code and the book's entries; `Authority` (authority.py) redeems them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from qdspace.node.errors import IdentityError
from qdspace.node.identity.errors import (
    EnrollmentCodeExpired,
    EnrollmentCodeRefused,
    EnrollmentCodeUsed,
    MalformedEnrollmentCode,
)
from qdspace.node.identity.files import read_file
from qdspace.util.files import write_atomic

CODE_PREFIX = "qdse1"
DEFAULT_TTL = dt.timedelta(hours=24)
MAX_TTL = dt.timedelta(days=30)
#: how long a code that expired unredeemed stays in the book past its expiry (`prune`)
KEEP_EXPIRED = dt.timedelta(days=30)
_CODE = re.compile(
    r"^" + CODE_PREFIX + r"\.(?P<id>[0-9a-f]{16})\.(?P<secret>[A-Za-z0-9_-]{43})"
    r"\.(?P<fp>[0-9a-f]{64})$"
)


@dataclass(frozen=True)
class EnrollmentCode:
    """What the authority hands a joining member, once."""

    code_id: str
    secret: str
    ca_fingerprint: str  # sha256 hex of the CA certificate's DER

    def __str__(self) -> str:
        return f"{CODE_PREFIX}.{self.code_id}.{self.secret}.{self.ca_fingerprint}"

    def __repr__(self) -> str:  # never print the secret by accident (logs, tracebacks)
        return f"EnrollmentCode(code_id={self.code_id!r}, ca_fingerprint={self.ca_fingerprint!r})"

    @classmethod
    def parse(cls, text: str) -> EnrollmentCode:
        match = _CODE.match(text.strip())
        if match is None:
            raise MalformedEnrollmentCode(
                f"not an enrollment code: expected {CODE_PREFIX}.<16 hex>.<43 base64url>.<64 hex>"
            )
        return cls(match["id"], match["secret"], match["fp"])

    @classmethod
    def new(cls, ca_fingerprint: str) -> EnrollmentCode:
        return cls(secrets.token_hex(8), secrets.token_urlsafe(32), ca_fingerprint)


def secret_hash(secret: str) -> str:
    """The book's copy of a secret. A plain sha256 suffices: the secret is 256 random bits,
    nothing a dictionary could guess."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Enrollment:
    """One entry of the authority's book of codes."""

    code_id: str
    secret_sha256: str
    name: str
    role: str
    created_at: str
    expires_at: str
    bpn: str | None = None
    used_at: str | None = None
    used_by: str | None = None  # the member id the code's certificate went to

    def check(self, code: EnrollmentCode, now: dt.datetime) -> None:
        """Refuse a wrong secret first (a guess learns nothing more), then a used or
        expired code."""
        if not hmac.compare_digest(self.secret_sha256, secret_hash(code.secret)):
            raise EnrollmentCodeRefused("enrollment code refused: unknown code or wrong secret")
        if self.used_at is not None:
            raise EnrollmentCodeUsed(
                f"enrollment code {self.code_id} was already used (at {self.used_at}); "
                "ask the authority for a new one"
            )
        if now >= dt.datetime.fromisoformat(self.expires_at):
            raise EnrollmentCodeExpired(
                f"enrollment code {self.code_id} expired at {self.expires_at}; "
                "ask the authority for a new one"
            )

    def redeemed(self, member_id: str, now: dt.datetime) -> Enrollment:
        return replace(self, used_at=now.isoformat(), used_by=member_id)


def new_enrollment(
    code: EnrollmentCode,
    *,
    name: str,
    role: str,
    ttl: dt.timedelta,
    bpn: str | None,
    now: dt.datetime,
) -> Enrollment:
    if not dt.timedelta(0) < ttl <= MAX_TTL:
        raise IdentityError(
            f"an enrollment code lives more than 0 s and at most {MAX_TTL.days} days"
        )
    return Enrollment(
        code_id=code.code_id,
        secret_sha256=secret_hash(code.secret),
        name=name,
        role=role,
        created_at=now.isoformat(),
        expires_at=(now + ttl).isoformat(),
        bpn=bpn,
    )


def load_book(path: Path) -> dict[str, Enrollment]:
    """The book of codes by id; a missing file is an empty book."""
    if not path.exists():
        return {}
    try:
        rows = json.loads(read_file(path, "enrollment book"))
        return {row["code_id"]: Enrollment(**row) for row in rows}
    except (ValueError, TypeError, KeyError) as exc:
        raise IdentityError(f"enrollment book {path} is corrupt: {exc}") from None


def save_book(path: Path, book: dict[str, Enrollment], now: dt.datetime | None = None) -> None:
    """Write the book atomically (the lock held), pruned as of ``now`` (`prune`)."""
    kept = prune(book, now or dt.datetime.now(dt.UTC))
    data = json.dumps([asdict(e) for e in kept.values()], indent=2).encode() + b"\n"
    write_atomic(path, data)


def prune(book: dict[str, Enrollment], now: dt.datetime) -> dict[str, Enrollment]:
    """The book without the codes that expired unredeemed more than `KEEP_EXPIRED` before
    ``now``; redeemed codes stay (module docstring)."""
    cutoff = now - KEEP_EXPIRED
    return {
        code_id: e
        for code_id, e in book.items()
        if e.used_at is not None or dt.datetime.fromisoformat(e.expires_at) > cutoff
    }


def pending_names(
    book: dict[str, Enrollment], now: dt.datetime, *, but: str | None = None
) -> set[str]:
    """The names of the codes still waiting to be redeemed (unused, unexpired), but the
    code ``but``: no certificate may ask for one as a hostname (`register.check_names_free`)."""
    return {
        e.name
        for e in book.values()
        if e.code_id != but and e.used_at is None and now < dt.datetime.fromisoformat(e.expires_at)
    }


def find(book: dict[str, Enrollment], code: EnrollmentCode, ca_fingerprint: str) -> Enrollment:
    """The entry ``code`` opens, checked (secret, use, expiry, the CA it was made for)."""
    entry = book.get(code.code_id)
    if entry is None or not hmac.compare_digest(code.ca_fingerprint, ca_fingerprint):
        raise EnrollmentCodeRefused("enrollment code refused: unknown code or wrong secret")
    entry.check(code, dt.datetime.now(dt.UTC))
    return entry
