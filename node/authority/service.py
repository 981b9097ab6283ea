"""What the authority service does, behind one lock: no HTTP here, the app is a thin adapter.

The service owns the authority directory while it runs. Every change (a published
entry, an enrollment, a renewal, a re-issued CRL) happens under one lock and is
written atomically, so two requests at once cannot interleave a read-modify-write of
``members.json`` or ``directory.json``. ``qdspace authority revoke`` may still run in
another process: the service notices (the register's file changed) and drops the
revoked member's entry from the next directory it serves.

The directory document (``directory.json``) is signed with the CA key every time it
changes. Its serial is the larger of the previous serial + 1 and the current time in
milliseconds, so it only grows, even when the file is lost and the service restarts:
nodes refuse a lower serial than the one they hold (a replayed old directory).

Each published entry re-signs and rewrites the whole document, and every node fetches the
new one: a member publishing newer entries of itself as fast as it can would keep the
service signing and writing and every node downloading. A member's entry changes when
its node moves (a restart on other ports, a new certificate, a new address), so the
service takes `PUBLISH_BURST` publishes of one member at once and then one every
`PUBLISH_EVERY_S` (`util.token_bucket.TokenBuckets`, a bucket per member, in memory: a restart of
the service starts them full); over it, `PublishedTooOften` (429) says when to try again,
and the node's follower tries at its next refresh.

Enrollment preview, enrollment and renewal are open to anyone who reaches the service:
each client address, and each address's network, has a budget of refused attempts
(`node.authority.attempts`), and an address or network over it is answered
`TooManyAttempts` (429 with Retry-After, saying which budget is spent) before any work.
Every refusal is logged for the operator, but through one budget of log lines for all
callers (`attempts.LogBudget`), and a flood of 429s once per address and then summed up:
a caller cannot flood the log, however many addresses it has.

An entry may not name an address every follower would dial on its own machine or
network (`node.authority.endpoints`): loopback and private ones only where the operator
opted in (``authority serve --allow-local-endpoints``, a local network).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from qdspace.node.authority.attempts import UNKNOWN_CLIENT, Admission, AttemptRates, LogBudget
from qdspace.node.authority.endpoints import check_endpoints
from qdspace.node.errors import IdentityError, LimitExceeded
from qdspace.node.identity.authority import Authority
from qdspace.node.identity.certs import cert_to_pem, identity_of, load_key, verify_issued_by
from qdspace.node.identity.directory import (
    DirectoryEntry,
    DirectoryError,
    MalformedDirectory,
    entry_matches_certificate,
    verify_entry,
)
from qdspace.node.identity.directory_document import (
    DirectoryDocument,
    parse_document,
    sign_document,
    verify_document,
)
from qdspace.node.identity.files import read_file
from qdspace.node.identity.register import IssuedMember
from qdspace.node.layout import AuthorityLayout
from qdspace.policies.errors import BpnNotAttested
from qdspace.util.files import write_atomic
from qdspace.util.token_bucket import TokenBuckets

logger = logging.getLogger("node.authority")

#: how far ahead of the service's clock an entry's ``published_at`` may be
CLOCK_SKEW = dt.timedelta(minutes=5)
#: a certificate PEM longer than this is not a member certificate
MAX_CERT_PEM = 16 * 1024


#: publishes of one member taken at once, then one every `PUBLISH_EVERY_S`
PUBLISH_BURST = 10
PUBLISH_EVERY_S = 60.0


class PublishedTooOften(DirectoryError):
    """A member that published its entry more often than the service takes (module);
    ``retry_after_s``: whole seconds until it may again (at least 1)."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TooManyAttempts(LimitExceeded):
    """An address over its budget of refused attempts (`node.authority.attempts`);
    ``retry_after_s``: whole seconds until it has one again (at least 1)."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotAMember(DirectoryError):
    """A certificate the authority did not issue, or revoked, or that has expired."""


class StaleEntry(DirectoryError):
    """An entry not newer than the one the directory holds for that member (a replay)."""


@dataclass(frozen=True)
class _Register:
    """The issued certificates by serial, as read from ``members.json`` at ``stamp``."""

    stamp: tuple[int, int]
    by_serial: Mapping[int, IssuedMember]


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return (st.st_mtime_ns, st.st_size)


#: what a refused request raises (the caller's mistake, answered 4xx; never a bug of ours)
REFUSALS = (IdentityError, ValueError, PermissionError)


def _held_back(lines: int) -> str:
    return f" ({lines} refusal lines held back before this one)" if lines else ""


def _in_good_standing(member: IssuedMember | None, now: dt.datetime) -> bool:
    return (
        member is not None
        and member.revoked_at is None
        and dt.datetime.fromisoformat(member.not_after) > now
    )


class AuthorityService:
    """The authority's state while ``authority serve`` runs (module docstring)."""

    def __init__(
        self,
        authority: Authority,
        ca_key: ec.EllipticCurvePrivateKey,
        attempts: AttemptRates | None = None,
        log_lines: LogBudget | None = None,
        *,
        allow_local_endpoints: bool = False,
    ) -> None:
        self.authority = authority
        self.allow_local_endpoints = allow_local_endpoints
        self._ca_key = ca_key
        self.lock = threading.RLock()
        self._register: _Register | None = None
        self._document = self._load_document()
        self._publishes = TokenBuckets(1 / PUBLISH_EVERY_S, PUBLISH_BURST)
        self.attempts = attempts or AttemptRates()
        self._log_lines = log_lines or LogBudget()

    @classmethod
    def open(cls, directory: Path, *, allow_local_endpoints: bool = False) -> AuthorityService:
        """The service of the authority in ``directory``; ``allow_local_endpoints``: take
        entries naming loopback and private addresses (a local network, module)."""
        authority = Authority.load(directory.resolve())
        ca_key = load_key(authority.files.ca_key, "authority key")
        return cls(authority, ca_key, allow_local_endpoints=allow_local_endpoints)

    @property
    def files(self) -> AuthorityLayout:
        return self.authority.files

    @property
    def ca_key(self) -> ec.EllipticCurvePrivateKey:
        return self._ca_key

    @property
    def space(self) -> str:
        return self.authority.space

    # -- CA and CRL ------------------------------------------------------------------------

    def ca_pem(self) -> bytes:
        return cert_to_pem(self.authority.cert)

    def crl_pem(self, now: dt.datetime | None = None) -> bytes:
        """The current CRL; re-issued first when less than half its validity is left."""
        now = now or dt.datetime.now(dt.UTC)
        with self.lock:
            path = self.files.crl
            crl = self._read_crl(path)
            next_update = crl.next_update_utc
            if next_update is None or now >= crl.last_update_utc + (
                (next_update - crl.last_update_utc) / 2
            ):
                self.authority.issue_crl()
                logger.info("authority: revocation list re-issued (%s)", path)
            return read_file(path, "revocation list")

    @staticmethod
    def _read_crl(path: Path) -> x509.CertificateRevocationList:
        try:
            return x509.load_pem_x509_crl(read_file(path, "revocation list"))
        except ValueError as exc:
            raise IdentityError(f"revocation list {path} is corrupt: {exc}") from None

    # -- refusals: counted per address, logged within a budget ------------------------------

    def _log_refusal(self, what: str, client: str, exc: BaseException) -> None:
        """Log a refused request (the caller gets the problem; the operator sees the
        attempt), unless the log budget holds it back."""
        held = self._log_lines.line(time.monotonic())
        if held is not None:
            note = _held_back(held)
            logger.warning("authority: refused %s from %s: %s%s", what, client, exc, note)

    @contextlib.contextmanager
    def _logged_refusal(self, what: str, client: str) -> Iterator[None]:
        try:
            yield
        except REFUSALS as exc:
            self._log_refusal(what, client, exc)
            raise

    @contextlib.contextmanager
    def _attempt(self, what: str, client: str) -> Iterator[None]:
        """One attempt of ``client`` at enrollment or renewal: refused before any work
        when the address is over its budget of refusals, and a refusal counted against it
        (module docstring)."""
        admission = self.attempts.admit(client, time.monotonic())
        if not admission.admitted:
            raise self._too_many(what, client, admission)
        refused = False
        try:
            with self._logged_refusal(what, client):
                yield
        except REFUSALS:
            refused = True  # its token stays taken
            raise
        finally:
            if not refused:  # done, or our own failure: not the caller's refusal
                self.attempts.spare(client, time.monotonic())

    def _too_many(self, what: str, client: str, admission: Admission) -> TooManyAttempts:
        """The 429 of an address, or of its network, over its budget (which one it says),
        reported once and then summed up."""
        network = admission.network
        over = client if network is None else f"{client}'s network {network}"
        limits = admission.budget or self.attempts.address_budget
        retry = max(1, math.ceil(admission.wait_s))
        if admission.report:
            held = self._log_lines.line(time.monotonic())
            if held is not None:
                logger.warning(
                    "authority: %s from %s over its refused attempts (%s): %d answered "
                    "429 since the last line about it%s",
                    what,
                    over,
                    limits,
                    admission.refused,
                    _held_back(held),
                )
        return TooManyAttempts(
            f"too many refused attempts from {over} ({limits}): try again in {retry} s",
            retry,
        )

    # -- enrollment and renewal -------------------------------------------------------------

    def preview(self, code: str, client: str = UNKNOWN_CLIENT) -> tuple[str, str]:
        """The (name, role) an enrollment code admits (the code stays unspent)."""
        with self._attempt("an enrollment preview", client):
            return self.authority.preview_enrollment(code)

    def enroll(self, code: str, csr_pem: str, client: str = UNKNOWN_CLIENT) -> x509.Certificate:
        """The certificate for a joining member's request, admitted by (and spending) ``code``."""
        with self._attempt("an enrollment", client):
            cert = self.authority.sign_request(csr_pem.encode(), code=code)
        ident = identity_of(cert)
        logger.info("authority: enrolled %s (%s) as %s", ident.name, ident.member_id, ident.role)
        return cert

    def renew(self, csr_pem: str, client: str = UNKNOWN_CLIENT) -> x509.Certificate:
        """A new certificate for a member's new TLS key (same signing key), while its
        certificate is valid (`Authority.renew`)."""
        with self._attempt("a renewal", client):
            cert = self.authority.renew(csr_pem.encode())
        ident = identity_of(cert)
        logger.info(
            "authority: renewed %s (%s), serial %x", ident.name, ident.member_id, ident.serial
        )
        return cert

    # -- the register ----------------------------------------------------------------------

    def _members_by_serial(self) -> Mapping[int, IssuedMember]:
        """The register, re-read only when ``members.json`` changed (a revoke by the CLI)."""
        stamp = _stamp(self.files.members)
        if self._register is None or self._register.stamp != stamp:
            members = {int(m.serial, 16): m for m in self.authority.members()}
            self._register = _Register(stamp, members)
        return self._register.by_serial

    # -- the directory ---------------------------------------------------------------------

    def _load_document(self) -> DirectoryDocument:
        path = self.files.member_directory
        if not path.exists():  # an empty directory, signed (not written until it changes)
            return sign_document(self.space, int(time.time() * 1000), [], self._ca_key)
        try:
            document = parse_document(json.loads(read_file(path, "member directory")))
            verify_document(document, self.authority.cert)
        except (ValueError, DirectoryError) as exc:
            raise IdentityError(
                f"member directory {path} is corrupt ({exc}); move it aside to start "
                "an empty one (members publish their entries again on their next start)"
            ) from None
        entries, dropped = [], []
        for raw in document.raw_entries:
            try:
                entries.append(DirectoryEntry.from_json(raw))
            except (ValueError, DirectoryError) as exc:
                dropped.append(str(exc))
        loaded = DirectoryDocument(
            document.space,
            document.serial,
            document.issued_at,
            tuple(entries),
            document.signature,
            document.attested,
        )
        if not dropped:
            return loaded
        # an entry this version's rules refuse (an address gRPC would read as a local
        # socket, an IPv6 address without brackets, both once taken): that member is
        # left out and publishes again; the service starts (it would not, before)
        logger.warning(
            "member directory %s: %d entries left out, no longer valid (%s); their "
            "members publish again on their next refresh",
            path,
            len(dropped),
            "; ".join(d[:200] for d in dropped[:5]),
        )
        self._document = loaded
        return self._save(entries)

    def _attested(self, entries: list[DirectoryEntry]) -> dict[str, tuple[str, ...]]:
        """What the register attests of the members these entries list (their
        certificates' rows): the frameworks each signed."""
        register = self._members_by_serial()
        out = {}
        for entry in entries:
            member = register.get(entry.serial)
            if member is not None and member.frameworks:
                out[entry.member_id] = member.frameworks
        return out

    def _save(self, entries: list[DirectoryEntry]) -> DirectoryDocument:
        serial = max(self._document.serial + 1, int(time.time() * 1000))
        attested = self._attested(entries)
        document = sign_document(self.space, serial, entries, self._ca_key, attested=attested)
        write_atomic(
            self.files.member_directory,
            json.dumps(document.to_json(), indent=1).encode() + b"\n",
            mode=0o644,
        )
        self._document = document
        return document

    def document(self) -> DirectoryDocument:
        """The directory, without members revoked (or expired) since it was signed, and
        with what the register attests now (``authority attest`` may run in another
        process: the register's file changed)."""
        with self.lock:
            now = dt.datetime.now(dt.UTC)
            register = self._members_by_serial()
            entries = list(self._document.entries)
            kept = [e for e in entries if _in_good_standing(register.get(e.serial), now)]
            if len(kept) != len(entries):
                gone = sorted({e.name for e in entries} - {e.name for e in kept})
                logger.info("authority: directory drops %s (revoked or expired)", ", ".join(gone))
                return self._save(kept)
            if self._attested(kept) != dict(self._document.attested):
                logger.info("authority: directory signs the register's new attestations")
                return self._save(kept)
            return self._document

    def publish(
        self, entry_data: Any, cert_pem: str, client: str = UNKNOWN_CLIENT
    ) -> DirectoryDocument:
        """Take a member's signed entry (with its certificate) into the directory.

        Refused: an entry that does not parse, whose signature is not its member's, that
        does not describe the certificate it came with, whose certificate this authority
        did not issue or has revoked, that names a business partner number other than
        the one attested at enrollment, or that is not newer than the entry held for it.
        Refusals are logged within the log budget but not counted against ``client``'s
        budget of attempts: the nodes of one host share its address, and a follower's
        stale or too frequent entry is no attack (members' publishes have their own rate).
        """
        with self._logged_refusal("a directory entry", client):
            return self._publish(entry_data, cert_pem)

    def _publish(self, entry_data: Any, cert_pem: str) -> DirectoryDocument:
        """The checks of `publish`, the refusals logged by it."""
        entry = DirectoryEntry.from_json(entry_data)
        cert = self._certificate(cert_pem)
        identity = identity_of(cert)
        entry_matches_certificate(entry, identity)
        verify_entry(entry)
        check_endpoints(entry, allow_local=self.allow_local_endpoints)
        now = dt.datetime.now(dt.UTC)
        if entry.published > now + CLOCK_SKEW:
            raise MalformedDirectory(f"entry of {entry.name}: published_at is in the future")
        with self.lock:
            member = self._members_by_serial().get(identity.serial)
            if member is None or not _in_good_standing(member, now):
                raise NotAMember(
                    f"certificate serial {identity.serial:x} of {identity.name} is revoked, "
                    "expired or not in this authority's register"
                )
            if entry.bpn is not None and entry.bpn != member.bpn:
                # the directory the authority signs lists only numbers it attested: a
                # member's own claim would let it pass any BusinessPartnerNumber policy
                raise BpnNotAttested(
                    f"entry of {entry.name} names business partner number {entry.bpn!r}; "
                    f"the authority attested {member.bpn or 'none'} for it (enroll --bpn)"
                )
            held = self._document.entry(entry.member_id)
            if held is not None and entry.published <= held.published:
                raise StaleEntry(
                    f"entry of {entry.name} published at {entry.published_at} is not newer "
                    f"than the one held ({held.published_at})"
                )
            self._take_publish(entry.member_id, entry.name)
            others = [
                e
                for e in self._document.entries
                if e.member_id != entry.member_id and e.name != entry.name
            ]
            document = self._save([*others, entry])
        logger.info(
            "authority: %s (%s) published peer %s, directory serial %d",
            entry.name,
            entry.member_id,
            entry.peer,
            document.serial,
        )
        return document

    def _take_publish(self, member_id: str, name: str) -> None:
        """One of the member's publishes, or `PublishedTooOften` (see the module)."""
        wait_s = self._publishes.take(member_id, time.monotonic())
        if wait_s > 0:
            retry = max(1, math.ceil(wait_s))
            raise PublishedTooOften(
                f"{name} published its entry more often than this authority takes "
                f"({PUBLISH_BURST} at once, then one every {PUBLISH_EVERY_S:.0f} s): "
                f"try again in {retry} s",
                retry,
            )

    def _certificate(self, cert_pem: str) -> x509.Certificate:
        if len(cert_pem) > MAX_CERT_PEM:
            raise MalformedDirectory("cert_pem is too long for a member certificate")
        try:
            cert = x509.load_pem_x509_certificate(cert_pem.encode())
        except ValueError:
            raise MalformedDirectory("cert_pem is not a PEM certificate") from None
        verify_issued_by(cert, self.authority.cert)
        return cert
