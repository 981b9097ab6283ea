"""The data space's authority: a CA that issues member certificates and revokes them.

The authority directory holds ``ca.key`` (private, 0600), ``ca.crt``, ``members.json``
(what was issued, register.py), ``enrollments.json`` (the book of enrollment codes,
enrollment.py) and ``crl.pem`` (a signed revocation list that nodes reload when it
changes). A CRL is valid for ``CRL_VALID_DAYS``; nodes refuse every call once it is past
its nextUpdate, so the authority re-issues it (``qdspace authority crl``, e.g. daily from
cron) well before then. Every file is written atomically, so an interrupted command leaves the
directory as it was; a read-modify-write of the register or the book happens under an
exclusive lock on ``authority.lock`` (see `Authority.locked`), so two signers at once (two
threads of the authority service, or the service and ``qdspace authority sign``) cannot
both spend one code or lose each other's entry.

The authority certifies what a member *asks for* (a `CertificateRequest`, csr.py) and never
sees a member's private key: `sign_request` (a new member, admitted by an enrollment code
or by the operator naming the member and role) and `renew` (a known member's new TLS key,
while its certificate is valid: an expired member enrolls again) build the certificate
from the verified request alone.

One member id holds one role: a code is redeemed only by a key whose member id holds no
valid certificate yet (`admission.check_not_enrolled`), and a name has at most one code
waiting (`create_enrollment`; ``cancel_enrollment`` withdraws one). Two codes for one name (the
operator re-issued it with another role, or because the first seemed lost) let one key
redeem both and hold a supplier and a regulator certificate at once; a member's new TLS
key is a renewal, and a code it was sent by mistake is cancelled.
"""

from __future__ import annotations

import datetime as dt
import fcntl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from qdspace.node.errors import IdentityError
from qdspace.node.identity import admission
from qdspace.node.identity import enrollment as book
from qdspace.node.identity.attestations import frameworks_of
from qdspace.node.identity.certs import (
    build_ca_cert,
    build_crl,
    build_member_cert,
    cert_to_pem,
    fingerprint,
    key_to_pem,
    load_cert,
    load_key,
    member_subject,
    new_tls_key,
)
from qdspace.node.identity.csr import (
    CertificateRequest,
    check_name,
    check_role,
    read_request,
)
from qdspace.node.identity.enrollment import DEFAULT_TTL, Enrollment, EnrollmentCode
from qdspace.node.identity.errors import (
    EnrollmentCodeUsed,
    NameTaken,
    RenewalRefused,
    RequestNotGranted,
)
from qdspace.node.identity.register import (
    IssuedMember,
    check_names_free,
    load_register,
    save_register,
)
from qdspace.node.layout import AuthorityLayout
from qdspace.util.files import write_atomic

CA_VALID_DAYS = 3650
MEMBER_VALID_DAYS = 825
CRL_VALID_DAYS = 7
#: the bounds of a re-issued CRL's validity (``authority crl --valid-days``): a list
#: valid for less is stale before it reaches the nodes (and stale, they refuse every
#: call); one valid for longer keeps a revocation from them for as long (a node holding
#: a still-valid list does not look for the next)
CRL_MIN_VALID = dt.timedelta(hours=1)
CRL_MAX_VALID = dt.timedelta(days=90)


#: renewals a member may make within `RENEWAL_WINDOW` (each writes a register row and
#: re-signs: a loop of them grew the register without end)
RENEWALS_PER_WINDOW = 4
RENEWAL_WINDOW = dt.timedelta(days=1)


