"""The refusals of enrollment: what the authority answers a certificate request it will not sign.

Each one is an `IdentityError` (a key, certificate or request that does not hold up), with
its own class so that `qdspace.node.faults` can give the authority service, the CLI and a
test each refusal's own status: a malformed request is the caller's to fix (400), a code
that does not open the door is a refusal (403), a code already spent or a name already
taken is a conflict (409), an expired code is gone (410).
"""

from __future__ import annotations

from qdspace.node.errors import IdentityError


class CertificateRequestError(IdentityError, ValueError):
    """A certificate request (PKCS#10) that is malformed or does not verify: bad signature,
    no or bad proof of possession of the Ed25519 key, a member id that is not the name's and
    key's, an unknown role, an unusable hostname."""


class EnrollmentError(IdentityError):
    """An enrollment code that does not admit this request."""


class MalformedEnrollmentCode(EnrollmentError, ValueError):
    """Text that is not an enrollment code (``qdse1.<id>.<secret>.<ca fingerprint>``)."""


class EnrollmentCodeRefused(EnrollmentError, PermissionError):
    """An enrollment code the authority does not know, or whose secret is wrong."""


class EnrollmentCodeUsed(EnrollmentError):
    """An enrollment code that was already redeemed (each code admits one certificate)."""


class EnrollmentCodeExpired(EnrollmentError):
    """An enrollment code past its expiry."""


class RequestNotGranted(IdentityError, PermissionError):
    """A request for a name or role other than the one the code (or the operator) granted."""


class NameTaken(IdentityError):
    """A name (or a requested hostname) that belongs to another active member."""


class RenewalRefused(IdentityError, PermissionError):
    """A renewal for a member the authority does not know, has revoked, or whose request
    changes its name or role (a new name or role is a new enrollment)."""