class Authority:
    """A loaded authority directory."""

    def __init__(self, directory: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey):
        self.directory = directory
        self.cert = cert
        self._key = key

    @property
    def files(self) -> AuthorityLayout:
        """The paths of this authority's directory."""
        return AuthorityLayout(self.directory)

    @property
    def space(self) -> str:
        return str(self.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value)

    @classmethod
    def init(cls, directory: Path, space: str = "qdspace") -> Authority:
        """Create a new authority; refuses to overwrite an existing one."""
        files = AuthorityLayout(directory)
        if files.ca_key.exists() or files.ca_cert.exists():
            raise IdentityError(f"an authority already exists in {directory}")
        key = new_tls_key()
        cert = build_ca_cert(space, key, valid_days=CA_VALID_DAYS)
        directory.mkdir(parents=True, exist_ok=True)
        authority = cls(directory, cert, key)
        # The register and CRL first, the key and cert last: a half-done init is re-runnable.
        write_atomic(files.members, b"[]\n")
        authority._write_crl([])
        write_atomic(files.ca_key, key_to_pem(key), mode=0o600)
        write_atomic(files.ca_cert, cert_to_pem(cert))
        return authority

    @classmethod
    def load(cls, directory: Path) -> Authority:
        if not directory.is_dir():
            raise IdentityError(f"authority directory not found: {directory}")
        files = AuthorityLayout(directory)
        cert = load_cert(files.ca_cert, "authority certificate")
        key = load_key(files.ca_key, "authority key")
        if cert.public_key() != key.public_key():
            raise IdentityError(f"{files.ca_key} does not match {files.ca_cert}")
        return cls(directory, cert, key)

    # -- register -------------------------------------------------------------------------

    def members(self) -> list[IssuedMember]:
        return load_register(self.files.members)

    def _save_members(self, members: list[IssuedMember]) -> None:
        save_register(self.files.members, members)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the authority's exclusive lock for a read-modify-write of its files.

        ``flock`` on a file description of its own per call: it excludes other threads of
        this process as well as other processes (not re-entrant: the ``_`` methods below
        expect the caller to hold it)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.files.lock, "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    # -- issuing --------------------------------------------------------------------------

    def _issue(
        self,
        request: CertificateRequest,
        *,
        valid_days: int,
        not_before: dt.datetime | None,
        bpn: str | None,
        frameworks: tuple[str, ...] = (),
        redeeming: str | None = None,
    ) -> x509.Certificate:
        """Certify a verified request and record it in the register (the lock is held);
        ``redeeming`` is the id of the enrollment code that admits it."""
        if request.space != self.space:
            raise RequestNotGranted(
                f"the request is for data space {request.space!r}; this authority "
                f"certifies members of {self.space!r}"
            )
        name, member_id = request.name, request.member_id
        members = self.members()
        hosts = tuple(h for h in request.hostnames if h not in ("localhost", name))
        now = dt.datetime.now(dt.UTC)
        waiting = book.pending_names(book.load_book(self.files.enrollments), now, but=redeeming)
        check_names_free(members, member_id, name, hosts, waiting, now)
        start = not_before or now - dt.timedelta(minutes=5)
        cert = build_member_cert(
            ca_cert=self.cert,
            ca_key=self._key,
            subject=member_subject(self.space, name, member_id, request.role),
            public_key=request.public_key,
            verify_key=request.verify_key,
            hostnames=["localhost", name, *hosts],
            not_before=start,
            not_after=start + dt.timedelta(days=valid_days),
        )
        members.append(
            IssuedMember(
                member_id=member_id,
                name=name,
                role=request.role,
                serial=f"{cert.serial_number:x}",
                not_after=cert.not_valid_after_utc.isoformat(),
                hostnames=hosts,
                bpn=bpn,
                frameworks=frameworks,
                verify_key=request.verify_key.hex(),
                issued_at=dt.datetime.now(dt.UTC).isoformat(),
            )
        )
        self._save_members(members)
        return cert

    # -- enrollment -----------------------------------------------------------------------

    def create_enrollment(
        self, *, name: str, role: str, ttl: dt.timedelta = DEFAULT_TTL, bpn: str | None = None
    ) -> EnrollmentCode:
        """A one-time code admitting ``name`` as ``role``; only its hash is kept. Refused
        while another code for ``name`` waits to be redeemed (module docstring): the
        operator cancels that one first (`cancel_enrollment`)."""
        check_name(name)
        check_role(role)
        if bpn is not None and not (0 < len(bpn) <= 64 and bpn.isprintable()):
            raise IdentityError("a business partner number has 1-64 printable characters")
        code = EnrollmentCode.new(fingerprint(self.cert))
        now = dt.datetime.now(dt.UTC)
        entry = book.new_enrollment(code, name=name, role=role, ttl=ttl, bpn=bpn, now=now)
        with self.locked():
            check_names_free(self.members(), None, name, (), now=now)
            codes = book.load_book(self.files.enrollments)
            waiting = admission.waiting(codes, now, name=name)
            if waiting:
                first = waiting[0]
                raise NameTaken(
                    f"enrollment code {first.code_id} for {first.name!r} ({first.role}) waits "
                    f"to be redeemed until {first.expires_at}; one name has one code at a "
                    f"time: cancel it first (`qdspace authority cancel --code {first.code_id}`)"
                )
            codes[code.code_id] = entry
            book.save_book(self.files.enrollments, codes, now)
        return code

    def cancel_enrollment(
        self, *, code: str | None = None, name: str | None = None
    ) -> list[Enrollment]:
        """Withdraw the code ``code`` (its id or the whole code), or every code waiting for
        ``name``: their entries leave the book, and redeeming one is refused as an unknown
        code is. A redeemed code is no longer the book's to cancel (its member is revoked
        instead). The entries cancelled."""
        if (code is None) == (name is None):
            raise IdentityError("cancel an enrollment code by its id or by its name, one of them")
        now = dt.datetime.now(dt.UTC)
        with self.locked():
            codes = book.load_book(self.files.enrollments)
            if code is not None:
                gone = [self._cancellable(codes, admission.code_id(code))]
            else:
                gone = admission.waiting(codes, now, name=str(name))
                if not gone:
                    raise IdentityError(f"no enrollment code waits for {name!r}")
            for entry in gone:
                del codes[entry.code_id]
            book.save_book(self.files.enrollments, codes, now)
        return gone

    def _cancellable(self, codes: dict[str, Enrollment], code_id: str) -> Enrollment:
        entry = codes.get(code_id)
        if entry is None:
            raise IdentityError(f"no enrollment code {code_id} in {self.directory}")
        if entry.used_at is not None:
            raise EnrollmentCodeUsed(
                f"enrollment code {code_id} was redeemed at {entry.used_at} by member "
                f"{entry.used_by}: there is nothing to cancel (`qdspace authority revoke "
                "--member` removes the member)"
            )
        return entry

    def preview_enrollment(self, code: str) -> tuple[str, str]:
        """The (name, role) a code admits; refuses a malformed, unknown, used or expired one."""
        parsed = EnrollmentCode.parse(code)
        with self.locked():
            entry = book.find(
                book.load_book(self.files.enrollments), parsed, fingerprint(self.cert)
            )
        return entry.name, entry.role

    def sign_request(
        self,
        csr_pem: bytes,
        *,
        code: str | None = None,
        approve_name: str | None = None,
        approve_role: str | None = None,
        valid_days: int = MEMBER_VALID_DAYS,
        not_before: dt.datetime | None = None,
    ) -> x509.Certificate:
        """Certify a new member's request, admitted by an enrollment ``code`` (spent here)
        or by the operator approving ``approve_name`` as ``approve_role``."""
        request = read_request(csr_pem)
        if code is None:
            if approve_name is None or approve_role is None:
                raise IdentityError(
                    "signing a request needs an enrollment code, or the name and role to approve"
                )
            admission.granted(request, approve_name, approve_role, "the operator approved")
            with self.locked():
                admission.check_not_enrolled(self.members(), request.member_id, "an approval")
                return self._issue(request, valid_days=valid_days, not_before=not_before, bpn=None)
        if approve_name is not None or approve_role is not None:
            raise IdentityError("give an enrollment code or a name and role to approve, not both")
        parsed = EnrollmentCode.parse(code)
        with self.locked():
            codes = book.load_book(self.files.enrollments)
            entry = book.find(codes, parsed, fingerprint(self.cert))
            admission.granted(
                request, entry.name, entry.role, f"enrollment code {entry.code_id} admits"
            )
            admitting = f"code {entry.code_id}"
            admission.check_not_enrolled(self.members(), request.member_id, admitting)
            cert = self._issue(
                request,
                valid_days=valid_days,
                not_before=not_before,
                bpn=entry.bpn,
                redeeming=entry.code_id,
            )
            codes[entry.code_id] = entry.redeemed(request.member_id, dt.datetime.now(dt.UTC))
            book.save_book(self.files.enrollments, codes)
        return cert

    def renew(self, csr_pem: bytes, *, valid_days: int = MEMBER_VALID_DAYS) -> x509.Certificate:
        """A new certificate for a known member's new TLS key (same signing key, so the
        same member id), with the same name and role, while one of its certificates is
        valid: not revoked and not expired (`admission.renewable`)."""
        request = read_request(csr_pem)
        with self.locked():
            mine = [m for m in self.members() if m.member_id == request.member_id]
            active = [m for m in mine if m.revoked_at is None]
            last = admission.renewable(request.member_id, mine, active)
            # a member id holds 48 bits of its key's hash: a key ground to the same id is
            # another party's, whatever id it yields
            if last.verify_key is not None and last.verify_key != request.verify_key.hex():
                raise RenewalRefused(
                    f"renewal of {last.member_id} is signed by another key than the member's: "
                    "renewal refused (a new key is a new enrollment)"
                )
            recent = [m for m in active if admission.issued_within(m, RENEWAL_WINDOW)]
            if len(recent) >= RENEWALS_PER_WINDOW:
                raise RenewalRefused(
                    f"member {last.member_id} renewed {len(recent)} times within "
                    f"{RENEWAL_WINDOW.days} day: try again later"
                )
            if (request.name, request.role) != (last.name, last.role):
                raise RenewalRefused(
                    f"renewal of {last.member_id} asks for name {request.name!r} and role "
                    f"{request.role!r}; it is {last.name!r} ({last.role}): a new name or role "
                    "is a new enrollment"
                )
            return self._issue(
                request,
                valid_days=valid_days,
                not_before=None,
                bpn=last.bpn,
                frameworks=last.frameworks,
            )

    # -- attestation ----------------------------------------------------------------------

    def attest(
        self, name_or_id: str, *, add: Sequence[str] = (), withdraw: Sequence[str] = ()
    ) -> IssuedMember:
        """Record that an active member signed the framework agreements ``add`` and no
        longer holds ``withdraw`` (`node.identity.attestations`); its register row as it
        now is. The authority service signs the change into its next directory."""
        added = frameworks_of(add, "--framework")
        gone = frameworks_of(withdraw, "--withdraw")
        with self.locked():
            members = self.members()
            hits = self._active_rows(members, name_or_id)
            held = set(hits[-1].frameworks)
            unknown = sorted(set(gone) - held)
            if unknown:
                raise IdentityError(
                    f"{hits[-1].name} holds no attested framework {unknown[0]!r} to withdraw "
                    f"(it holds {', '.join(sorted(held)) or 'none'})"
                )
            now = frameworks_of((held | set(added)) - set(gone))
            updated = [replace(m, frameworks=now) if m in hits else m for m in members]
            self._save_members(updated)
        return replace(hits[-1], frameworks=now)

    def _active_rows(self, members: list[IssuedMember], name_or_id: str) -> list[IssuedMember]:
        """The active rows of the one member ``name_or_id`` names (by name or by id); a
        register from before names and ids were kept apart (`register.check_names_free`)
        may hold a name that is another member's id: refused, not both taken."""
        hits = [m for m in members if name_or_id in (m.name, m.member_id) and m.revoked_at is None]
        if not hits:
            raise IdentityError(f"no active member named {name_or_id!r} in {self.directory}")
        by_id = {m.member_id: m for m in hits}
        if len(by_id) > 1:
            listed = ", ".join(f"{m.name} ({m.member_id})" for m in by_id.values())
            raise IdentityError(
                f"{name_or_id!r} names {len(by_id)} active members, {listed}: name one by "
                "a name or id no other answers to"
            )
        return hits

    # -- revocation -----------------------------------------------------------------------

    def revoke(self, name_or_id: str, reason: str = "unspecified") -> list[IssuedMember]:
        """Revoke every certificate of a member and publish a new CRL."""
        with self.locked():
            return self._revoke(name_or_id, reason)

    def _revoke(self, name_or_id: str, reason: str) -> list[IssuedMember]:
        members = self.members()
        now = dt.datetime.now(dt.UTC).isoformat()
        hits = self._active_rows(members, name_or_id)
        updated = [
            IssuedMember(**{**asdict(m), "revoked_at": now, "revocation_reason": reason})
            if m in hits
            else m
            for m in members
        ]
        self._write_crl([m for m in updated if m.revoked_at])
        self._save_members(updated)
        return hits

    def issue_crl(self, valid: dt.timedelta = dt.timedelta(days=CRL_VALID_DAYS)) -> Path:
        """Re-issue the CRL from the register with a new nextUpdate (now + `valid`, at
        most `CRL_MAX_VALID`; ``authority crl`` asks for `CRL_MIN_VALID` at least)."""
        if not dt.timedelta(0) < valid <= CRL_MAX_VALID:
            raise IdentityError(
                f"a revocation list is valid for more than 0 s and at most "
                f"{admission.span(CRL_MAX_VALID)}, not {valid}"
            )
        with self.locked():
            self._write_crl([m for m in self.members() if m.revoked_at], valid)
        return self.files.crl

    def _write_crl(
        self, revoked: list[IssuedMember], valid: dt.timedelta = dt.timedelta(days=CRL_VALID_DAYS)
    ) -> None:
        now = dt.datetime.now(dt.UTC)
        revocations = [
            (int(m.serial, 16), dt.datetime.fromisoformat(m.revoked_at or now.isoformat()))
            for m in revoked
        ]
        crl = build_crl(self.cert, self._key, revocations, valid)
        write_atomic(self.files.crl, crl)
